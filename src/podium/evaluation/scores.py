"""The one macro F1 (numpy only, so ensembles and bias tuning need no torch).

Definition: sklearn's ``f1_score(average="macro")`` with its default labels,
i.e. the unweighted mean of per-class F1 over the classes that occur in the
truth **or** the predictions. That is the competition metric, and it is what
torchmetrics' ``MulticlassF1Score(average="macro")`` logs during training
(classes with no support and no predictions are left out, not counted as 0),
so the validation score, `podium evaluate`, CV and ensembles agree on the
same predictions (tested). Counting an absent class as 0 would instead make a
fold that happens to lack a rare class look worse than it is.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from podium.errors import PodiumError


def per_class_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """True positives, true counts and predicted counts per class."""
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes)[:n_classes]
    n_true = np.bincount(y_true, minlength=n_classes)[:n_classes]
    n_pred = np.bincount(y_pred, minlength=n_classes)[:n_classes]
    return tp, n_true, n_pred


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None) -> float:
    """Macro F1 over the classes present in truth or prediction (see the module docstring).

    Fast enough for bias tuning, which evaluates it thousands of times; equal to
    sklearn's value (tested). ``n_classes`` only sizes the counts.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    n = int(max(n_classes or 0, y_true.max() + 1, y_pred.max() + 1))
    tp, n_true, n_pred = per_class_counts(y_true, y_pred, n)
    occurs = (n_true + n_pred) > 0
    return float(np.mean(2.0 * tp[occurs] / (n_true[occurs] + n_pred[occurs])))


def macro_f1_of_labels(y_true: Sequence, y_pred: Sequence) -> float:
    """`macro_f1` of two sequences of class names (or any hashable labels)."""
    names = {name: i for i, name in enumerate(dict.fromkeys([*y_true, *y_pred]))}
    return macro_f1([names[v] for v in y_true], [names[v] for v in y_pred], len(names))


def check_labels(y_true: ArrayLike, n_rows: int, n_classes: int) -> np.ndarray:
    """``y_true`` as int64 class indices, refused with a plain message unless one per prediction row and
    in 0..n_classes-1 (scoring misaligned labels would look like a bad model)."""
    y = np.asarray(y_true)
    if y.shape != (n_rows,):
        raise PodiumError(f"expected {n_rows} integer labels to match the predictions; got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise PodiumError(f"labels must be integer class indices; got dtype {y.dtype}")
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise PodiumError(f"labels must lie in 0..{n_classes - 1}; found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)
