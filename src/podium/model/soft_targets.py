"""Soft targets of a run's training rows: a teacher's probabilities (`distill.*`) and
pseudo-labelled images (`data.pseudo_labels`), in the form the loss reads them
(`Classifier.soft_target_loss`).

* Distillation: each labelled training image gets the teacher's out-of-fold
  probability (a cv run's or an ensemble's OOF table: predicted by models that never
  trained on it, the only honest soft target for a training image), weighted
  ``distill.alpha``, and keeps its true label, weighted ``1 - alpha``. Images of
  ``distill.unlabeled`` join with the teacher's prediction (folds averaged) as their
  only target.
* Sample weights: training images that a ``weight`` label fix names
  (`podium.tasks.fixes`, e.g. from `podium audit --suggest weight`), or whose data CSV has
  a ``sample_weight`` column, weight their hard label by it: a probably-wrong label counts
  less without the image leaving the data. Only the hard label is weighted; a teacher's soft
  target of the same image is not.
* Pseudo-labels: the images of the ``data.pseudo_labels`` table join the training part
  only, never validation; one whose group is in the validation part is left out (its
  group would otherwise straddle the split). A table with a ``fold`` column gives each cv
  fold the probabilities of the model that never saw that fold's validation images.

The rows are saved as ``soft_targets.parquet`` in the run, so a resumed run trains on
exactly them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from podium.data.samples import PreparedData
from podium.errors import PodiumError, summarize_list
from podium.evaluation.tables import probability_columns
from podium.schema import PodiumConfig

#: the ``origin`` of training rows that are not the data's own labelled images
PSEUDO, UNLABELED = "pseudo", "unlabeled"


@dataclass
class SoftTargets:
    """Per training row: a target distribution, the weight of its hard label and of that distribution."""

    probs: np.ndarray        # (N, C)
    hard: np.ndarray         # (N,)
    soft: np.ndarray         # (N,)
    temperature: float = 1.0
    record: dict = field(default_factory=dict)

    def rows(self, labels: np.ndarray) -> np.ndarray:
        """(N, 3 + C) float32 rows: class index, hard weight, soft weight, distribution."""
        return np.column_stack([labels, self.hard, self.soft, self.probs]).astype(np.float32)


def attach_soft_targets(cfg: PodiumConfig, prepared: PreparedData, log=print) -> PreparedData:
    """``prepared`` with pseudo-labelled / teacher-labelled images added to its training part and
    ``prepared.soft`` set; unchanged when the config asks for neither."""
    weights = sample_weights(prepared.train)
    if not (cfg.distill.teacher or cfg.data.pseudo_labels or weights is not None):
        return prepared
    if weights is not None:
        check_weights_trainable(cfg, int((weights != 1.0).sum()))
    classes = prepared.classes
    train = prepared.train.copy()
    train["origin"] = train.get("origin", "")
    n = len(train)
    parts = [SoftTargets(np.zeros((n, len(classes)), np.float32), np.ones(n, np.float32), np.zeros(n, np.float32))]
    frames = [train]
    if cfg.distill.teacher:
        teacher = Path(cfg.distill.teacher)
        alpha = float(cfg.distill.alpha)
        parts[0].probs = teacher_oof(teacher, classes, train["id"])
        parts[0].hard[:], parts[0].soft[:] = 1.0 - alpha, alpha
        if cfg.distill.unlabeled:
            frame, probs = teacher_predictions(teacher, cfg, classes, log)
            frames.append(frame)
            parts.append(SoftTargets(probs, np.zeros(len(frame), np.float32), np.ones(len(frame), np.float32)))
    if weights is not None:
        parts[0].hard *= weights
    if cfg.data.pseudo_labels:
        frame, part = pseudo_rows(cfg, prepared, log)
        frames.append(frame)
        parts.append(part)
    prepared.train = pd.concat(frames, ignore_index=True)
    prepared.soft = SoftTargets(np.concatenate([p.probs for p in parts]), np.concatenate([p.hard for p in parts]),
                                np.concatenate([p.soft for p in parts]), _temperature(cfg), _record(cfg, prepared.train))
    return prepared


def sample_weights(train: pd.DataFrame) -> np.ndarray | None:
    """(N,) float32 training weights of the labelled rows (the ``weight`` label fixes), or None
    when no row's weight differs from 1 (nothing to weight: the run trains as without them)."""
    from podium.tasks.fixes import weight_column

    weights = weight_column(train).astype(np.float32)
    return weights if (weights != 1.0).any() else None


def check_weights_trainable(cfg: PodiumConfig, n: int) -> None:
    """Per-sample weights travel as soft-target rows: refuse what those rows cannot carry."""
    where = f"{n} training image(s) have a sample weight other than 1 (from {weight_source(cfg)})"
    if cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0:
        raise PodiumError(f"{where}, and weighted rows are not mixed by MixUp/CutMix: set train.mixup_alpha and "
                          "train.cutmix_alpha to 0, or remove the weights")
    if cfg.task.ordinal:
        raise PodiumError(f"{where}, which ordinal heads (task.ordinal) cannot take: they learn exact values. "
                          "Remove task.ordinal or the weights")


def weight_source(cfg: PodiumConfig) -> str:
    """Where a run's sample weights come from, as the messages and summary.json say it."""
    from podium.tasks.fixes import ACTION_COLUMN, read_label_fixes

    fixes = cfg.task.label_fixes
    if fixes and Path(fixes).is_file() and (read_label_fixes(fixes)[ACTION_COLUMN] == "weight").any():
        return f"the weight rows of task.label_fixes {fixes}"
    return "the data's sample_weight column"


def _temperature(cfg: PodiumConfig) -> float:
    return float(cfg.distill.temperature) if cfg.distill.teacher else 1.0


def _record(cfg: PodiumConfig, train: pd.DataFrame) -> dict:
    """What summary.json says about the soft targets: the teacher and how many rows of each origin."""
    origin = train["origin"].fillna("").astype(str) if "origin" in train else pd.Series([""] * len(train))
    record: dict = {}
    weights = sample_weights(train[origin == ""])
    if weights is not None:
        record["sample_weights"] = {"source": weight_source(cfg), "weighted_rows": int((weights != 1.0).sum()),
                                    "zero_rows": int((weights == 0).sum()), "mean": round(float(weights.mean()), 4)}
    if cfg.distill.teacher:
        record["teacher"] = {"path": cfg.distill.teacher, "alpha": cfg.distill.alpha,
                             "temperature": cfg.distill.temperature, "labelled_rows": int((origin == "").sum()),
                             "unlabeled_rows": int((origin == UNLABELED).sum())}
    if cfg.data.pseudo_labels:
        record["pseudo_labels"] = {"path": cfg.data.pseudo_labels, "mode": cfg.data.pseudo_mode,
                                   "rows": int((origin == PSEUDO).sum())}
    return record


# ---------------------------------------------------------------- teachers


def teacher_kind(teacher: Path) -> str:
    from podium.rundir import folder_kind

    kind = folder_kind(teacher)
    if kind == "run":
        raise PodiumError(f"distill.teacher {teacher} is a single run: its predictions on its own training images are "
                          "not honest soft targets (it fitted them). Distil from a cv run (podium cv) or an ensemble")
    if kind is None:
        raise PodiumError(f"distill.teacher {teacher} is not a cv run or ensemble folder (no cv.json or ensemble.json)")
    return kind


def check_teacher_classes(teacher: Path, classes: list[str]) -> None:
    from podium.rundir import read_classes

    found = read_classes(teacher)
    if list(found) != list(classes):
        raise PodiumError(f"the teacher {teacher} predicts other classes than the data has: teacher "
                          f"{summarize_list(found, 10)}, data {summarize_list(classes, 10)}. Distil on the data "
                          "the teacher was trained on (or with the same task settings)")


def teacher_oof(teacher: Path, classes: list[str], ids: pd.Series) -> np.ndarray:
    """(N, C) the teacher's out-of-fold probabilities of the images ``ids``, in that order."""
    from podium.rundir import OOF_FILE, read_table

    kind = teacher_kind(teacher)
    check_teacher_classes(teacher, classes)
    path = teacher / OOF_FILE
    if not path.is_file():
        how = (f"finish its folds and run podium cv-gather {teacher}" if kind == "cv" else
               "its members had no out-of-fold predictions; ensemble cv runs")
        raise PodiumError(f"the teacher {teacher} has no out-of-fold predictions ({OOF_FILE}): {how}")
    table = read_table(path, "the teacher's out-of-fold predictions")
    by_id = table.assign(id=table["id"].astype(str)).drop_duplicates("id").set_index("id")
    wanted = ids.astype(str)
    missing = sorted(set(wanted) - set(by_id.index))
    if missing:
        raise PodiumError(f"the teacher {teacher} has no out-of-fold probability for {len(missing)} of the "
                          f"{len(wanted)} training images (e.g. {summarize_list(missing, 3)}): distil on the images "
                          "the teacher was cross-validated on")
    return _normalized(by_id.loc[wanted.to_numpy(), classes].to_numpy(dtype=np.float64))


def teacher_predictions(teacher: Path, cfg: PodiumConfig, classes: list[str], log=print) -> tuple[pd.DataFrame, np.ndarray]:
    """The images of ``distill.unlabeled`` as training rows, with the teacher's predictions (folds averaged)."""
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor

    teacher_kind(teacher)
    check_teacher_classes(teacher, classes)
    source = cfg.distill.unlabeled
    if source is None:
        raise PodiumError("distill.unlabeled is not set: no unlabelled images for the teacher to predict")
    frame = unlabeled_frame(source, cfg, classes=classes)
    log(f"teacher {teacher} predicts {len(frame)} unlabelled image(s) of {source}")
    probs = predict_frame(load_predictor(teacher), frame)
    frame = frame.assign(id=[f"{UNLABELED}/{i}" for i in frame["id"]], label=np.asarray(classes)[probs.argmax(1)],
                         origin=UNLABELED)
    return frame, _normalized(probs)


def unlabeled_frame(spec: str | Path, cfg: PodiumConfig, group_by_folder: bool = False,
                    classes: list[str] | None = None) -> pd.DataFrame:
    """Unlabelled images (a folder, or a CSV with ``data.path_column`` and optionally
    ``data.group_column``), read as training reads them (crops); ``group_by_folder``: each image's
    folder is its group (a person's photos in one folder). With ``classes`` (the model's), a CSV
    whose label columns name other classes is refused: images of another task are no pool."""
    from podium.data.samples import prediction_samples

    if classes is not None and Path(spec).suffix.lower() == ".csv":
        check_unlabeled_labels(Path(spec), cfg, classes)
    frame = prediction_samples(cfg, spec, competition=False, log=lambda *a: None)
    if group_by_folder:
        frame["group"] = [str(Path(i).parent) if Path(i).parent != Path(".") else "" for i in frame["id"]]
    return frame.reset_index(drop=True)


def check_unlabeled_labels(csv: Path, cfg: PodiumConfig, classes: list[str]) -> None:
    """A CSV of unlabelled images may carry labels (e.g. a held-back part), but only of the
    model's class set: ``data.label_column`` among ``classes``, and for a composite task
    (``task.attributes``) each attribute column among that attribute's values (binned numbers
    excepted)."""
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    allowed = {cfg.data.label_column: list(classes)}
    for name, values in (cfg.task.attributes or {}).items():
        if name not in (cfg.task.bins or {}):
            allowed[name] = list(values)
    for column, values in allowed.items():
        if column not in table.columns:
            continue
        unknown = sorted(set(table[column]) - set(values) - {""})
        if unknown:
            raise PodiumError(f"the unlabelled images in {csv} carry labels of another class set: column "
                              f"{column!r} has {summarize_list(unknown)}, not among the model's "
                              f"{summarize_list(values, 10)}. Use images of the same task, or drop the "
                              f"{column!r} column")


# ---------------------------------------------------------------- pseudo-labels


def pseudo_rows(cfg: PodiumConfig, prepared: PreparedData, log=print) -> tuple[pd.DataFrame, SoftTargets]:
    """The ``data.pseudo_labels`` images this run or fold trains on, as rows and targets."""
    from podium.rundir import read_table

    if cfg.data.pseudo_labels is None:
        raise PodiumError("data.pseudo_labels is not set: no pseudo-labelled images to add")
    table = read_table(cfg.data.pseudo_labels, "pseudo-labels (data.pseudo_labels)")
    classes = prepared.classes
    found = probability_columns(table)
    if "path" not in table.columns or found != list(classes):
        raise PodiumError(f"data.pseudo_labels {cfg.data.pseudo_labels} must have a path column and one probability "
                          f"column per class of the data ({summarize_list(classes, 10)}); found "
                          f"{summarize_list(list(table.columns), 12)}. Were they made for another class set?")
    table = _for_fold(table, prepared.fold)
    if "group" in table.columns and "group" in prepared.val.columns:
        held = set(prepared.val["group"].astype(str)) - {""}
        inside = table["group"].astype(str).isin(held).to_numpy()
        if inside.any():
            log(f"pseudo-labels: {int(inside.sum())} image(s) left out: their group is in the validation part")
            table = table[~inside]
    probs = _normalized(table[classes].to_numpy(dtype=np.float64))
    ids = table["id"].astype(str) if "id" in table.columns else table["path"].astype(str)
    frame = pd.DataFrame({"path": table["path"].astype(str).to_numpy(), "id": [f"{PSEUDO}/{i}" for i in ids],
                          "label": np.asarray(classes)[probs.argmax(1)], "origin": PSEUDO})
    if "group" in table.columns:
        frame["group"] = table["group"].astype(str).to_numpy()
    n = len(frame)
    if cfg.data.pseudo_mode == "hard":
        return frame, SoftTargets(np.eye(len(classes), dtype=np.float32)[probs.argmax(1)], np.ones(n, np.float32),
                                  np.zeros(n, np.float32))
    return frame, SoftTargets(probs, np.zeros(n, np.float32), np.ones(n, np.float32))


def _for_fold(table: pd.DataFrame, fold: int | None) -> pd.DataFrame:
    """The rows meant for ``fold`` (probabilities from the model that never saw its validation
    images) when the table has them, else the rows for every run (fold -1 or no fold column)."""
    if "fold" not in table.columns:
        return table.reset_index(drop=True)
    folds = table["fold"].astype(int)
    chosen = folds == fold if fold is not None and (folds == fold).any() else folds == -1
    return table[chosen.to_numpy()].reset_index(drop=True)


def _normalized(probs: np.ndarray) -> np.ndarray:
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    total = probs.sum(1, keepdims=True)
    return (probs / np.where(total > 0, total, 1.0)).astype(np.float32)


# ---------------------------------------------------------------- saved with the run


def save_soft_targets(run_dir: Path, prepared: PreparedData) -> None:
    """``soft_targets.parquet``: id, hard, soft, one column per class (what a resumed run reloads)."""
    from podium.fileio import write_parquet
    from podium.rundir import SOFT_TARGETS_FILE

    soft = prepared.soft
    if soft is None:
        return
    table = pd.concat([pd.DataFrame({"id": prepared.train["id"].astype(str).to_numpy(), "hard": soft.hard,
                                     "soft": soft.soft}),
                       pd.DataFrame(soft.probs, columns=list(prepared.classes))], axis=1)
    write_parquet(Path(run_dir) / SOFT_TARGETS_FILE, table)


def load_soft_targets(run_dir: Path, cfg: PodiumConfig, prepared: PreparedData) -> PreparedData:
    """A resumed run's soft targets, in the order of its saved training rows."""
    from podium.rundir import SOFT_TARGETS_FILE, read_table

    path = Path(run_dir) / SOFT_TARGETS_FILE
    if not (cfg.distill.teacher or cfg.data.pseudo_labels or path.is_file()):  # the file: sample weights too
        return prepared
    table = read_table(path, "the run's soft targets").assign(id=lambda t: t["id"].astype(str)).set_index("id")
    ids = prepared.train["id"].astype(str).to_numpy()
    rows = table.loc[ids]
    prepared.soft = SoftTargets(rows[prepared.classes].to_numpy(np.float32), rows["hard"].to_numpy(np.float32),
                                rows["soft"].to_numpy(np.float32), _temperature(cfg), _record(cfg, prepared.train))
    return prepared
