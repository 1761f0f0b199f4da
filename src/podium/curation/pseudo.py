"""`podium pseudo-label`: rounds of training on labelled + pseudo-labelled images.

Round r: the previous model (round 0: the given run, cv run or ensemble) predicts the
unlabelled pool through the one predictor; an image is pseudo-labelled when its most
likely class clears that class's confidence threshold, chosen on the model's honest
out-of-fold (or validation) predictions as the lowest confidence at which the
predictions above it are right at least ``precision`` of the time; the round then trains
as a normal run or cv run with ``data.pseudo_labels`` pointing at those images
(`podium.model.soft_targets`): soft (the probabilities) or hard (the class) targets, in
training parts only, never in validation folds or the OOF score, an image whose group is
in a validation part left out of that fold. With ``balance`` each class's pseudo-labels are
capped so they keep the labelled class proportions: a rare class no pseudo-label is precise
enough for would otherwise get none while the common ones got hundreds, shifting every round's
balance against it. It is off by default: on faces_mask3_dev it left almost nothing to add (the
rare class could hardly be pseudo-labelled) and its one paired round scored below the uncapped
one (benchmarks/data_centric/RESULTS.md).

With a cv run as the model and rounds trained on the same folds (same images, k and fold
seed), each fold of the next round gets the pseudo-labels of the same fold's model (which
never saw that fold's validation images), so the next round's OOF score stays honest;
otherwise (runs, ensembles, other folds) one set, from the whole model, serves every fold.

Layout of the output folder (beside the model, ``<model>-pseudo``)::

    pseudo.json            rounds, thresholds, how many images each round added, scores
    round1/labels.parquet  the pseudo-labels round 1 trained on (path, id, group, fold, classes)
    round1/thresholds.csv  per class: threshold, OOF precision and support at it
    round1/model/          round 1: a normal run or cv run folder
    round2/...
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from podium.errors import PodiumError
from podium.fileio import write_csv, write_json, write_parquet
from podium.schema import (
    PodiumConfig,
    deep_merge,
    parse_overrides,
    read_yaml,
    validate_config,
)

PSEUDO_FILE = "pseudo.json"
LABELS_FILE = "labels.parquet"
THRESHOLDS_FILE = "thresholds.csv"
MIN_SUPPORT = 5  # OOF predictions a threshold must rest on


@dataclass
class PseudoLabelResult:
    dir: Path
    record: dict

    @property
    def rounds(self) -> list[Path]:
        """The model folder of every round (a run or cv run)."""
        return [Path(r["model"]) for r in self.record["rounds"]]


# ---------------------------------------------------------------- thresholds


def class_thresholds(probs: np.ndarray, y: np.ndarray, classes: list[str], precision: float,
                     min_support: int = MIN_SUPPORT) -> pd.DataFrame:
    """Per class: the lowest confidence at which the OOF predictions of that class at or above it
    are right at least ``precision`` of the time (on at least ``min_support`` of them); a class
    whose predictions never get there gets an infinite threshold (no pseudo-labels)."""
    predicted, confidence = probs.argmax(1), probs.max(1)
    rows = []
    for k, name in enumerate(classes):
        mine = predicted == k
        order = np.argsort(-confidence[mine], kind="stable")
        conf, right = confidence[mine][order], (y[mine][order] == k)
        cumulative = np.cumsum(right) / np.arange(1, len(right) + 1)
        ok = np.flatnonzero((cumulative >= precision) & (np.arange(1, len(right) + 1) >= min_support))
        if len(ok):
            last = ok[-1]  # the most predictions whose precision still clears the target
            rows.append({"class": name, "threshold": float(conf[last]), "oof_precision": float(cumulative[last]),
                         "support": int(last + 1), "predicted": int(mine.sum())})
        else:
            rows.append({"class": name, "threshold": float("inf"), "oof_precision": float("nan"), "support": 0,
                         "predicted": int(mine.sum())})
    return pd.DataFrame(rows)


def select(probs: np.ndarray, thresholds: pd.DataFrame) -> np.ndarray:
    """Which images clear the threshold of their most likely class."""
    limits = thresholds["threshold"].to_numpy(dtype=np.float64)
    predicted = probs.argmax(1)
    return probs.max(1) >= limits[predicted]


def keep_proportions(probs: np.ndarray, chosen: np.ndarray, share: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(the chosen images left, the class that limited them): a per-class cap so the pseudo-labels
    keep the labelled class proportions ``share``: the most confident ``floor(N x share)`` of each
    class, N as large as the scarcest class allows (its eligible images / its share). Why: a class
    no pseudo-label is precise enough for (a rare, hard class) would otherwise get none while the
    others get hundreds, and each round would shift the balance against it (on faces_mask3_dev the
    rounds added 974 + 226 images of the common classes and none of the rare one). A class the
    labelled images lack (share 0) gets none; a class none of whose images qualify leaves none."""
    predicted, confidence = probs.argmax(1), probs.max(1)
    eligible = np.bincount(predicted[chosen], minlength=probs.shape[1]).astype(np.float64)
    present = share > 0
    if not present.any():
        return np.zeros_like(chosen), None
    room = np.full(len(share), np.inf)
    room[present] = eligible[present] / share[present]
    limiting = int(room.argmin())
    quota = np.floor(room[limiting] * share + 1e-9).astype(np.int64)
    kept = np.zeros_like(chosen)
    for k in range(probs.shape[1]):
        mine = np.flatnonzero(chosen & (predicted == k))
        kept[mine[np.argsort(-confidence[mine], kind="stable")][:quota[k]]] = True
    return kept, limiting


# ---------------------------------------------------------------- the model of a round


def honest_predictions(model: Path) -> tuple[pd.DataFrame, list[str], str]:
    """(table with target + class columns, classes, what it is): the model's predictions of images
    it never trained on, where thresholds are chosen."""
    from podium.rundir import (
        OOF_FILE,
        folder_kind,
        is_finished_run,
        read_classes,
        read_table,
        read_val_predictions,
    )

    kind = folder_kind(model)
    if kind is None:
        raise PodiumError(f"{model} is not a run, cv run or ensemble folder")
    classes = read_classes(model)
    if kind == "run":
        if not is_finished_run(model):
            raise PodiumError(f"{model} has no validation predictions: the run has not finished; finish it "
                              f"(podium train --resume {model}) before pseudo-labelling with it")
        return read_val_predictions(model), classes, "validation predictions"
    if not (model / OOF_FILE).is_file():
        raise PodiumError(f"{model} has no out-of-fold predictions ({OOF_FILE}) to choose thresholds on: "
                          + ("gather its folds (podium cv-gather)" if kind == "cv" else "ensemble cv runs"))
    return read_table(model / OOF_FILE, "out-of-fold predictions"), classes, "out-of-fold predictions"


def model_config(model: Path) -> PodiumConfig:
    """How the model read and learnt its data (an ensemble: its members' reading config)."""
    from podium.rundir import folder_kind, read_config

    if folder_kind(model) in ("run", "cv"):
        return read_config(model)
    from podium.inference.predictor import load_predictor

    return load_predictor(model).config


def predictions(model: Path, pool: pd.DataFrame, classes: list[str], log=print, per_fold: bool = False) -> pd.DataFrame:
    """The pool predicted by ``model`` (fold -1) and, with ``per_fold``, by each fold of a cv run
    (fold k): long format."""
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor
    from podium.rundir import fold_dir, read_cv_meta

    sources = [(-1, model)]
    if per_fold:
        sources += [(f, fold_dir(model, f)) for f in range(int(read_cv_meta(model)["k"]))]
    parts = []
    for fold, source in sources:
        log(f"{source} predicts {len(pool)} unlabelled image(s)")
        probs = predict_frame(load_predictor(source), pool)
        parts.append(pd.concat([pool[[c for c in ("id", "path", "group") if c in pool]].reset_index(drop=True)
                                .assign(fold=fold), pd.DataFrame(probs, columns=classes)], axis=1))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- rounds


def pseudo_label(model: str | Path, unlabeled: str | Path, *, rounds: int = 1, precision: float = 0.9,
                 mode: str = "soft", folds: int | None = None, config: str | Path | None = None,
                 overrides: Sequence[str] = (), group_by_folder: bool = False, balance: bool = False,
                 out: str | Path | None = None, progress: bool = False, log=print) -> PseudoLabelResult:
    """Rounds of pseudo-labelling (see the module docstring). ``folds``: train each round as a cv
    run with that many folds (default: a cv model's own k; a run or ensemble: single runs).
    ``balance``: the pseudo-labels keep the labelled class proportions (`keep_proportions`); a
    round that can add none that way (a class no pseudo-label is precise enough for) is not
    trained, and the rounds stop there, saying why. Off by default (see the module docstring)."""
    from podium.rundir import folder_kind, output_dir, read_cv_meta

    model = Path(model)
    if mode not in ("soft", "hard"):
        raise PodiumError(f"mode must be soft or hard, found {mode!r}")
    if not 0 < precision <= 1:
        raise PodiumError(f"precision must be in (0, 1], found {precision}")
    _, classes, _ = honest_predictions(model)  # a model without honest predictions fails here, before any work
    cfg = round_config(model_config(model), config, overrides)
    pool = unlabeled_pool(unlabeled, cfg, classes, group_by_folder)
    if folds is None and folder_kind(model) == "cv":
        folds = int(read_cv_meta(model)["k"])
    out_dir = output_dir(out, model.parent, f"{model.name}-pseudo")
    done: list[dict] = []
    record = {"model": str(model), "unlabeled": str(unlabeled), "n_unlabeled": len(pool), "precision": precision,
              "mode": mode, "folds": folds, "balance": balance, "rounds": done}
    teacher = model
    for r in range(1, rounds + 1):
        per_fold = _same_folds(teacher, cfg, folds)
        entry = _round(r, teacher, pool, classes, cfg, out_dir, precision, mode, folds, per_fold, balance, progress,
                       log)
        if entry.get("model") is None:
            record["stopped"] = entry["stopped"]
            write_json(out_dir / PSEUDO_FILE, record)
            break
        done.append(entry)
        write_json(out_dir / PSEUDO_FILE, record)
        teacher = Path(entry["model"])
    return PseudoLabelResult(out_dir, record)


def _same_folds(teacher: Path, cfg: PodiumConfig, folds: int | None) -> bool:
    """Whether the round's cv folds are the teacher's (same images, k and fold seed), so each fold
    can learn from the pseudo-labels of the teacher's model of that fold."""
    from podium.rundir import folder_kind, read_config, read_cv_meta

    if not folds or folder_kind(teacher) != "cv":
        return False
    meta, own = read_cv_meta(teacher), read_config(teacher)
    return int(meta["k"]) == folds and own.cv.seed == cfg.cv.seed and own.data.train == cfg.data.train \
        and own.task.label_fixes == cfg.task.label_fixes


def _round(r: int, teacher: Path, pool: pd.DataFrame, classes: list[str], cfg: PodiumConfig, out_dir: Path,
           precision: float, mode: str, folds: int | None, per_fold: bool, balance: bool, progress: bool,
           log) -> dict:
    from podium.data.dataset import encode_labels

    table, _, what = honest_predictions(teacher)
    y = encode_labels(table["target"], classes, f"{teacher} {what}")
    thresholds = class_thresholds(table[classes].to_numpy(np.float64), y, classes, precision)
    predicted = predictions(teacher, pool, classes, log, per_fold=per_fold)
    probs = predicted[classes].to_numpy(np.float64)
    keep = select(probs, thresholds)
    eligible = _class_counts(probs[keep & (predicted["fold"] == -1).to_numpy()], classes)
    limited_by = None
    if balance:  # each set (the whole model's, each fold's) keeps the labelled proportions
        share = np.bincount(y, minlength=len(classes)) / max(len(y), 1)
        for fold in predicted["fold"].unique():
            rows = (predicted["fold"] == fold).to_numpy()
            kept, limiting = keep_proportions(probs[rows], keep[rows], share)
            keep[rows] = kept
            if fold == -1 and limiting is not None:
                limited_by = classes[limiting]
    labels = predicted[keep].reset_index(drop=True)
    folder = out_dir / f"round{r}"
    write_csv(folder / THRESHOLDS_FILE, thresholds)
    write_parquet(folder / LABELS_FILE, labels)
    chosen = labels[labels["fold"] == -1]
    counts = _class_counts(chosen[classes].to_numpy(np.float64), classes)
    capped = (f"; capped to the labelled class proportions, limited by {limited_by!r} ({eligible[limited_by]} "
              f"eligible)" if balance and limited_by is not None else "")
    log(f"round {r}: {len(chosen)} of {len(pool)} unlabelled image(s) pseudo-labelled by {teacher} "
        f"(precision >= {precision} on its {what}{capped})")
    if chosen.empty:
        why = (f"round {r} not trained: no unlabelled image keeps the labelled class proportions at precision "
               f"{precision} ({limited_by!r} has none that precise; eligible per class: {eligible}). Lower the "
               f"precision, or leave the balance off (no --balance; balance=False) to pseudo-label the other "
               f"classes alone" if balance and any(n > 0 for n in eligible.values()) else
               f"round {r} not trained: no unlabelled image clears its class's threshold at precision {precision}")
        log(why)
        return {"round": r, "model": None, "stopped": why}
    round_cfg = validate_config(deep_merge(cfg.model_dump(mode="json"), {
        "data": {"pseudo_labels": str(folder / LABELS_FILE), "pseudo_mode": mode},
        "output": {"dir": str(folder), "name": "model"}}))
    model_dir = _train_round(round_cfg, folds, progress, log)
    return {"round": r, "teacher": str(teacher), "labels": str(folder / LABELS_FILE), "n_pseudo": len(chosen),
            "per_fold_labels": per_fold,
            "per_class": {str(k): int(v) for k, v in counts.items() if v},
            "eligible": eligible, "balanced_by": limited_by,
            "thresholds": dict(zip(thresholds["class"], thresholds["threshold"], strict=True)),
            "model": str(model_dir), "score": _score(model_dir)}


def _class_counts(probs: np.ndarray, classes: list[str]) -> dict[str, int]:
    """How many of these rows each class is the most likely class of."""
    found = np.bincount(probs.argmax(1), minlength=len(classes)) if len(probs) else np.zeros(len(classes), int)
    return {c: int(n) for c, n in zip(classes, found, strict=True)}


def _train_round(cfg: PodiumConfig, folds: int | None, progress: bool, log) -> Path:
    if folds:
        from podium.evaluation.cv import run_cv

        return Path(run_cv(cfg, folds=folds, progress=progress, log=log).run_dir)
    from podium.model.training import train

    return Path(train(cfg, progress=progress, log=log).run_dir)


def _score(model_dir: Path) -> float | None:
    """The round's honest score: CV macro F1 (a cv run) or validation macro F1 (a run)."""
    from podium.rundir import read_cv_summary, read_summary

    cv = read_cv_summary(model_dir)
    if cv:
        return cv.get("cv_macro_f1")
    return (read_summary(model_dir).get("val_metrics") or {}).get("f1")


def round_config(base: PodiumConfig, config: str | Path | None, overrides: Sequence[str]) -> PodiumConfig:
    """The rounds' config: the model's, then ``config`` (YAML) and ``overrides``; teacher keys cleared."""
    raw = base.model_dump(mode="json")
    raw["data"]["pseudo_labels"] = None
    raw["distill"] = {}
    if config is not None:
        raw = deep_merge(raw, read_yaml(config))
    return validate_config(deep_merge(raw, parse_overrides(list(overrides))))


def unlabeled_pool(spec: str | Path, cfg: PodiumConfig, classes: list[str], group_by_folder: bool) -> pd.DataFrame:
    """The unlabelled images (a folder or CSV; groups from ``data.group_column`` or, with
    ``group_by_folder``, each image's folder). A CSV that carries labels must use the model's classes."""
    from podium.model.soft_targets import unlabeled_frame

    spec = Path(spec)
    pool = unlabeled_frame(spec, cfg, group_by_folder, classes=classes)
    if pool.empty:
        raise PodiumError(f"no unlabelled images in {spec}")
    return pool
