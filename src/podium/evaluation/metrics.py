"""Metrics: torchmetrics during training, full per-class tables at the end.

Macro F1 is the default selection metric because leaderboards built on
imbalanced data score it; accuracy alone hides a dead rare class.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from podium.fileio import write_atomic, write_csv, write_json


def create_metrics(num_classes: int, prefix: str = "val_") -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "auroc": MulticlassAUROC(num_classes, average="macro"),
    }, prefix=prefix)


def summary_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The training metrics, computed once on a full prediction table (sklearn)."""
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    from podium.evaluation.scores import macro_f1

    n = probs.shape[1]
    y_pred = probs.argmax(1)
    # Macro averages over the classes that occur (true or predicted), as torchmetrics does in
    # training: a class absent from a small validation set must not count as F1 = 0.
    labels = np.union1d(y_true, y_pred).tolist()
    out = {
        "acc": float(accuracy_score(y_true, y_pred)),
        "f1": macro_f1(y_true, y_pred, n),
        "precision": float(precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    present = np.unique(y_true)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if n == 2:
                out["auroc"] = float(roc_auc_score(y_true, probs[:, 1]))
            else:
                # one-vs-rest over the classes present in y_true; absent classes have no curve
                scores = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
                out["auroc"] = float(np.mean(scores))
    except ValueError:
        out["auroc"] = float("nan")
    return out


def per_class_table(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, probs.argmax(1), labels=labels, zero_division=0)
    return pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s})


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    frame = pd.DataFrame(cm, index=classes, columns=classes)
    frame.index.name = "true\\pred"
    return frame


def draw_confusion(frame: pd.DataFrame, ax=None, title: str = "Confusion matrix", normalize: bool = False):
    """The confusion matrix (rows = truth) on a matplotlib axis; colour is row-normalized,
    cells show counts (or row shares with ``normalize``). Returns the figure (notebooks show it)."""
    import matplotlib.pyplot as plt

    counts = frame.to_numpy()
    n = len(frame)
    if ax is None:
        size = max(4.0, 0.45 * n + 2)
        _, ax = plt.subplots(figsize=(size, size * 0.85))
    rows = counts.sum(1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), frame.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), frame.index, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + " (colour: row-normalized)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                text = f"{normalized[i, j]:.2f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if normalized[i, j] > 0.5 else "black")
    ax.figure.tight_layout()
    return ax.figure


def plot_confusion(frame: pd.DataFrame, path: str | Path, title: str = "Confusion matrix") -> Path:
    """`draw_confusion` written to a PNG, on a pyplot-free Figure (no backend switch, so a
    notebook that trains keeps showing its own figures inline)."""
    from matplotlib.figure import Figure

    size = max(4.0, 0.45 * len(frame) + 2)
    fig = Figure(figsize=(size, size * 0.85))
    draw_confusion(frame, ax=fig.subplots(), title=title)
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    return Path(path)


def save_classification_report(out_dir: str | Path, y_true: np.ndarray, probs: np.ndarray,
                               classes: list[str], extra: dict | None = None) -> dict:
    """metrics.json, per_class.csv, confusion_matrix.csv and .png in ``out_dir``."""
    out_dir = Path(out_dir)
    summary = summary_metrics(y_true, probs)
    from podium.rundir import CONFUSION_FILE, METRICS_JSON_FILE, PER_CLASS_FILE

    write_csv(out_dir / PER_CLASS_FILE, per_class_table(y_true, probs, classes))
    cm = confusion_table(y_true, probs.argmax(1), classes)
    write_atomic(out_dir / CONFUSION_FILE, lambda p: cm.to_csv(p))
    plot_confusion(cm, out_dir / Path(CONFUSION_FILE).with_suffix(".png"))
    write_json(out_dir / METRICS_JSON_FILE, {**summary, "n_images": int(len(y_true)), **(extra or {})})
    return summary
