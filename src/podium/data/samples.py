"""Samples as every command reads them: labelled for training, evaluation and
cross-validation, unlabelled for prediction, each with task labels and crops.

One image's path from disk to the model: `load_samples` (ImageFolder, CSV or
competition layout) -> `label_samples` (the task's class names) ->
`maybe_crop` (cached face/box crops) -> `check_images` -> a split.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from podium.data.dataset import (
    build_class_map,
    check_images,
    check_no_leakage,
    encode_labels,
    holdout_split,
    load_samples,
)
from podium.errors import PodiumError
from podium.schema import PodiumConfig
from podium.tasks.spec import TaskSpec, drop_training_ages, label_samples, resolve_task


@dataclass
class PreparedData:
    """A train/validation split with its class map (and images skipped as unreadable).

    ``fold``: the cv fold whose validation part ``val`` is (None for a holdout); ``soft``: the
    training rows' soft targets (`podium.model.soft_targets.SoftTargets`) when a teacher or
    pseudo-labels supply them."""
    train: pd.DataFrame
    val: pd.DataFrame
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    fold: int | None = None
    soft: Any = None


def load_labeled(spec: str | Path, cfg: PodiumConfig, task: TaskSpec | None = None, log=print,
                 crop: bool = True, *, other_ids: Collection[str] = (), strict_fixes: bool = True) -> pd.DataFrame:
    """Samples with the label the model trains on (composite, one attribute, or plain),
    after the label fixes, pointing at cached crops when ``crop.detector`` is set.
    ``other_ids`` and ``strict_fixes``: see `podium.tasks.spec.label_samples`."""
    task = task or resolve_task(cfg.task)
    labeled = None if task.attributes is not None else True
    frame = load_samples(spec, cfg.data, labeled, age_thresholds=cfg.task.age_thresholds, log=log)
    frame = label_samples(frame, cfg, task, log, other_ids=other_ids, strict_fixes=strict_fixes)
    return maybe_crop(frame, cfg, log) if crop else frame


def load_train_and_val(cfg: PodiumConfig, task: TaskSpec | None = None,
                       log=print) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``data.train`` and ``data.val`` (None when not set) with task labels; the label fixes
    may name images or groups of either, and an id found in neither is an error."""
    task = task or resolve_task(cfg.task)
    train_spec = _require_train(cfg)
    if not cfg.data.val:
        return load_labeled(train_spec, cfg, task, log), None
    train_ids = source_ids(train_spec, cfg) if cfg.task.label_fixes else set()
    val_ids = source_ids(cfg.data.val, cfg) if cfg.task.label_fixes else set()
    return (load_labeled(train_spec, cfg, task, log, other_ids=val_ids),
            load_labeled(cfg.data.val, cfg, task, log, other_ids=train_ids))


def source_ids(spec: str | Path, cfg: PodiumConfig) -> set[str]:
    """Image ids and group ids of a labelled source, read quietly (what label fixes may name)."""
    frame = load_samples(spec, cfg.data, None, age_thresholds=cfg.task.age_thresholds, log=lambda *a: None)
    groups = set(frame["group"].dropna().astype(str)) if "group" in frame else set()
    return set(frame["id"].astype(str)) | groups


def maybe_crop(frame: pd.DataFrame, cfg: PodiumConfig, log=print) -> pd.DataFrame:
    """Swap image paths for cached face/box crops when ``crop.detector`` is set."""
    if cfg.crop.detector == "none":
        return frame
    from podium.data.crops import crop_samples

    cropped, report = crop_samples(frame, cfg, log)
    log(f"crop ({cfg.crop.detector}): {report['n_images']} image(s), {report['fallback']} fallback, "
        f"cache {report['cache_dir']}")
    return cropped


def _require_train(cfg: PodiumConfig) -> str:
    if not cfg.data.train:
        raise PodiumError("data.train is not set: pass the training folder or CSV, e.g. data.train=path/to/train")
    return cfg.data.train


def load_pool(cfg: PodiumConfig, log=print) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Every labelled image of ``data.train`` (checked), its class map and the skipped files:
    what a holdout split and cross-validation both start from."""
    task = resolve_task(cfg.task)
    frame = load_labeled(_require_train(cfg), cfg, task, log)
    frame, bad = check_images(frame, cfg.data.on_bad_image)
    frame = frame.reset_index(drop=True)
    return frame, list(task.classes or build_class_map(frame["label"])), bad


def prepare_data(cfg: PodiumConfig, classes: list[str] | None = None, log=print) -> PreparedData:
    """Load, check and split the samples named by ``cfg.data``."""
    d = cfg.data
    task = resolve_task(cfg.task)
    frame, val = load_train_and_val(cfg, task, log)
    frame, bad = check_images(frame, d.on_bad_image)
    if val is not None:
        val, bad_val = check_images(val, d.on_bad_image)
        bad += bad_val
        check_no_leakage(frame, val)
        train = frame
    else:
        train, val = holdout_split(frame, d.val_fraction, d.split_seed, log=log)
    train = drop_training_ages(train, cfg.task, log)
    classes = classes or task.classes or build_class_map(train["label"])
    encode_labels(val["label"], classes, f"validation data ({d.val or 'holdout'})")
    return PreparedData(train, val, classes, bad)


def load_split(run_dir: Path, classes: list[str]) -> PreparedData:
    """The exact train/validation split a run was started with (saved as split.csv)."""
    from podium.rundir import read_split

    table = read_split(run_dir)
    train = table[table["split"] == "train"].drop(columns="split").reset_index(drop=True)
    val = table[table["split"] == "val"].drop(columns="split").reset_index(drop=True)
    return PreparedData(train, val, classes)


def is_competition_layout(cfg: PodiumConfig, data: str | Path) -> bool:
    """The mask-competition eval layout: predict in info.csv order, submit `ImageID,ans`."""
    data = Path(data)
    return cfg.data.format == "mask_competition" and data.is_dir() and (
        (data / "info.csv").is_file() or (data / "eval" / "info.csv").is_file())


def prediction_samples(cfg: PodiumConfig, data: str | Path, competition: bool, log=print,
                       crop: bool = True) -> pd.DataFrame:
    """Unlabelled images to predict, read as the run was trained (competition order, crops)."""
    if competition:
        from podium.data.competition import read_mask_eval

        frame = read_mask_eval(data)
    else:
        frame = load_samples(data, cfg.data.model_copy(update={"format": "folder"}), labeled=False)
    return maybe_crop(frame, cfg, log) if crop else frame
