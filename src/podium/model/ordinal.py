"""Ordinal heads: a binned number (age) learned from its exact value, binned at predict time.

Why: the competition bins age into <30, 30-59, >=60, so a 29- and a 31-year-old
are different classes while a 31- and a 59-year-old are the same one; cross
entropy on the bins throws the years away. An ordinal head keeps them: for
integer values ``lo..hi`` it has ``hi - lo`` binary outputs, output ``j``
answering "is the value > lo + j?" (the cumulative-logit decomposition of Niu
et al., 2016, "Ordinal regression with multiple output CNN"; CORAL, Cao et al.,
2020, is the same with one shared weight vector). Probabilities are made
monotone by a running minimum, and a bin's probability is the difference of two
cumulative ones, so the head slots into the composite's log-probabilities like
a softmax head. The bin edges used at predict time (``cuts``) start at the
task's thresholds and can be tuned for macro F1 on validation (`fit_cuts`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from podium.rundir import ORDINAL_CUTS_FILE

#: written beside a run's checkpoints: the tuned bin edges (see `tune_module_cuts`)


@dataclass(frozen=True)
class OrdinalSpec:
    """One ordinal head: which attribute head it is, its integer value range and bin edges."""

    head: int  # index among the task's attributes
    lo: int
    hi: int
    cuts: tuple[int, ...]  # bin edges in value units: bin b holds cuts[b-1] <= v < cuts[b]
    scale: float = 1.0  # spread (sd) of the training values: the loss is per unit of it
    priors: tuple[float, ...] = ()  # training share of value > lo + j: the outputs' starting point

    @property
    def width(self) -> int:
        return max(1, self.hi - self.lo)

    def as_dict(self) -> dict:
        return {"head": self.head, "lo": self.lo, "hi": self.hi, "cuts": list(self.cuts), "scale": self.scale,
                "priors": list(self.priors)}

    @classmethod
    def from_dict(cls, d: dict) -> OrdinalSpec:
        """The inverse of `as_dict` (checkpoints hold plain dicts)."""
        return cls(int(d["head"]), int(d["lo"]), int(d["hi"]), tuple(int(c) for c in d["cuts"]),
                   float(d.get("scale", 1.0)), tuple(float(p) for p in d.get("priors", ())))

    def prior_logits(self) -> torch.Tensor:
        p = torch.tensor(self.priors, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        return torch.log(p / (1 - p))


def make_spec(head: int, values: np.ndarray, thresholds: Sequence[float]) -> OrdinalSpec:
    """The spec for training values ``values`` (rounded to integers) and bin ``thresholds``."""
    v = np.rint(np.asarray(values, dtype=float)).astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    priors = tuple(float((v > lo + j).mean()) for j in range(max(1, hi - lo)))
    return OrdinalSpec(head, lo, hi, tuple(int(np.ceil(t)) for t in thresholds),
                       scale=max(1.0, float(v.std())), priors=priors)


def ordinal_loss(logits: torch.Tensor, values: torch.Tensor, lo: int, scale: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of the ``value > lo + j`` questions, summed over the questions,
    divided by the values' spread ``scale`` and averaged over the batch.

    Why this scale: the mean over ~100 one-year questions made the head learn
    100x slower (UTKFace, 4 epochs: 0.513 macro F1 against 0.641 for softmax
    heads) and the plain sum (CORAL's loss, ~20 nats at the start) drowned the
    gender head (0.352). Summed per unit of spread, it weighs like one softmax
    head (it approximates a ranked probability score in sd units), and the
    outputs start at the training priors (`OrdinalSpec.priors`), so the easy
    questions far from an image's value add nothing from the first step.
    """
    steps = lo + torch.arange(logits.shape[1], device=logits.device)
    levels = (values.unsqueeze(1) > steps.unsqueeze(0)).to(logits.dtype)
    per_question = torch.nn.functional.binary_cross_entropy_with_logits(logits, levels, reduction="none")
    return per_question.sum(1).mean() / scale


def cumulative_probs(logits: torch.Tensor) -> torch.Tensor:
    """P(value > lo + j), forced non-increasing in j."""
    return torch.cummin(torch.sigmoid(logits.float()), dim=1).values


def bin_log_probs(logits: torch.Tensor, lo: int, cuts: torch.Tensor) -> torch.Tensor:
    """(N, len(cuts) + 1) log-probabilities of the bins; P(v >= c) = P(v > c - 1)."""
    q = cumulative_probs(logits)
    n = q.shape[0]
    ones, zeros = q.new_ones(n, 1), q.new_zeros(n, 1)
    padded = torch.cat([ones, q, zeros], dim=1)  # column c - lo: P(v >= c), 1 below the range, 0 above
    index = (cuts.to(q.device).long() - lo).clamp(0, padded.shape[1] - 1)
    at_least = torch.cat([ones, padded[:, index], zeros], dim=1)
    probs = (at_least[:, :-1] - at_least[:, 1:]).clamp_min(1e-7)
    return probs.log()


def fit_cuts(score: Callable[[tuple[int, ...]], float], cuts: Sequence[int], lo: int, hi: int,
             window: int = 10) -> tuple[tuple[int, ...], float]:
    """Bin edges within ``window`` of ``cuts`` (increasing, inside lo+1..hi) maximizing ``score``.

    Coordinate ascent, two passes: each edge in turn over its window, the
    others fixed; ties keep the edge nearest the task's threshold.
    """
    best = tuple(int(c) for c in cuts)
    best_score = score(best)
    for _ in range(2):
        for i, start in enumerate(cuts):
            low = max(lo + 1, int(start) - window, best[i - 1] + 1 if i else lo + 1)
            high = min(hi, int(start) + window, best[i + 1] - 1 if i + 1 < len(best) else hi)
            for c in sorted(range(low, high + 1), key=lambda c: abs(c - int(start))):
                trial = best[:i] + (c,) + best[i + 1:]
                value = score(trial)
                if value > best_score + 1e-12:
                    best, best_score = trial, value
    return best, best_score


def nested_cut_gain(score_on: Callable[[np.ndarray, tuple[int, ...]], float], n: int, cuts: Sequence[int],
                    lo: int, hi: int, n_splits: int = 2, seed: int = 0) -> float:
    """Honest gain of `fit_cuts`: fitted on one part of validation, scored on the other.

    ``score_on(indices, cuts)`` scores the validation images ``indices`` with
    edges ``cuts``; returns the mean over folds of tuned minus default score.
    """
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, n_splits)
    gains = []
    for k, held in enumerate(folds):
        fit_idx = np.concatenate([f for j, f in enumerate(folds) if j != k])
        def on_fit_part(c: tuple[int, ...], fit_idx: np.ndarray = fit_idx) -> float:
            return score_on(fit_idx, c)

        tuned, _ = fit_cuts(on_fit_part, cuts, lo, hi)
        gains.append(score_on(held, tuned) - score_on(held, tuple(cuts)))
    return float(np.mean(gains))


def tune_module_cuts(module, raw: torch.Tensor, y_true: np.ndarray) -> dict:
    """Fit each ordinal head's bin edges for composite macro F1 on validation outputs ``raw``.

    Returns what `ordinal_cuts.json` holds: per attribute head the default and
    tuned edges, the validation macro F1 with each (the tuned one is fitted on
    these images, so optimistic) and the honest, nested estimate of the gain.
    """
    from podium.evaluation.scores import macro_f1

    n_classes = len(module.classes)
    current = {i: tuple(int(c) for c in getattr(module, f"ordinal_cuts_{i}").tolist()) for i in module.ordinal}

    def score_on(idx: np.ndarray, head: int, cuts: tuple[int, ...]) -> float:
        saved = current[head]
        module.set_ordinal_cuts({head: list(cuts)})
        try:
            pred = module.composite_log_probs(raw[idx]).argmax(1).numpy()
        finally:
            module.set_ordinal_cuts({head: list(saved)})
        return macro_f1(y_true[idx], pred, n_classes)

    everyone = np.arange(len(y_true))
    report = {}
    for head, spec in module.ordinal.items():
        default = current[head]
        def on_rows(idx: np.ndarray, c: tuple[int, ...], head: int = head) -> float:
            return score_on(idx, head, c)

        tuned, tuned_f1 = fit_cuts(lambda c: on_rows(everyone, c), default, spec.lo, spec.hi)
        gain = nested_cut_gain(on_rows, len(y_true), default, spec.lo, spec.hi)
        report[str(head)] = {"default_cuts": list(default), "tuned_cuts": list(tuned),
                             "val_f1_default": score_on(everyone, head, default), "val_f1_tuned": tuned_f1,
                             "nested_gain": gain}
        current[head] = tuned
        module.set_ordinal_cuts({head: list(tuned)})
    module.set_ordinal_cuts({h: list(spec.cuts) for h, spec in module.ordinal.items()})
    return report


def apply_saved_cuts(module, folder: Path) -> None:
    """Use the tuned edges saved in ``folder`` (a run) where they were marked applied."""
    path = Path(folder) / ORDINAL_CUTS_FILE
    if not module.ordinal or not path.is_file():
        return
    saved = json.loads(path.read_text())
    module.set_ordinal_cuts({int(h): e["tuned_cuts"] for h, e in saved.items()
                             if e.get("applied") and int(h) in module.ordinal})
