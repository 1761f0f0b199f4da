"""Losses for imbalanced classification, and the class weights that feed them.

Macro F1 rewards rare classes as much as common ones, so every loss takes
per-class weights; `compute_class_weights` derives them from the counts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from podium.errors import PodiumError, lookup


class FocalLoss(nn.Module):
    """Cross-entropy scaled by (1 - p_true)^gamma: easy examples count less."""

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1.0 - p_true).pow(self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum().clamp_min(1e-12)
        return loss.mean()


class SoftF1Loss(nn.Module):
    """1 - macro F1 computed on probabilities: optimizes the leaderboard metric directly.

    Per-class F1 uses soft counts over the batch; class weights weight the mean.
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, eps: float = 1e-7):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(target, self.num_classes).to(probs.dtype)
        tp = (probs * onehot).sum(0)
        fp = (probs * (1 - onehot)).sum(0)
        fn = ((1 - probs) * onehot).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        if self.weight is not None:
            return 1 - (f1 * self.weight).sum() / self.weight.sum()
        return 1 - f1.mean()


def _ce(num_classes, weight, label_smoothing, gamma):
    return nn.CrossEntropyLoss(weight=weight)


def _smooth(num_classes, weight, label_smoothing, gamma):
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def _focal(num_classes, weight, label_smoothing, gamma):
    return FocalLoss(weight=weight, gamma=gamma)


def _f1(num_classes, weight, label_smoothing, gamma):
    return SoftF1Loss(num_classes, weight=weight)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "label_smoothing": _smooth,
    "focal": _focal,
    "f1": _f1,
}


def create_loss(name: str, num_classes: int, *, class_weights: torch.Tensor | None = None,
                label_smoothing: float = 0.1, focal_gamma: float = 2.0) -> nn.Module:
    factory = lookup(LOSSES, name, "loss")
    return factory(num_classes, class_weights, label_smoothing, focal_gamma)


def inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """n / (k * count) for the k classes present, 0 for absent ones."""
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


def compute_class_weights(counts: Sequence[int], mode: str | Sequence[float]) -> torch.Tensor | None:
    """Per-class loss weights normalised to mean 1 over the classes present.

    ``auto`` is inverse frequency; ``sqrt`` its square root, which helps rare
    classes without letting a handful of images dominate a short fine-tune.
    """
    counts = np.asarray(counts, dtype=np.float64)
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
    return torch.tensor(weights, dtype=torch.float32)
