"""Combining several models' predictions into one better submission.

Members are prediction tables over the same images (out-of-fold tables from
cross-validation, or test tables from ``podium predict``). Everything here
works on plain ``(N, C)`` probability arrays once `align_members` has checked
that the tables really describe the same images and classes, because a
silently misaligned ensemble scores like a random model.

Weights are fitted on out-of-fold data only. Per-class macro-F1 biases live in
`podium.evaluation.biases`, checkpoint averaging in `podium.model.averaging`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedKFold

from podium.errors import PodiumError, lookup, summarize_list
from podium.evaluation.scores import check_labels, macro_f1
from podium.evaluation.tables import probability_columns
from podium.tasks.attributes import decode_digits, encode_digits, joint_from_marginals

_EPS = 1e-15
_TIE_TOL = 1e-9

Voter = Callable[..., np.ndarray]


# ---------------------------------------------------------------- metrics




def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], _EPS, None))))


# ---------------------------------------------------------------- validation


def _as_members(probs_list: Sequence[np.ndarray]) -> np.ndarray:
    """Stack members to (M, N, C), refusing empty lists and shape mismatches."""
    if len(probs_list) == 0:
        raise PodiumError("ensemble needs at least one member; got an empty list of predictions")
    arrays = [np.asarray(p, dtype=np.float64) for p in probs_list]
    first = arrays[0].shape
    if len(first) != 2:
        raise PodiumError(f"member 1 predictions must be a 2-D (images, classes) array; got shape {first}")
    for i, a in enumerate(arrays[1:], start=2):
        if a.shape != first:
            raise PodiumError(
                f"member {i} predictions have shape {a.shape} but member 1 has {first}; "
                "all members must cover the same images and classes (use align_members)"
            )
    stacked = np.stack(arrays)
    if not np.isfinite(stacked).all():
        bad = int(np.flatnonzero(~np.isfinite(stacked).reshape(len(arrays), -1).all(1))[0]) + 1
        raise PodiumError(f"member {bad} predictions contain NaN or infinite values")
    return stacked


def _as_weights(weights: Sequence[float] | np.ndarray | None, n_members: int) -> np.ndarray:
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_members:
        raise PodiumError(f"got {w.shape[0]} ensemble weights for {n_members} members; give one weight per member")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PodiumError(f"ensemble weights must be finite, >= 0 and not all zero; got {w.tolist()}")
    return w / w.sum()


# ---------------------------------------------------------------- voting


def soft_vote(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of member probabilities: the default, best when members are calibrated."""
    members = _as_members(probs_list)
    w = _as_weights(weights, len(members))
    return np.tensordot(w, members, axes=1)


def weighted_vote(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Soft vote with explicit (usually `fit_weights`-fitted) weights; refuses to guess them."""
    if weights is None:
        raise PodiumError(
            "the 'weighted' voter needs one weight per member; fit them on out-of-fold "
            "predictions with fit_weights(...) or use the 'soft' voter for equal weights"
        )
    return soft_vote(probs_list, weights)


def hard_vote(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted share of members whose top class is c; ties go to the larger summed probability.

    Returns vote shares (rows sum to 1) so hard voting composes with the other
    voters; the tie-break winner gets an infinitesimal bump so that ``argmax``
    of the result is the tie-broken decision.
    """
    members = _as_members(probs_list)
    w = _as_weights(weights, len(members))
    n_classes = members.shape[2]
    onehots = np.eye(n_classes)[members.argmax(axis=2)]  # (M, N, C)
    votes = np.tensordot(w, onehots, axes=1)
    summed = np.tensordot(w, members, axes=1)
    tied = votes >= votes.max(axis=1, keepdims=True) - _TIE_TOL
    winner = np.where(tied, summed, -np.inf).argmax(axis=1)
    votes[np.arange(len(votes)), winner] += 2 * _TIE_TOL
    return votes / votes.sum(axis=1, keepdims=True)


def rank_average(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Average of per-class ranks scaled to (0, 1]; robust to members with different calibration.

    Each class column is ranked over images (ties averaged) and divided by N,
    so a member that is over-confident cannot dominate. Rows are then
    renormalised to sum to 1 (argmax unchanged) so the result composes with
    the other voters.
    """
    members = _as_members(probs_list)
    w = _as_weights(weights, len(members))
    n_rows = members.shape[1]
    ranks = rankdata(members, axis=1) / max(n_rows, 1)
    scores = np.tensordot(w, ranks, axes=1)
    return scores / scores.sum(axis=1, keepdims=True)


VOTING: dict[str, Voter] = {
    "hard": hard_vote,
    "soft": soft_vote,
    "weighted": weighted_vote,
    "rank": rank_average,
}


def create_voter(name: str) -> Voter:
    """Voter by config name (``ensemble.voting``); unknown names list the valid ones."""
    return lookup(VOTING, name, "voting method")


# ---------------------------------------------------------------- fitted weights


def fit_weights(oof_probs_list: Sequence[np.ndarray], y_true: Sequence[int], n_classes: int) -> np.ndarray:
    """Soft-vote weights on the simplex minimising out-of-fold log loss.

    The objective ``-mean log(sum_m w_m p_m[i, y_i])`` is convex in ``w``, so
    SLSQP from the uniform start reaches the global optimum deterministically.
    Log loss (not F1) is used because it is smooth and rewards members that add
    information rather than members that merely agree.
    """
    members = _as_members(oof_probs_list)
    n_members, n_rows, n_cols = members.shape
    if n_cols != n_classes:
        raise PodiumError(f"predictions have {n_cols} class columns but n_classes is {n_classes}")
    y = check_labels(y_true, n_rows, n_classes)
    if n_members == 1:
        return np.ones(1)
    if n_rows == 0:
        raise PodiumError("cannot fit ensemble weights on zero out-of-fold rows")
    true_p = members[:, np.arange(n_rows), y].T  # (N, M)

    def loss(w: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(true_p @ w, _EPS, None))))

    def grad(w: np.ndarray) -> np.ndarray:
        mix = np.clip(true_p @ w, _EPS, None)
        return -(true_p / mix[:, None]).mean(axis=0)

    start = np.full(n_members, 1.0 / n_members)
    result = minimize(
        loss,
        start,
        jac=grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n_members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    w = np.clip(result.x, 0.0, None)
    if not np.isfinite(w).all() or w.sum() <= 0 or loss(w / w.sum()) > loss(start):
        # SLSQP failed to improve on equal weights: equal weights are the honest answer.
        return start
    return w / w.sum()


WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 21), 6)


def fit_weights_f1(oof_probs_list: Sequence[np.ndarray], y_true: Sequence[int], n_classes: int, *,
                   combine: Voter = soft_vote, start: Sequence[float] | np.ndarray | None = None, n_rounds: int = 3,
                   grid: Sequence[float] | None = None) -> np.ndarray:
    """Weights on the simplex maximising the macro F1 of ``combine(members, w)``, by coordinate ascent.

    The run is judged by macro F1, not log loss: a member that adds little
    likelihood can still fix a rare class. The search starts at ``start`` (the
    log-loss weights) and accepts only strict improvements, so it never ends
    below its start on these rows; whether it generalises is what
    `nested_ensemble_check` measures. ``combine`` is the voter (per attribute
    for composite classes).
    """
    members = _as_members(oof_probs_list)
    y = check_labels(y_true, members.shape[1], n_classes)
    n_members = len(members)
    w = _as_weights(start, n_members)
    if n_members == 1:
        return w

    def score(weights: np.ndarray) -> float:
        return macro_f1(y, combine(members, weights).argmax(axis=1), n_classes)

    best = score(w)
    for _ in range(n_rounds):
        improved = False
        for m in range(n_members):
            for v in (WEIGHT_GRID if grid is None else np.asarray(grid, dtype=np.float64)):
                candidate = _with_weight(w, m, float(v))
                if candidate is None:
                    continue
                value = score(candidate)
                if value > best + 1e-12:
                    best, w, improved = value, candidate, True
        if not improved:
            break
    return w


def _with_weight(w: np.ndarray, m: int, v: float) -> np.ndarray | None:
    """``w`` with member ``m`` at ``v`` and the others rescaled to fill ``1 - v`` (None: no change)."""
    if abs(w[m] - v) < 1e-12:
        return None
    others = np.delete(w, m)
    rest = others / others.sum() if others.sum() > 0 else np.full(len(others), 1.0 / len(others))
    return np.insert(rest * (1.0 - v), m, v)


def fit_ensemble_weights(oof_probs_list: Sequence[np.ndarray], y_true: Sequence[int], n_classes: int, *,
                         combine: Voter = soft_vote) -> np.ndarray:
    """The `weighted` method's weights: log loss first (`fit_weights`), then macro F1 (`fit_weights_f1`)."""
    start = fit_weights(oof_probs_list, y_true, n_classes)
    return fit_weights_f1(oof_probs_list, y_true, n_classes, combine=combine, start=start)


def nested_ensemble_check(oof_probs_list: Sequence[np.ndarray], y_true: Sequence[int], n_classes: int, *,
                          combine: Voter = soft_vote, fit: Callable | None = fit_ensemble_weights,
                          names: Sequence[str] | None = None, groups: Sequence | None = None,
                          n_splits: int = 5, seed: int = 0) -> dict:
    """The ensemble beside its best member, both scored on OOF rows nothing was fitted on.

    In each of ``n_splits`` splits of the rows, the weights (``fit``; None =
    equal weights) are fitted and the best member is chosen on the fitting
    rows; both then predict the held-back rows. The held-back predictions of
    all splits give the nested macro F1 of "ensemble" and of "pick the best
    member", the honest comparison: fitted weights always look better on the
    rows they were fitted on. ``groups`` keeps a group's rows on one side.
    """
    members = _as_members(oof_probs_list)
    y = check_labels(y_true, members.shape[1], n_classes)
    labels = list(names) if names is not None else [f"member_{i + 1}" for i in range(len(members))]
    splits = _nested_splits(y, n_classes, n_splits, seed, groups)
    ens_pred, best_pred = np.zeros(len(y), dtype=np.int64), np.zeros(len(y), dtype=np.int64)
    picked = []
    for fit_idx, held_idx in splits:
        w = fit(members[:, fit_idx], y[fit_idx], n_classes, combine=combine) if fit is not None else None
        ens_pred[held_idx] = combine(members[:, held_idx], w).argmax(axis=1)
        best = int(np.argmax([macro_f1(y[fit_idx], p[fit_idx].argmax(1), n_classes) for p in members]))
        best_pred[held_idx] = members[best, held_idx].argmax(axis=1)
        picked.append(labels[best])
    ensemble_f1, member_f1 = macro_f1(y, ens_pred, n_classes), macro_f1(y, best_pred, n_classes)
    return {"ensemble_nested_f1": ensemble_f1, "best_member_nested_f1": member_f1, "gain": ensemble_f1 - member_f1,
            "beats_best_member": bool(ensemble_f1 > member_f1), "best_member_picked": picked,
            "n_splits": len(splits), "seed": seed, "grouped": groups is not None}


def _nested_splits(y: np.ndarray, n_classes: int, n_splits: int, seed: int, groups) -> list:
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(y, minlength=n_classes)
    if n_splits < 2 or counts.max(initial=0) < n_splits:
        raise PodiumError(f"the nested check needs n_splits >= 2 and a class with >= n_splits rows; got n_splits="
                          f"{n_splits}, largest class {counts.max(initial=0)} rows")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if groups is not None:
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return list(folds.split(np.zeros(len(y)), y, np.asarray(groups)))
        return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


# ---------------------------------------------------------------- multi-attribute


def compose_attribute_probs(attr_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Joint class probabilities from independent attribute heads, in mixed-radix order.

    The first attribute is the most significant digit: for radices (3, 2, 3)
    (mask, gender, age) the composite index is ``mask*6 + gender*3 + age``,
    which is `composite_index` / ``np.ravel_multi_index``.
    """
    if len(attr_probs) == 0:
        raise PodiumError("compose_attribute_probs needs at least one attribute probability array")
    arrays = [np.asarray(p, dtype=np.float64) for p in attr_probs]
    n_rows = arrays[0].shape[0]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] != n_rows:
            raise PodiumError(
                f"attribute {i + 1} probabilities have shape {a.shape}; expected ({n_rows}, K) like attribute 1"
            )
    joint = joint_from_marginals(arrays)
    total = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, total, out=np.full_like(joint, 1.0 / joint.shape[1]), where=total > 0)


def composite_index(attr_indices: Sequence[Sequence[int]], radices: Sequence[int]) -> np.ndarray:
    """Composite class index of per-attribute indices (first attribute most significant)."""
    return encode_digits(attr_indices, radices)


def split_composite_index(index: Sequence[int], radices: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Inverse of `composite_index`: per-attribute indices of composite classes."""
    return decode_digits(index, radices)


def vote_per_attribute(
    members_attr_probs: Sequence[Sequence[np.ndarray]],
    voter: Voter | str = "soft",
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Vote each attribute across members, then compose the joint probabilities.

    Voting per attribute keeps every head's evidence: voting on composite
    classes lets one wrong attribute flip an otherwise agreed prediction.
    ``members_attr_probs[m][a]`` is member m's (N, K_a) array for attribute a.
    """
    if len(members_attr_probs) == 0:
        raise PodiumError("vote_per_attribute needs at least one member")
    vote = create_voter(voter) if isinstance(voter, str) else voter
    n_attrs = len(members_attr_probs[0])
    for i, member in enumerate(members_attr_probs, start=1):
        if len(member) != n_attrs:
            raise PodiumError(f"member {i} has {len(member)} attribute heads but member 1 has {n_attrs}")
    voted = [vote([m[a] for m in members_attr_probs], weights) for a in range(n_attrs)]
    return compose_attribute_probs(voted)


# ---------------------------------------------------------------- prediction tables


def align_members(
    frames: Sequence[pd.DataFrame],
    names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Probability arrays of prediction tables, rows in the first member's ``id`` order.

    Refuses tables whose id sets or class columns differ (naming the member
    and showing what differs) because averaging misaligned rows or columns
    produces a confident, wrong submission. Only the row order (and the column
    order, since columns are identified by class name) is repaired. ``classes``
    fixes the class order; by default it is member 1's column order.
    """
    if len(frames) == 0:
        raise PodiumError("align_members needs at least one prediction table")
    labels = list(names) if names is not None else [f"member {i + 1}" for i in range(len(frames))]
    if len(labels) != len(frames):
        raise PodiumError(f"got {len(labels)} member names for {len(frames)} prediction tables")
    for label, frame in zip(labels, frames):
        _check_table(frame, label)
    ref_ids = frames[0]["id"].astype(str)
    ref_classes = list(classes) if classes is not None else probability_columns(frames[0])
    arrays = []
    for label, frame in zip(labels, frames):
        _check_same_classes(frame, label, ref_classes, labels[0])
        ids = frame["id"].astype(str)
        _check_same_ids(ids, label, ref_ids, labels[0])
        ordered = frame.assign(id=ids).set_index("id").loc[ref_ids.to_numpy(), ref_classes]
        values = ordered.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise PodiumError(f"{label} has NaN or infinite probabilities; re-run predict for that member")
        arrays.append(values)
    return arrays


def _check_table(frame: pd.DataFrame, label: str) -> None:
    if "id" not in frame.columns:
        raise PodiumError(f"{label} has no 'id' column; columns are {summarize_list(list(frame.columns))}")
    dup = frame["id"].astype(str)
    dup = dup[dup.duplicated()].unique().tolist()
    if dup:
        raise PodiumError(f"{label} has duplicate ids: {summarize_list(dup)}; each image must appear once")


def _check_same_classes(frame: pd.DataFrame, label: str, ref: list[str], ref_label: str) -> None:
    have = probability_columns(frame)
    missing = [c for c in ref if c not in have]
    extra = [c for c in have if c not in ref]
    if missing or extra:
        raise PodiumError(
            f"{label} class columns differ from {ref_label}: "
            f"missing {summarize_list(missing) or 'none'}, extra {summarize_list(extra) or 'none'}; "
            f"expected classes {summarize_list(ref, first=10)}. Members must be trained on the same class map"
        )


def _check_same_ids(ids: pd.Series, label: str, ref_ids: pd.Series, ref_label: str) -> None:
    have, want = set(ids), set(ref_ids)
    if have == want:
        return
    missing = [i for i in ref_ids if i not in have]
    extra = [i for i in ids if i not in want]
    raise PodiumError(
        f"{label} covers different images than {ref_label}: {len(missing)} ids missing "
        f"({summarize_list(missing) or 'none'}), {len(extra)} extra ({summarize_list(extra) or 'none'}). "
        "Predict every member on the same image folder or fold split"
    )


# ---------------------------------------------------------------- report


def member_score_table(
    probs_list: Sequence[np.ndarray],
    y_true: Sequence[int],
    n_classes: int,
    names: Sequence[str] | None = None,
    ensembles: dict[str, np.ndarray] | None = None,
    weights: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Each member's out-of-fold macro F1, accuracy and log loss next to the ensembles'.

    An ensemble that does not beat its best member is not worth submitting;
    this table makes that visible.
    """
    members = _as_members(probs_list)
    y = check_labels(y_true, members.shape[1], n_classes)
    labels = list(names) if names is not None else [f"member_{i + 1}" for i in range(len(members))]
    if len(labels) != len(members):
        raise PodiumError(f"got {len(labels)} member names for {len(members)} members")
    w = _as_weights(weights, len(members)) if weights is not None else [np.nan] * len(members)
    rows = [_score_row(name, "member", p, y, n_classes, wt) for name, p, wt in zip(labels, members, w)]
    for name, p in (ensembles or {}).items():
        rows.append(_score_row(name, "ensemble", np.asarray(p, dtype=np.float64), y, n_classes, np.nan))
    return pd.DataFrame(rows, columns=["name", "kind", "macro_f1", "accuracy", "log_loss", "weight"])


def _score_row(name: str, kind: str, p: np.ndarray, y: np.ndarray, n_classes: int, weight: float) -> dict:
    pred = p.argmax(axis=1)
    return {
        "name": name,
        "kind": kind,
        "macro_f1": macro_f1(y, pred, n_classes),
        "accuracy": float((pred == y).mean()),
        "log_loss": _log_loss(p, y),
        "weight": float(weight),
    }
