"""Per-class logit biases for macro F1: fitted on out-of-fold (or validation) predictions, applied
at prediction time (`podium cv-biases`, a cv run's or ensemble's ``biases.json``).

``nested_bias_gain`` exists so that the gain claimed for bias tuning is measured on rows the
biases never saw, and says whether that gain is reliable enough to apply the biases: a positive
nested gain alone was not (benchmarks/auto/RESULTS.md, "Bias gate": 5 of 11 auto cells had a
nested gain > 0, and together they lost 2.6 points of test macro F1).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import softmax
from sklearn.model_selection import StratifiedKFold

from podium.errors import PodiumError
from podium.evaluation.scores import check_labels, macro_f1

_EPS = 1e-15


DEFAULT_BIAS_GRID = np.round(np.linspace(-2.0, 2.0, 41), 6)
BIAS_CONFIDENCE = 0.8  # share of paired bootstrap resamples in which the nested gain must be > 0
BOOTSTRAP_RESAMPLES = 500


def apply_logit_biases(probs: np.ndarray, biases: ArrayLike) -> np.ndarray:
    """``softmax(log p + b)``: shifts the decision boundary towards under-predicted classes."""
    p = np.asarray(probs, dtype=np.float64)
    b = np.asarray(biases, dtype=np.float64)
    if b.shape != (p.shape[1],):
        raise PodiumError(f"got {b.shape[0] if b.ndim else 1} biases for {p.shape[1]} classes")
    return softmax(np.log(np.clip(p, _EPS, None)) + b, axis=1)


def fit_logit_biases(
    probs: np.ndarray,
    y_true: ArrayLike,
    n_classes: int,
    n_rounds: int = 3,
    grid: Sequence[float] | None = None,
) -> np.ndarray:
    """Per-class additive log-probability biases maximising macro F1 by coordinate ascent.

    Argmax of calibrated probabilities maximises accuracy, not macro F1: rare
    classes are under-predicted. Starting at zero and accepting only strict
    improvements guarantees the fitted biases never lower macro F1 on the data
    they were fitted on (use `nested_bias_gain` for an honest estimate).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise PodiumError(f"probabilities must have shape (N, {n_classes}); got {p.shape}")
    y = check_labels(y_true, p.shape[0], n_classes)
    values = DEFAULT_BIAS_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    logp = np.log(np.clip(p, _EPS, None))
    biases = np.zeros(n_classes)
    best = macro_f1(y, logp.argmax(axis=1), n_classes)
    for _ in range(n_rounds):
        improved = False
        for c in range(n_classes):
            # Only class c's score moves, so argmax reduces to "c vs the best other class":
            # O(N) per candidate instead of O(N*C).
            scores = logp + biases
            scores[:, c] = -np.inf
            other = scores.argmax(axis=1)
            other_max = scores[np.arange(len(y)), other]
            for v in values:
                if v == biases[c]:
                    continue
                mine = logp[:, c] + v
                wins = (mine > other_max) | ((mine == other_max) & (c < other))  # argmax's tie rule
                score = macro_f1(y, np.where(wins, c, other), n_classes)
                if score > best + 1e-12:
                    best, improved = score, True
                    biases = biases.copy()
                    biases[c] = v
        if not improved:
            break
    return biases


def nested_bias_gain(
    probs: np.ndarray,
    y_true: ArrayLike,
    n_classes: int,
    n_splits: int = 5,
    seed: int = 0,
    confidence: float = BIAS_CONFIDENCE,
    **fit_kwargs,
) -> dict:
    """Macro F1 before/after bias tuning, scored only on folds the biases never saw.

    Also returns ``biases`` fitted on all rows and ``recommended``: apply them only when the
    nested gain is positive in at least ``confidence`` of paired bootstrap resamples of the rows
    (``p_gain``). A small positive nested gain is mostly noise: the biases move a rare class's few
    decisions, and on a test part that flips as often as it holds.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = check_labels(y_true, p.shape[0], n_classes)
    counts = np.bincount(y, minlength=n_classes)
    if n_splits < 2 or counts.max(initial=0) < n_splits:
        raise PodiumError(
            f"nested bias tuning needs n_splits >= 2 and at least one class with >= n_splits rows; "
            f"got n_splits={n_splits}, largest class has {counts.max(initial=0)} rows"
        )
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    before = p.argmax(axis=1)
    after = before.copy()
    fold_before, fold_after = [], []
    with warnings.catch_warnings():
        # Rare classes with fewer rows than folds are expected in imbalanced data.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(folds.split(np.zeros(len(y)), y))
    for fit_idx, held_idx in splits:
        b = fit_logit_biases(p[fit_idx], y[fit_idx], n_classes, **fit_kwargs)
        after[held_idx] = (np.log(np.clip(p[held_idx], _EPS, None)) + b).argmax(axis=1)
        fold_before.append(macro_f1(y[held_idx], before[held_idx], n_classes))
        fold_after.append(macro_f1(y[held_idx], after[held_idx], n_classes))
    f1_before = macro_f1(y, before, n_classes)
    f1_after = macro_f1(y, after, n_classes)
    p_gain = bootstrap_gain_share(y, before, after, n_classes, seed=seed)
    return {
        "f1_before": f1_before,
        "f1_after": f1_after,
        "gain": f1_after - f1_before,
        "p_gain": p_gain,
        "confidence": confidence,
        "recommended": bool(f1_after > f1_before and p_gain >= confidence),
        "fold_f1_before": fold_before,
        "fold_f1_after": fold_after,
        "n_splits": n_splits,
        "seed": seed,
        "biases": fit_logit_biases(p, y, n_classes, **fit_kwargs).tolist(),
    }


def bootstrap_gain_share(y: np.ndarray, before: np.ndarray, after: np.ndarray, n_classes: int, *,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Share of paired bootstrap resamples of the rows in which ``after`` scores a higher macro F1
    than ``before``: how often the gain would survive another draw of the same number of images."""
    changed = before != after
    if not changed.any():
        return 0.0
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        wins += macro_f1(y[i], after[i], n_classes) > macro_f1(y[i], before[i], n_classes)
    return wins / resamples
