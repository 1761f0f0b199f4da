"""Dataset statistics shared by training and EDA: class weights and channel mean/std.

NumPy only, so `podium eda` suggests exactly the weights and normalization
that training would compute, without importing torch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from podium.errors import PodiumError, lookup


def inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """n / (k * count) for the k classes present, 0 for absent ones."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    inv = np.zeros_like(counts)
    inv[present] = counts[present].sum() / (present.sum() * counts[present])
    return inv


#: `train.class_weights` modes -> counts -> raw weights (None = unweighted); a list of floats is also allowed
CLASS_WEIGHTS: dict[str, Callable[[np.ndarray], np.ndarray | None]] = {
    "none": lambda counts: None,
    "auto": inverse_frequency,
    "sqrt": lambda counts: np.sqrt(inverse_frequency(counts)),
}


def class_weight_values(counts: Sequence[int] | np.ndarray, mode: str | Sequence[float]) -> np.ndarray | None:
    """Per-class loss weights normalised to mean 1 over the classes present (None = unweighted).

    ``auto`` is inverse frequency; ``sqrt`` its square root, which helps rare
    classes without letting a handful of images dominate a short fine-tune.
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights: np.ndarray | None
    if isinstance(mode, str):
        weights = lookup(CLASS_WEIGHTS, mode, "class-weights mode (or give a list)")(counts)
        if weights is None:
            return None
    else:
        weights = np.asarray(list(mode), dtype=np.float64)
        if len(weights) != len(counts):
            raise PodiumError(f"train.class_weights has {len(weights)} values but there are {len(counts)} classes")
    present = weights > 0
    if present.any():
        weights = weights / weights[present].mean()
    return weights


def mean_std(pixel_sum: np.ndarray, pixel_sumsq: np.ndarray, count: int) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0, 1] from sums over ``count`` pixels (values in [0, 1]),
    rounded to 4 places: what ``augment.mean`` / ``augment.std`` take."""
    if count <= 0:
        raise PodiumError("no images to compute normalization statistics from")
    mean = np.asarray(pixel_sum, dtype=np.float64) / count
    std = np.sqrt(np.maximum(np.asarray(pixel_sumsq, dtype=np.float64) / count - mean ** 2, 1e-12))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
