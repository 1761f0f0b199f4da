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

from podium.errors import PodiumError, summarize_list


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


def describe_fold_gaps(frame: pd.DataFrame) -> str | None:
    """One line naming the folds (``fold`` column, from `make_folds`) whose validation part lacks
    a class, and those classes, or None when every fold validates every class.

    A class with fewer groups (or images) than folds cannot reach every fold: those folds' scores
    leave it out (fold F1 spread widens, a fold may score one class only). Not an error: asking
    for that many folds is the user's call, and the OOF score over all folds still covers every image.
    """
    labels = frame["label"].astype(str)
    folds = frame["fold"].to_numpy()
    k = int(folds.max()) + 1
    lacking = {f: sorted(set(labels) - set(labels[folds == f])) for f in range(k)}
    lacking = {f: missing for f, missing in lacking.items() if missing}
    if not lacking:
        return None
    grouped = has_groups(frame)
    units = (pd.Series(group_ids(frame)).groupby(labels.to_numpy()).nunique() if grouped
             else labels.value_counts())
    rare = sorted(set().union(*lacking.values()))
    detail = ", ".join(f"{c!r} ({units[c]} {'group' if grouped else 'image'}{'s' if units[c] != 1 else ''})"
                       for c in rare[:5]) + (f" and {len(rare) - 5} more" if len(rare) > 5 else "")
    per_fold = "; ".join(f"fold {f}: {summarize_list([repr(c) for c in missing], 3)}"
                         for f, missing in list(lacking.items())[:5])
    fewest = int(units.min())
    fix = (f"use --folds {fewest} or fewer to validate every class in every fold" if fewest >= 2
           else "add images (or groups) of those classes")
    return (f"warning: {len(lacking)} of {k} folds validate without some class(es) {detail}: {per_fold}"
            f"{' ...' if len(lacking) > 5 else ''}. Their fold scores leave those classes out (the OOF "
            f"score still covers every image); {fix}")
