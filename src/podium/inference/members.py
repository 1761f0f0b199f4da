"""A cross-validation run or an ensemble as one torch module: members' probabilities, combined.

The folds of a cv run and the members of an ensemble folder become one
`Combination`: each member reads the same uint8 batch, resizes it to its own
input size, applies its own TTA views and returns probabilities; the
combination votes them (per attribute for composite classes), applies the
fitted logit biases and returns log-probabilities, so ``softmax`` of its output
is the prediction. The same module predicts from the folder and is exported as
one ONNX graph (`podium export CV_RUN|ENSEMBLE`): the folder and the exported
file can only differ by the runtime's numerics, which the parity check bounds.

Everything here is traceable: resizing is two matrix products (`tta.resize`),
views are flips, crops and pads, votes are sums and argmaxes over a fixed
number of members.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from podium.errors import PodiumError

#: voting methods a predictor can apply image by image (rank averaging needs the whole test set)
METHODS = ("soft", "weighted", "hard")
_TIE = 1e-6
_FLOOR = 1e-12


class RunMember(nn.Module):
    """One trained run as a member: resize to its input size, its TTA views merged, probabilities out."""

    def __init__(self, classifier: nn.Module, size: tuple[int, int], views: Sequence[str] | None,
                 merge: str = "mean", name: str = ""):
        super().__init__()
        from podium.evaluation.tta import parse_views, resolve_merge

        self.classifier = classifier
        self.size = (int(size[0]), int(size[1]))
        self.view_names = [v for v in (views or []) if v != "identity"]
        self.views = parse_views(["identity", *self.view_names]) if self.view_names else []
        self.merge = resolve_merge(merge)
        self.name = name

    def forward(self, images: Tensor) -> Tensor:
        from podium.evaluation.tta import apply_views, merge_view_logits, resize

        x = resize(images, self.size)
        if not self.views:
            return self.classifier(x).float().softmax(1)
        logits = self.classifier(apply_views(x, self.views))
        return merge_view_logits(logits, len(self.views), self.merge)


class Combination(nn.Module):
    """Members' probabilities voted into one (N, C) probability table.

    ``radices`` (composite classes such as mask x gender x age) votes each
    attribute's marginal probabilities and composes them, as `podium ensemble`
    does on OOF tables; ``biases`` are per-class logit biases (`cv-biases`).
    """

    weights: Tensor
    biases: Tensor | None

    def __init__(self, members: Sequence[nn.Module], *, weights: Sequence[float] | None = None,
                 method: str = "soft", radices: Sequence[int] | None = None, biases: Sequence[float] | None = None):
        super().__init__()
        if method not in METHODS:
            raise PodiumError(f"an ensemble predicts image by image with {', '.join(METHODS)} voting; "
                              f"{method!r} is not one of them" + (
                                  " (rank averaging ranks each member over the whole test set, so it cannot "
                                  "predict one image; use soft or weighted)" if method == "rank" else ""))
        if not members:
            raise PodiumError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        w = torch.full((len(members),), 1.0 / len(members)) if weights is None else torch.tensor(
            [float(v) for v in weights], dtype=torch.float32)
        if len(w) != len(members) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise PodiumError(f"ensemble weights {list(map(float, w))} do not fit {len(members)} members "
                              "(one non-negative weight each, not all zero)")
        self.register_buffer("weights", w / w.sum())
        self.method = method
        self.radices = [int(r) for r in radices] if radices else None
        self.register_buffer("biases", None if biases is None else torch.tensor(list(biases), dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        """(N, C) probabilities."""
        probs = torch.stack([member(images) for member in self.members])  # (M, N, C)
        if self.radices:
            voted = self._per_attribute(probs)
        else:
            voted = self._vote(probs)
        if self.biases is not None:
            voted = torch.softmax(torch.log(voted.clamp_min(_FLOOR)) + self.biases, dim=1)
        return voted

    def _vote(self, probs: Tensor) -> Tensor:
        weights = self.weights.view(-1, 1, 1)
        summed = (weights * probs).sum(0)
        if self.method != "hard":
            return summed
        n_classes = probs.shape[-1]
        onehot = (probs.argmax(-1, keepdim=True) == torch.arange(n_classes, device=probs.device)).float()
        votes = (weights * onehot).sum(0)
        tied = votes >= votes.max(dim=1, keepdim=True).values - _TIE
        winner = torch.where(tied, summed, torch.full_like(summed, -1.0)).argmax(1, keepdim=True)
        votes = votes + 2 * _TIE * (winner == torch.arange(n_classes, device=probs.device)).float()
        return votes / votes.sum(1, keepdim=True)

    def _per_attribute(self, probs: Tensor) -> Tensor:
        assert self.radices is not None
        m, n = probs.shape[0], probs.shape[1]
        cube = probs.reshape(m, n, *self.radices)
        joint = None
        for axis in range(len(self.radices)):
            others = [2 + a for a in range(len(self.radices)) if a != axis]
            marginal = self._vote(cube.sum(dim=others))  # (N, K_axis)
            shape = [n] + [self.radices[a] if a == axis else 1 for a in range(len(self.radices))]
            part = marginal.reshape(shape)
            joint = part if joint is None else joint * part
        assert joint is not None
        flat = joint.reshape(n, -1)
        return flat / flat.sum(1, keepdim=True).clamp_min(_FLOOR)


class LogProbabilities(nn.Module):
    """The exported and predicted output: log-probabilities (softmax gives them back),
    the same contract as a multi-head run's composite output."""

    def __init__(self, combination: Combination):
        super().__init__()
        self.combination = combination

    def forward(self, images: Tensor) -> Tensor:
        return torch.log(self.combination(images).clamp_min(_FLOOR))
