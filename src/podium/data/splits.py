"""The one splitter: stratified holdouts and k folds, grouped whenever rows carry groups.

Grouping (a person, a source photo) keeps every image of a group on one side,
otherwise validation measures recognising people instead of the task. Training's
holdout (`podium.data.dataset.holdout_split`) and cross-validation decide "has
groups" here, the same way.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from podium.errors import PodiumError


def has_groups(frame: pd.DataFrame) -> bool:
    """Whether rows carry groups (a ``group`` column with at least one value)."""
    return "group" in frame.columns and bool(_present(frame["group"]).any())


def _present(groups: pd.Series) -> np.ndarray:
    return (groups.notna() & (groups.astype(str).str.strip() != "")).to_numpy()


def group_ids(frame: pd.DataFrame) -> np.ndarray:
    """The group of every row; a row with an empty group is a group of its own, so it can
    never drag unrelated images along (nor be silently merged into one big group)."""
    groups = frame["group"].astype(str).to_numpy(dtype=object).copy()
    missing = ~_present(frame["group"])
    groups[missing] = [f"\0row{i}" for i in np.flatnonzero(missing)]
    return groups


def make_folds(frame: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every row: stratified on ``label``, grouped when ``group`` exists.

    Grouping keeps every image of a person (or any group) in one fold, otherwise
    the CV score measures recognising people instead of the task.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise PodiumError(f"cross-validation needs at least 2 folds; got {k}")
    labels = frame["label"].astype(str).to_numpy()
    grouped = has_groups(frame)
    groups = group_ids(frame) if grouped else None
    units = len(set(groups)) if groups is not None else len(frame)
    if units < k:
        what = "groups" if grouped else "images"
        raise PodiumError(f"cannot make {k} folds from {units} {what}; use --folds {max(2, units)} or fewer, or add data")
    folds = np.full(len(frame), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # a class rarer than k only means some folds validate without it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if grouped:
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            splits = splitter.split(np.zeros(len(frame)), labels, groups)
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            splits = splitter.split(np.zeros(len(frame)), labels)
        for fold, (_, val_idx) in enumerate(splits):
            folds[val_idx] = fold
    empty = sorted(set(range(k)) - set(folds.tolist()))
    if (folds < 0).any() or empty:
        raise PodiumError(f"fold assignment left fold(s) {empty} empty; use fewer folds")
    if grouped:
        spread = pd.Series(folds).groupby(groups).nunique()
        assert (spread == 1).all(), f"groups split across folds: {spread[spread > 1].index.tolist()[:5]}"
    return folds
