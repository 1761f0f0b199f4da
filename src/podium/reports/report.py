"""Training report: what the model learned and where it fails.

`build_run_report` reads only the run-folder contract files (metrics.csv,
val_predictions.parquet or, for cross-validation, oof_predictions.parquet,
classes.json, summary.json, config.yaml), so it works on any finished run and
never needs the model. Passing a Grad-CAM source adds heatmaps that show what
the model looked at on its most confident mistakes. `suspect_labels.csv` lists
those mistakes, most confident first: the top of that list is usually label
noise, worth reviewing and feeding into a label-fix CSV.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from podium.data.images import BadImageError, load_rgb, resize_rgb
from podium.errors import PodiumError, summarize_list
from podium.fileio import write_csv
from podium.quiet import shown_epoch
from podium.reports.gradcam import overlay_heatmap
from podium.reports.html import Page

if TYPE_CHECKING:
    import torch

BASE_COLUMNS = ("id", "path", "target", "prediction")
MAX_ANNOTATED_CLASSES = 25
MAX_GRADCAM = 8


@runtime_checkable
class GradCamSource(Protocol):
    """What Grad-CAM needs from a trained run: the model and its eval-time preprocessing.

    ``preprocess`` maps an HxWx3 uint8 RGB image to a (1, C, H, W) float tensor,
    normalised exactly as at validation time. It should resize, not crop, so
    the heatmap lines up with the picture. ``layer`` (optional attribute)
    picks the layer; otherwise `podium.reports.gradcam.cam_target` does (a ViT's last
    block, else the last Conv2d).
    """

    model: torch.nn.Module

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor: ...


# --------------------------------------------------------------------------- loading


def _plt():
    import matplotlib

    if not matplotlib.get_backend().startswith("module://"):  # keep a notebook's inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fold_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("fold*") if p.is_dir())


def _read_classes(run_dir: Path, preds: pd.DataFrame) -> list[str]:
    from podium.rundir import folder_kind, read_classes

    for candidate in [run_dir, *_fold_dirs(run_dir)]:
        if folder_kind(candidate) is not None:
            return read_classes(candidate)
    # No class map: the probability columns are whatever is numeric beyond the base columns.
    return [c for c in preds.columns if c not in BASE_COLUMNS and pd.api.types.is_float_dtype(preds[c])]


def load_predictions(run_dir: Path) -> tuple[pd.DataFrame, str]:
    """The validation table of a run: OOF predictions for a CV run, else val_predictions."""
    from podium.rundir import OOF_FILE, VAL_PREDICTIONS_FILE, read_table

    for name in (OOF_FILE, VAL_PREDICTIONS_FILE):
        if (run_dir / name).exists():
            preds = read_table(run_dir / name, "the prediction table the report reads")
            missing = [c for c in ("target", "prediction") if c not in preds.columns]
            if missing:
                raise PodiumError(
                    f"{run_dir / name} lacks column(s) {missing}; found {summarize_list(list(preds.columns), 10)}. "
                    "It should have id, path, target, prediction and one probability column per class."
                )
            return preds, name
    raise PodiumError(
        f"no val_predictions.parquet or oof_predictions.parquet in {run_dir}; "
        "the report needs a finished run folder (train writes val_predictions.parquet after validation)."
    )


def _metrics_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    from podium.rundir import METRICS_FILE, read_metrics

    if (run_dir / METRICS_FILE).exists():
        return {"run": read_metrics(run_dir)}
    return {f.name: read_metrics(f) for f in _fold_dirs(run_dir) if (f / METRICS_FILE).exists()}


# --------------------------------------------------------------------------- sections


def _summary_section(page: Page, run_dir: Path, preds_name: str, preds: pd.DataFrame, classes: list[str]) -> None:
    """The run's headline (the same numbers as its `podium runs` row, rounded for people), then
    the facts that identify it; the full numbers stay in summary.json."""
    from podium.reports.leaderboard import headline_for

    sec = page.section("Summary")
    rows: list[tuple[str, Any]] = list(headline_for(run_dir).items())
    rows += [("validation images", len(preds)), ("classes", len(classes)), ("predictions", preds_name)]
    from podium.rundir import CONFIG_FILE, read_summary

    summary = read_summary(run_dir)
    if summary:
        labels = {"seed": "seed", "device": "device", "skipped_images": "skipped images", "git_commit": "git commit"}
        rows += [(label, summary[key]) for key, label in labels.items() if summary.get(key) not in (None, "")]
    sec.table(pd.DataFrame(rows, columns=["quantity", "value"]).astype({"value": str}))
    if (run_dir / CONFIG_FILE).exists():
        sec.details("Resolved config", (run_dir / CONFIG_FILE).read_text())


def _metric_order(columns: list[str]) -> list[str]:
    """Panels in reading order: losses (train before val), validation metrics, then learning rates."""
    def rank(c: str) -> tuple[int, str]:
        kind = 0 if c.endswith("loss") else 2 if (c == "lr" or c.startswith("lr")) else 1
        return kind, c
    return sorted(columns, key=rank)


def curves_figure(tables: dict[str, pd.DataFrame]):
    """Small multiples: one panel per metric column of metrics.csv.

    A single run draws one line per panel. A cross-validation run draws each fold thin, in a
    sequential palette (fold order reads as light to dark, no colour repeats), and the mean across
    folds bold in black; the one legend sits outside the axes, to the right, where it covers no data.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    columns: list[str] = []
    for frame in tables.values():
        columns += [c for c in frame.columns if c not in ("epoch", "step") and c not in columns
                    and pd.to_numeric(frame[c], errors="coerce").notna().any()]
    columns = _metric_order(columns)
    ncols = min(4, max(1, len(columns)))
    nrows = max(1, int(np.ceil(len(columns) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    several = len(tables) > 1
    palette = plt.get_cmap("viridis")(np.linspace(0.05, 0.85, max(1, len(tables))))
    for ax, col in zip(axes.ravel(), columns):
        per_run = []
        for (name, frame), colour in zip(tables.items(), palette):
            if col not in frame.columns:
                continue
            x = frame["epoch"] if "epoch" in frame.columns else pd.Series(range(len(frame)))
            series = pd.to_numeric(frame[col], errors="coerce")
            keep = series.notna()
            if not keep.any():
                continue
            per_run.append(pd.Series(series[keep].to_numpy(), index=x[keep].to_numpy()).groupby(level=0).last())
            if several:
                ax.plot(x[keep], series[keep], color=colour, lw=1.0, alpha=0.85, label=name)
            else:
                ax.plot(x[keep], series[keep], color="#2557a7", lw=1.6, marker="o", markersize=2.5)
        if several and len(per_run) > 1:
            table = pd.concat(per_run, axis=1)
            mean = table.mean(axis=1)[table.notna().sum(axis=1) >= 2]  # an epoch only some folds reached
            ax.plot(mean.index, mean.to_numpy(), color="black", lw=2.6, label=f"mean of {len(per_run)} folds")
        ax.set_title(col, fontsize=10), ax.set_xlabel("epoch", fontsize=8), ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 0.25 ticks
        if (col == "lr" or col.startswith("lr")) and ax.lines and all(
                (np.asarray(ln.get_ydata(), dtype=float) > 0).all() for ln in ax.lines):
            ax.set_yscale("log")
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    losses = [ax for ax, c in zip(axes.ravel(), columns) if c.endswith("loss")]
    if len(losses) > 1:  # train and val loss on one scale, so a gap between them reads as a gap
        low = min(ax.get_ylim()[0] for ax in losses)
        high = max(ax.get_ylim()[1] for ax in losses)
        for ax in losses:
            ax.set_ylim(low, high)
    fig.tight_layout()
    if several:
        fullest = max(axes.ravel()[:len(columns)], key=lambda a: len(a.get_legend_handles_labels()[1]))
        handles, labels = fullest.get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return fig


def _curves_section(page: Page, out: Path, run_dir: Path) -> None:
    sec = page.section("Training curves")
    tables = _metrics_tables(run_dir)
    if not tables:
        sec.note("No metrics.csv in the run folder.")
        return
    # epochs counted from 1 (metrics.csv keeps Lightning's 0-based index), as the epoch lines and tables do
    tables = {name: frame.assign(epoch=frame["epoch"].map(shown_epoch)) if "epoch" in frame.columns else frame
              for name, frame in tables.items()}
    caption = "One panel per logged quantity, per epoch"
    if len(tables) > 1:
        caption += f": each of the {len(tables)} folds thin, their mean bold"
    sec.figure(curves_figure(tables), caption, save_to=out / "curves.png")
    last = {name: frame.tail(1) for name, frame in tables.items()}
    sec.heading("Last epoch")
    sec.table(pd.concat(last, names=["run", None]).reset_index(level=0), max_rows=50)


def _cell_text(value: float, percent: bool, big: bool) -> str:
    if percent:
        if big and round(value * 100) == 0:
            return ""
        return f"{value * 100:.0f}" + ("" if big else "%")
    if big and value == 0:
        return ""  # an empty cell reads faster than a wall of zeros
    return f"{int(value)}"


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str, percent: bool = False):
    """A confusion matrix whose numbers stay readable: the font follows the cell size, the row-normalised
    matrix prints percentages (two digits, not '0.83'), and a big matrix (over 10 classes) leaves zero
    cells blank and drops the % signs (the title says %)."""
    plt = _plt()
    n = len(classes)
    size = min(14, max(4.5, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if percent else None)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    if percent:
        from matplotlib.ticker import PercentFormatter

        bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ticks = range(n)
    label_size = float(np.clip(size * 72 / max(n, 1) * 0.3, 6, 11))
    ax.set_xticks(ticks, classes, rotation=90 if n > 6 else 0, fontsize=label_size)
    ax.set_yticks(ticks, classes, fontsize=label_size)
    big = n > 10
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(title + (" (%)" if percent and big else ""))
    if n <= MAX_ANNOTATED_CLASSES:
        texts = [[_cell_text(float(matrix[i, j]), percent, big) for j in range(n)] for i in range(n)]
        widest = max((len(t) for row in texts for t in row), default=1) or 1
        cell_pt = size * 0.75 * 72 / max(n, 1)  # the axes take about three quarters of the figure
        # a digit is about 0.6 em wide: the widest number fills at most ~80% of its cell
        fontsize = float(np.clip(min(cell_pt * 0.4, cell_pt * 0.8 / (0.6 * widest)), 5, 16))
        top = 1.0 if percent else (matrix.max() if matrix.size else 0)
        for i in range(n):
            for j in range(n):
                colour = "white" if top and matrix[i, j] > 0.6 * top else "black"
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=fontsize, color=colour)
    return fig


def confusion_counts(preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns, in class-map order."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(preds["target"].astype(str), preds["prediction"].astype(str), labels=classes)
    return pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=classes)


def _confusion_section(page: Page, out: Path, counts: pd.DataFrame, classes: list[str]) -> None:
    sec = page.section("Confusion matrix")
    matrix = counts.to_numpy()
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    write_csv(out / "confusion_counts.csv", counts.reset_index())
    write_csv(out / "confusion_normalized.csv", pd.DataFrame(normalised, index=counts.index,
                                                              columns=classes).round(4).reset_index())
    sec.figure(confusion_figure(matrix, classes, "counts"), "Counts: rows are true classes",
               save_to=out / "confusion_counts.png")
    sec.figure(confusion_figure(normalised, classes, "row-normalised: recall per class on the diagonal", percent=True),
               "Row-normalised, in percent of each true class", save_to=out / "confusion_normalized.png")
    sec.heading("Counts")
    sec.table(counts, index=True, max_rows=100)


def _per_class_section(page: Page, out: Path, preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    plt = _plt()
    sec = page.section("Per-class metrics")
    p, r, f, s = precision_recall_fscore_support(preds["target"].astype(str), preds["prediction"].astype(str),
                                                 labels=classes, zero_division=0)
    table = pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) + 2), 3.6))
    x = np.arange(len(classes))
    for k, col in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, table[col], width=0.27, label=col)
    ax.set_xticks(x, classes, rotation=90 if len(classes) > 6 else 0, fontsize=8)
    ax.set_ylim(0, 1.05), ax.legend(fontsize=8), ax.grid(axis="y", alpha=0.3)
    sec.figure(fig, "Precision, recall and F1 per class", save_to=out / "per_class.png")
    sec.text(f"Macro F1: {table['f1'].mean():.4f}; accuracy: {(preds['target'] == preds['prediction']).mean():.4f}.")
    sec.table(table.sort_values("f1").reset_index(drop=True), max_rows=500, caption="sorted by F1, worst first")
    return table


def _roc_section(page: Page, out: Path, preds: pd.DataFrame, classes: list[str]) -> None:
    from sklearn.metrics import auc, roc_curve

    plt = _plt()
    sec = page.section("ROC curves")
    missing = [c for c in classes if c not in preds.columns]
    if missing:
        sec.note(f"no probability columns for {summarize_list(missing)}: ROC curves need one column per class")
        return
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    aucs = []
    target = preds["target"].astype(str).to_numpy()
    for c in classes:
        positive = target == c
        if positive.all() or not positive.any():
            continue  # ROC is undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(positive, preds[c].to_numpy(dtype=float))
        aucs.append((c, auc(fpr, tpr)))
        ax.plot(fpr, tpr, lw=1.2, label=f"{c} (AUC {aucs[-1][1]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.set_title("one-vs-rest ROC")
    if len(aucs) <= 15:
        ax.legend(fontsize=7, loc="lower right")
    sec.figure(fig, "One-vs-rest ROC per class", save_to=out / "roc.png")
    if aucs:
        frame = pd.DataFrame(aucs, columns=["class", "auc"])
        sec.text(f"Macro AUC over {len(frame)} classes: {frame['auc'].mean():.4f}.")
        sec.table(frame.sort_values("auc").reset_index(drop=True), max_rows=500)


def confused_pairs(counts: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """Off-diagonal cells, largest first: which class is mistaken for which."""
    matrix = counts.to_numpy().copy()
    np.fill_diagonal(matrix, 0)
    support = counts.to_numpy().sum(axis=1)
    ii, jj = np.nonzero(matrix)
    frame = pd.DataFrame({"true": counts.index[ii], "predicted": counts.columns[jj], "count": matrix[ii, jj],
                          "share of true class": matrix[ii, jj] / support[ii]})
    return frame.sort_values(["count", "true"], ascending=[False, True], kind="stable").head(top).reset_index(drop=True)


def suspect_labels(preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Misclassified rows, most confident first: the likeliest label errors."""
    wrong = preds[preds["target"].astype(str) != preds["prediction"].astype(str)].copy()
    if all(c in preds.columns for c in classes) and len(wrong):
        probs = wrong[classes].to_numpy(dtype=float)
        col = wrong["prediction"].astype(str).map({c: k for k, c in enumerate(classes)})
        conf = np.full(len(wrong), np.nan)
        known = col.notna().to_numpy()
        conf[known] = probs[np.flatnonzero(known), col[known].astype(int).to_numpy()]
        wrong["confidence"] = conf
    else:
        wrong["confidence"] = np.nan
    ids = wrong["id"] if "id" in wrong.columns else wrong.index.astype(str)
    paths = wrong["path"] if "path" in wrong.columns else ""
    frame = pd.DataFrame({"id": ids, "path": paths, "label": wrong["target"], "predicted": wrong["prediction"],
                          "confidence": wrong["confidence"]})
    return frame.sort_values("confidence", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _load_image(path: str) -> np.ndarray | None:
    try:
        return load_rgb(path, draft_size=(256, 256))
    except BadImageError:
        return None


def _thumb(rgb: np.ndarray | None, size: int = 160) -> np.ndarray:
    if rgb is None:
        return np.full((size, size, 3), 210, np.uint8)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    return resize_rgb(rgb, (max(1, round(h * scale)), max(1, round(w * scale))))


def _gallery_section(page: Page, out: Path, suspects: pd.DataFrame, max_gallery: int) -> None:
    plt = _plt()
    sec = page.section("Confidently wrong")
    sec.text(f"{len(suspects)} misclassified validation images; the full list, most confident first, is "
             "suspect_labels.csv in the run folder. The top of that list is often a wrong label, not a wrong model.")
    if suspects.empty:
        return
    top = suspects.head(max_gallery)
    cols = 4
    rows = int(np.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.8, rows * 3.1), squeeze=False)
    missing = 0
    for ax, row in zip(axes.ravel(), top.itertuples()):
        rgb = _load_image(str(row.path)) if row.path else None
        missing += rgb is None
        ax.imshow(_thumb(rgb))
        conf = "" if pd.isna(row.confidence) else f" ({row.confidence:.2f})"
        ax.set_title(f"true: {row.label}\npred: {row.predicted}{conf}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    sec.figure(fig, "Most confidently wrong validation images", save_to=out / "confidently_wrong.png")
    if missing:
        sec.note(f"{missing} image(s) could not be loaded from their path (shown grey)")
    # the id names the image already; the absolute path (in suspect_labels.csv) would push
    # `predicted` and `confidence` off screen
    sec.table(top.drop(columns=["path"]), max_rows=max_gallery)


def _resolve_source(model_forward: Any) -> GradCamSource:
    source = model_forward() if callable(model_forward) and not isinstance(model_forward, GradCamSource) else model_forward
    if not isinstance(source, GradCamSource):
        raise PodiumError(
            f"model_forward gave a {type(source).__name__}; it must be a GradCamSource (an object with .model and "
            ".preprocess(rgb) -> (1, C, H, W) tensor) or a callable returning one."
        )
    return source


GRADCAM_TILE = 160  # px, the long side of each picture in the Grad-CAM grid


def _gradcam_grid(panels: list[tuple[Any, list[np.ndarray]]]):
    """One figure of one image: the tiles laid out with numpy and labelled in place. (A 8x3 grid of
    matplotlib axes cost seconds of layout; this costs milliseconds.)"""
    plt = _plt()
    band, gap = 20, 8
    th, tw = panels[0][1][0].shape[:2]
    width = 3 * tw + 2 * gap
    height = len(panels) * (band + th + gap)
    grid = np.full((height, width, 3), 255, np.uint8)
    labels = []
    for r, (row, tiles) in enumerate(panels):
        y = r * (band + th + gap) + band
        for c, (tile, title) in enumerate(zip(tiles, ["image", f"pred: {row.predicted}", f"true: {row.label}"])):
            x = c * (tw + gap)
            grid[y:y + th, x:x + tw] = tile
            labels.append((x + tw / 2, y - 4, title))
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest")
    for x, y, title in labels:
        ax.text(x, y, title, ha="center", va="bottom", fontsize=8)
    ax.axis("off")
    return fig


def _gradcam_section(page: Page, out: Path, suspects: pd.DataFrame, classes: list[str],
                     source: GradCamSource) -> None:
    """Grad-CAM for the predicted and the true class of the most confidently wrong images: one batched
    pass through pytorch-grad-cam, on an upscaled input where the model's own feature map is too
    small to show anything, or a one-line reason instead of colour fields."""
    import torch
    import torch.nn.functional as F

    from podium.reports.gradcam import gradcam_batch, plan_cam

    sec = page.section("Grad-CAM")
    index = {c: k for k, c in enumerate(classes)}
    rows = [r for r in suspects.itertuples() if r.path and r.label in index and r.predicted in index][:MAX_GRADCAM]
    loaded = [(row, rgb) for row in rows if (rgb := _load_image(str(row.path))) is not None]
    if not loaded:
        sec.note("No loadable misclassified image to explain.")
        return
    tensors = [source.preprocess(rgb) for _, rgb in loaded]
    keep = [k for k, t in enumerate(tensors) if t.shape == tensors[0].shape]
    loaded, tensors = [loaded[k] for k in keep], [tensors[k] for k in keep]
    layer = getattr(source, "layer", None)
    plan = plan_cam(source.model, tensors[0], layer)
    if plan.skip:
        sec.note(f"Grad-CAM skipped: {plan.skip}")
        return
    batch = torch.cat(tensors)
    if plan.upscaled:
        batch = F.interpolate(batch, size=plan.cam_hw, mode="bilinear", align_corners=False)
    predicted = [index[row.predicted] for row, _ in loaded]
    model = plan.model if plan.model is not None else source.model  # a fixed-size ViT's resized copy
    maps, logits = gradcam_batch(model, torch.cat([batch, batch]),
                                 predicted + [index[row.label] for row, _ in loaded], layer)
    n = len(loaded)
    sec.text("Where the model looked: heat maps for the predicted class and for the true class on the most "
             "confidently wrong images.")
    sec.note(plan.describe())
    if plan.upscaled:
        same = int((logits[:n].argmax(axis=1) == np.asarray(predicted)).sum())
        sec.note(f"On the upscaled input the model predicts the report's class for {same} of {n} images; "
                 "where it does not, the map explains a slightly different decision.")
    h, w = plan.input_hw
    scale = GRADCAM_TILE / max(h, w)
    tile_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    panels = []
    for k, (row, rgb) in enumerate(loaded):
        shown = resize_rgb(resize_rgb(rgb, plan.input_hw), tile_hw)  # the picture the model saw, enlarged
        panels.append((row, [shown, overlay_heatmap(shown, maps[k]), overlay_heatmap(shown, maps[n + k])]))
    sec.figure(_gradcam_grid(panels), "Image as the model saw it, Grad-CAM for the predicted class, "
               "Grad-CAM for the true class", save_to=out / "gradcam.png")


def _group_metrics(preds: pd.DataFrame, col: str) -> pd.DataFrame:
    from podium.evaluation.scores import macro_f1_of_labels

    rows = []
    for value, part in preds.groupby(preds[col].astype(str)):
        t, p = part["target"].astype(str), part["prediction"].astype(str)
        rows.append({col: value, "images": len(part), "accuracy": float((t == p).mean()),
                     "macro F1": macro_f1_of_labels(list(t), list(p))})
    return pd.DataFrame(rows)


def _breakdown_sections(page: Page, preds: pd.DataFrame, classes: list[str]) -> None:
    """Scores within each value of the prediction table's extra columns, each section named for what it
    splits by: the OOF table's ``fold`` column gives "Per-fold metrics" (each fold's model on the images
    it validated), any other column (a group, a site) "Metrics by <column>"."""
    extra = [c for c in preds.columns if c not in BASE_COLUMNS and c not in classes
             and not pd.api.types.is_float_dtype(preds[c]) and 1 < preds[c].nunique() <= 30]
    if "fold" in extra:
        sec = page.section("Per-fold metrics")
        sec.text("Accuracy and macro F1 of each fold's model on the images it validated on "
                 "(its share of the out-of-fold predictions). A fold far below the others points at its data.")
        frame = _group_metrics(preds, "fold")
        sec.table(frame.iloc[frame["fold"].astype(int).argsort()].reset_index(drop=True))
    others = [c for c in extra if c != "fold"]
    if others:
        sec = page.section("Metrics by " + ", ".join(others))
        sec.text("Accuracy and macro F1 within each value of the extra columns of the predictions table.")
        for col in others:
            sec.heading(col)
            sec.table(_group_metrics(preds, col))


def _composite_section(page: Page, preds: pd.DataFrame, classes: list[str]) -> None:
    """Composite classes (``mask/gender/age``): where are the errors - in which attribute?"""
    from podium.evaluation.scores import macro_f1_of_labels
    from podium.tasks.attributes import SEPARATOR
    from podium.tasks.spec import composite_task

    task = composite_task(classes)
    if task is None:
        return
    sec = page.section("Per attribute (composite classes)")
    sec.text("Each composite class split into its attributes: accuracy, macro F1 and confusion counts per attribute.")
    true = preds["target"].astype(str).str.split(SEPARATOR, expand=True)
    pred = preds["prediction"].astype(str).str.split(SEPARATOR, expand=True)
    rows = []
    for i, name in enumerate(task.names):
        values = list(task.classes(name))
        t, p = true[i], pred[i]
        rows.append({"attribute": f"#{i + 1} ({'/'.join(values)})", "accuracy": float((t == p).mean()),
                     "macro F1": macro_f1_of_labels(list(t), list(p))})
        counts = pd.crosstab(pd.Categorical(t, values), pd.Categorical(p, values), dropna=False)
        counts.index.name, counts.columns.name = "true", "predicted"
        sec.heading(f"attribute #{i + 1} confusion")
        sec.table(counts.reset_index(), caption="rows: true, columns: predicted")
    sec.table(pd.DataFrame(rows))


# --------------------------------------------------------------------------- entry point


def build_run_report(
    run_dir: str | Path,
    *,
    model_forward: GradCamSource | Callable[[], GradCamSource] | None = None,
    max_gallery: int = 16,
) -> Path:
    """Write run_dir/report.html (+ run_dir/report/*.png, *.csv) and run_dir/suspect_labels.csv.

    ``model_forward`` is the Grad-CAM source (or a zero-argument callable that
    builds it, so the checkpoint is loaded only when needed); without it the
    report has no Grad-CAM section (see `podium.reports.gradcam`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PodiumError(f"run folder {run_dir} does not exist; pass a folder under runs/ written by podium train.")
    out = run_dir / "report"
    preds, preds_name = load_predictions(run_dir)
    classes = _read_classes(run_dir, preds)
    unknown = sorted(set(preds["target"].astype(str)) - set(classes))
    if unknown:
        raise PodiumError(f"{preds_name} has target classes {summarize_list(unknown)} missing from classes.json "
                          f"({summarize_list(classes)}); the run folder is inconsistent, re-run validation.")

    page = Page(f"Run report: {run_dir.name}", f"{run_dir.resolve()}")
    _summary_section(page, run_dir, preds_name, preds, classes)
    _curves_section(page, out, run_dir)
    counts = confusion_counts(preds, classes)
    _confusion_section(page, out, counts, classes)
    _per_class_section(page, out, preds, classes)
    _roc_section(page, out, preds, classes)
    page.section("Most confused pairs").table(confused_pairs(counts), caption="true class mistaken for predicted class")
    suspects = suspect_labels(preds, classes)
    write_csv(run_dir / "suspect_labels.csv", suspects)
    _gallery_section(page, out, suspects, max_gallery)
    if model_forward is not None:
        _gradcam_section(page, out, suspects, classes, _resolve_source(model_forward))
    _breakdown_sections(page, preds, classes)
    _composite_section(page, preds, classes)
    return page.write(run_dir / "report.html")
