"""Classes composed of attributes (e.g. mask x gender x age), as a config-driven task.

The samples table keeps one column per attribute; this module turns them into
the label the model is trained on: the composite class (`single`, `multihead`)
or one attribute (`per_attribute`). The class map of a composite task is the
mixed-radix code order, never alphabetical, so class index == competition code.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from podium.errors import PodiumError
from podium.schema import PodiumConfig, TaskConfig
from podium.tasks.attributes import (
    SEPARATOR,
    AttributeTask,
    drop_ambiguous_ages,
    mask_task,
)


@dataclass
class TaskSpec:
    """The resolved task: attributes, what is predicted, and the class map."""

    attributes: AttributeTask | None
    mode: str
    target: str | None
    classes: list[str] | None  # None: plain classification, classes come from the data
    ordinal: tuple[str, ...] = ()  # binned attributes learned from their exact value (`task.ordinal`)

    @property
    def heads(self) -> list[int] | None:
        return list(self.attributes.radices) if self.mode == "multihead" else None


def resolve_task(cfg: TaskConfig) -> TaskSpec:
    if cfg.preset == "mask":
        attributes = mask_task(cfg.age_thresholds)
    elif cfg.attributes:
        attributes = AttributeTask(cfg.attributes, bins=cfg.bins or {})
    else:
        if cfg.mode != "single" or cfg.target:
            raise PodiumError(f"task.mode={cfg.mode} needs attributes: set task.preset=mask or task.attributes")
        return TaskSpec(None, "single", None, None)
    if cfg.mode == "per_attribute":
        if cfg.target not in attributes.names:
            raise PodiumError(f"task.target must name an attribute ({', '.join(attributes.names)}) in per_attribute "
                              f"mode; found {cfg.target!r}")
        return TaskSpec(attributes, "per_attribute", cfg.target, list(attributes.classes(cfg.target)))
    if cfg.target:
        raise PodiumError("task.target is only used with task.mode=per_attribute")
    if cfg.head_weights:
        unknown = sorted(set(cfg.head_weights) - set(attributes.names))
        if unknown:
            raise PodiumError(f"task.head_weights names unknown attribute(s) {unknown}; attributes: {list(attributes.names)}")
    return TaskSpec(attributes, cfg.mode, None, attributes.composite_names(), _ordinal(cfg, attributes))


def _ordinal(cfg: TaskConfig, attributes: AttributeTask) -> tuple[str, ...]:
    """`task.ordinal`, checked: each must be a binned attribute (it needs its exact numbers)."""
    for name in cfg.ordinal or []:
        if name not in attributes.bins:
            binned = ", ".join(attributes.bins) or "none"
            raise PodiumError(f"task.ordinal names {name!r}, which is not a binned attribute (binned: {binned}). "
                              f"Declare its thresholds in task.bins, e.g. task.bins={{{name}: [30, 60]}}")
    return tuple(cfg.ordinal or ())


def label_samples(frame: pd.DataFrame, cfg: PodiumConfig, spec: TaskSpec, log=print, *,
                  other_ids: Collection[str] = (), strict_fixes: bool = True) -> pd.DataFrame:
    """Set ``label`` from the attribute columns, after the label fixes (`task.label_fixes`).

    ``other_ids``: image and group ids of the other data the same run loads (its
    validation source), which the fixes may name too; ``strict_fixes`` False
    skips every id the data lacks (evaluation data that a run's fixes need not cover).
    """
    task = spec.attributes
    if task is not None:
        missing = [a for a in task.names if a not in frame.columns and task.bin_column(a) not in frame.columns]
        if missing:
            raise PodiumError(f"the data lacks attribute column(s) {missing}; it has {list(frame.columns)}")
    if cfg.task.label_fixes:
        from podium.tasks.fixes import apply_label_fixes

        outcome = apply_label_fixes(frame, cfg.task.label_fixes, task, classes=spec.classes,
                                    other_ids=other_ids, strict=strict_fixes)
        frame = outcome.frame
        log(f"label fixes from {cfg.task.label_fixes}: {outcome.describe()}")
    if task is None:
        return frame
    frame = task.with_labels(frame)
    if spec.mode == "per_attribute":
        index = task.attribute_indices(frame)[spec.target]
        frame = frame.assign(label=np.asarray(task.classes(spec.target), dtype=object)[index])
    return frame


def ordinal_values(frame: pd.DataFrame, spec: TaskSpec) -> np.ndarray | None:
    """(N, len(spec.ordinal)) integer exact values of the ordinal attributes, or None.

    A value is clipped into its sample's bin, so a label fix that moved the bin
    (``age_bin``) is not undone by the number.
    """
    if not spec.ordinal:
        return None
    task, columns = spec.attributes, []
    bins = task.attribute_indices(frame)
    for name in spec.ordinal:
        if name not in frame.columns:
            raise PodiumError(f"task.ordinal={name!r} needs the exact numbers in a column {name!r}; the data has "
                              f"{list(frame.columns)}")
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        if np.isnan(values).any():
            raise PodiumError(f"column {name!r} has {int(np.isnan(values).sum())} missing or non-numeric value(s); "
                              f"task.ordinal needs a number for every training image")
        edges = np.concatenate([[-np.inf], np.asarray(task.bins[name], dtype=float), [np.inf]])
        b = bins[name]
        columns.append(np.clip(np.rint(values), np.ceil(edges[b]), np.ceil(edges[b + 1]) - 1))
    return np.stack(columns, axis=1).astype(np.int64)


def drop_training_ages(train: pd.DataFrame, cfg: TaskConfig, log=print) -> pd.DataFrame:
    """Drop ambiguous-age TRAINING images (never validation ones)."""
    if not cfg.drop_ambiguous_ages:
        return train
    if "age" not in train.columns:
        raise PodiumError("task.drop_ambiguous_ages needs an `age` column in the data")
    kept, dropped = drop_ambiguous_ages(train, cfg.drop_ambiguous_ages)
    log(f"dropped {dropped} training image(s) with ages in {cfg.drop_ambiguous_ages}")
    return kept.reset_index(drop=True)


def attribute_metrics(spec: TaskSpec, y_true: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy and macro F1 of each attribute, from composite probabilities."""
    from sklearn.metrics import accuracy_score

    from podium.evaluation.scores import macro_f1

    if spec.attributes is None or spec.mode == "per_attribute":
        return {}
    task = spec.attributes
    true_parts = task.decode_array(y_true)
    out = {}
    for name in task.names:
        pred = task.marginal_probs(probs, name).argmax(1)
        k = len(task.classes(name))
        out[name] = {"acc": float(accuracy_score(true_parts[name], pred)),
                     "f1": macro_f1(true_parts[name], pred, k)}
    return out


def composite_task(classes: list[str]) -> AttributeTask | None:
    """The attribute structure behind composite class names (``wear/male/young``), if any.

    Lets tools that only see a class list (ensembles, reports) vote or score
    per attribute: None unless the names are exactly a mixed-radix product.
    """
    parts = [str(c).split(SEPARATOR) for c in classes]
    n = len(parts[0]) if parts else 0
    if n < 2 or any(len(p) != n for p in parts):
        return None
    values = [list(dict.fromkeys(p[i] for p in parts)) for i in range(n)]
    if any(len(v) < 2 for v in values):
        return None
    task = AttributeTask({f"attribute{i + 1}": v for i, v in enumerate(values)})
    return task if task.composite_names() == [str(c) for c in classes] else None
