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

from podium.data.statistics import CLASS_WEIGHTS, class_weight_values, inverse_frequency  # noqa: F401 (re-exported)
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


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy on ``logits + tau * log(prior)`` (Menon et al., 2021).

    Training against prior-shifted logits leaves the raw logits balanced, so
    plain argmax at predict time favours rare classes as a balanced error
    would; nothing changes at inference. ``tau=0`` (or uniform priors) is plain
    cross-entropy; ``tau=1`` is the balanced softmax of Ren et al. (2020).
    Accepts hard targets or (N, C) soft targets (MixUp/CutMix).
    """

    def __init__(self, priors: torch.Tensor | None, tau: float = 1.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        # Rebuilt from the class counts in the hyper-parameters: not part of the weights.
        adjust = None if priors is None else tau * torch.log(priors.float().clamp_min(1e-12))
        self.register_buffer("adjustment", adjust, persistent=False)
        self.tau = tau
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.adjustment is not None:
            logits = logits + self.adjustment.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)


def distillation_loss(student_log_probs: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row: ``T^2 * KL(target_T || student_T)`` (Hinton et al., 2015), both distributions
    softened by the temperature ``T``. The target comes as probabilities (a teacher's OOF table,
    pseudo-labels); its softened form is ``softmax(log p / T)``. ``T^2`` keeps the gradients'
    scale independent of ``T``; at ``T = 1`` this is cross-entropy with soft targets minus their
    (constant) entropy."""
    t = float(temperature)
    target = (target_probs.float().clamp_min(1e-12).log() / t).log_softmax(1)
    student = (student_log_probs.float() / t).log_softmax(1)
    return (t * t) * (target.exp() * (target - student)).sum(1)


class _ScaleRowGradients(torch.autograd.Function):
    """Identity forward; backward multiplies row i's gradient by ``weights[i]``."""

    @staticmethod
    def forward(ctx, outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weights)
        return outputs.view_as(outputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad * weights.to(grad.dtype).view(-1, *([1] * (grad.ndim - 1))), None


def scale_row_gradients(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``outputs`` unchanged, with each row's gradient scaled by its per-sample weight.

    Every loss here but ``f1`` is a (class-weighted) mean of per-row terms, and a row's term
    depends on that row's outputs only, so the loss of the scaled outputs has exactly the
    gradient of the per-sample weighted loss ``sum_i w_i * c_i * l_i / sum_i c_i`` (``c``:
    class weights). That holds for every loss, head layout and ordinal head without each
    one learning a ``reduction`` argument; ``f1`` (a batch statistic) gets each row's share of
    its gradient scaled. The loss's value is unchanged (`Classifier.soft_target_loss` scales it by
    the batch's mean weight and the rows' gradients by their weight over that mean)."""
    return _ScaleRowGradients.apply(outputs, weights.detach())


def class_priors(counts: Sequence[int] | None) -> torch.Tensor | None:
    """Training-set class frequencies (absent classes get a tiny prior, never log(0))."""
    if counts is None:
        return None
    counts = torch.as_tensor(np.asarray(counts, dtype=np.float64)).clamp_min(0.5)
    return (counts / counts.sum()).float()


def _ce(num_classes, weight, label_smoothing, gamma, **_):
    return nn.CrossEntropyLoss(weight=weight)


def _smooth(num_classes, weight, label_smoothing, gamma, **_):
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def _focal(num_classes, weight, label_smoothing, gamma, **_):
    return FocalLoss(weight=weight, gamma=gamma)


def _f1(num_classes, weight, label_smoothing, gamma, **_):
    return SoftF1Loss(num_classes, weight=weight)


def _logit_adjusted(num_classes, weight, label_smoothing, gamma, *, counts=None, tau=1.0, **_):
    return LogitAdjustedLoss(class_priors(counts), tau=tau, weight=weight)


def _balanced_softmax(num_classes, weight, label_smoothing, gamma, *, counts=None, **_):
    return LogitAdjustedLoss(class_priors(counts), tau=1.0, weight=weight)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "label_smoothing": _smooth,
    "focal": _focal,
    "f1": _f1,
    "logit_adjusted": _logit_adjusted,
    "balanced_softmax": _balanced_softmax,
}

#: losses that accept (N, C) soft targets, as MixUp/CutMix produce
SOFT_TARGET_LOSSES = ("ce", "label_smoothing", "logit_adjusted", "balanced_softmax")


def create_loss(name: str, num_classes: int, *, class_weights: torch.Tensor | None = None,
                label_smoothing: float = 0.1, focal_gamma: float = 2.0,
                class_counts: Sequence[int] | None = None, logit_adjust_tau: float = 1.0) -> nn.Module:
    """The loss ``name``; ``class_counts`` (training images per class) feed the prior-based losses."""
    factory = lookup(LOSSES, name, "loss")
    if class_counts is not None and len(class_counts) != num_classes:
        raise PodiumError(f"loss {name}: {len(class_counts)} class counts given for {num_classes} classes")
    return factory(num_classes, class_weights, label_smoothing, focal_gamma, counts=class_counts,
                   tau=logit_adjust_tau)


def compute_class_weights(counts: Sequence[int], mode: str | Sequence[float]) -> torch.Tensor | None:
    """`podium.data.statistics.class_weight_values` as the loss's weight tensor."""
    weights = class_weight_values(counts, mode)
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)
