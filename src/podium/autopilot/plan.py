"""Planning `podium auto` from measured epoch times.

The plan is a pure function of the measured cost of each candidate and the
budget (`make_plan`), so tests drive it with made-up measurements and a fake
clock; `measure_candidates` measures the real costs on this machine.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from podium.errors import PodiumError

#: share of the budget the plan fills; the rest absorbs measurement error (the run must end within 10%)
PLAN_SHARE = 0.85
#: seconds a fold costs besides its epochs (Lightning setup, checkpoints, its validation predictions)
FOLD_OVERHEAD_S = 6.0
#: seconds a member costs after its folds (gather, OOF TTA, test predictions), and the final steps
MEMBER_OVERHEAD_S = 6.0
FINAL_OVERHEAD_S = 10.0
#: the views TTA adds to the plain image; kept only where the held-out gain is positive
TTA_VIEWS = ["hflip"]
#: a fold model may train on at most this much less of the data than the single default run (80%
#: with data.val_fraction=0.2): 4 folds (75%) are near enough, 3 (67%) and 2 (50%) are not. A fold
#: model on half the data lost to the single run (benchmarks/auto/RESULTS.md: 0.558 vs 0.622)
SHARE_SLACK = 0.05


#: What the plan does not tune, and the measurement behind it (benchmarks/auto/tuning.py, RESULTS.md:
#: faces_mask3_dev reduced pool, mobilenet_v2 at 64 px, CPU), printed with every plan and kept in auto.json
TUNING_NOTES = (
    "learning rate: the config's train.lr. Lightning's lr_find is not run: on faces_mask3 its 100 steps cost "
    "about 11 epochs of the pool (1203 s on the shared CPU, more than an 18m budget's training) and it suggested "
    "1.0e-05 (its steepest-slope rule caught the start of the curve), while the loss curve's valley (lowest at "
    "0.024) lies around the default 0.01, and trained at the suggestion seed 0 scored 0.277 against 0.622; "
    "`podium lr-find CONFIG` draws the curve to judge by eye",
    "layer decay: off (train.layer_decay=null). At 0.9 (AutoGluon's default), paired with the default over seeds "
    "0-3 on faces_mask3 (3 epochs), test macro F1 0.592 vs 0.604 (3 of 4 seeds lower, validation lower on all 4): "
    "it did not pay; set train.layer_decay in the overrides to use it anyway",
)


@dataclass(frozen=True)
class Preset:
    """What a preset may choose: fold counts and member counts in order of preference, the epochs
    a member needs to be worth training (``min_epochs``) and the most it gets, candidate sizes, and
    how many members one candidate may give (``seeds``: repeats with another seed fill time that no
    other candidate fits in; diminishing returns beyond a few, so a preset caps them)."""
    name: str
    shapes: tuple[tuple[int, int], ...]  # (folds, members), most wanted first
    min_epochs: int
    max_epochs: int
    sizes: tuple[int, ...]
    backbones: tuple[str, ...]
    seeds: int = 1


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", ((5, 1), (4, 1)), 3, 12, (64,), ("tv/mobilenet_v2", "mobilenetv3_small_100", "resnet18")),
    "medium": Preset("medium", ((5, 2), (5, 1), (4, 1)), 5, 20, (64, 96),
                     ("tv/mobilenet_v2", "resnet18", "mobilenetv3_large_100"), seeds=2),
    "best": Preset("best", ((5, 3), (5, 2), (5, 1), (4, 1)), 8, 30, (96, 64, 128),
                   ("tv/mobilenet_v2", "resnet18", "mobilenetv3_large_100", "efficientnet_b0"), seeds=3),
}


@dataclass(frozen=True)
class Candidate:
    """One backbone at one image size with its measured cost on the whole training set:
    ``train_s`` one training epoch over every image, ``val_s`` one prediction pass. As a plan's
    member, ``seed_offset`` > 0 makes a repeat of a candidate already in the plan: the same
    backbone and size trained with ``train.seed`` + the offset (AutoGluon's repeated bagging:
    the time left when no other candidate fits buys another model, not idle minutes)."""
    model: str
    size: int
    train_s: float
    val_s: float
    pretrained_path: str | None = None
    seed_offset: int = 0

    def fold_epoch_s(self, folds: int) -> float:
        """One epoch of one fold: (k-1)/k of the images trained, 1/k validated."""
        return self.train_s * (folds - 1) / folds + self.val_s / folds


@dataclass
class Plan:
    """The chosen folds, members (candidates) and epochs, with the arithmetic that chose them.

    ``mode`` "cv": every member trains ``folds`` fold models (ensembled on the test set).
    ``mode`` "holdout": one run of one member on fold 0's training part ((k-1)/k of the images,
    the single default run's share), its validation part measures TTA and biases; ``epochs`` is
    the measured estimate and ``epochs_upper`` the most it may train when the run's own epochs
    (timed by train.max_time) turn out faster. ``refit``: after the holdout run, one more run on
    every image for the epochs the holdout trained (AutoGluon's refit_full) is the final model.
    ``single_epochs``: what the single default run (`podium train`, its configured epochs) would
    get in the same time, the bar a cv plan (or a holdout + refit plan) clears.
    """
    preset: str
    budget_s: float
    folds: int
    epochs: int
    members: list[Candidate]
    planned_s: float
    why: str
    candidates: list[Candidate] = field(default_factory=list)
    mode: str = "cv"
    epochs_upper: int = 0
    single_epochs: int = 0
    test_ratio: float = 0.0
    refit: bool = False
    stages: list[str] = field(default_factory=list)
    default_epochs: int = 10
    notes: list[str] = field(default_factory=lambda: list(TUNING_NOTES))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["members"] = [Candidate(**m) for m in d["members"]]
        d["candidates"] = [Candidate(**m) for m in d.get("candidates", [])]
        return cls(**d)

    @property
    def trained_folds(self) -> list[int]:
        """The folds each member trains: all of them, or fold 0 alone for a holdout run."""
        return [0] if self.mode == "holdout" else list(range(self.folds))

    def describe(self) -> str:
        budget = f"{self.planned_s / 60:.1f} min planned of {self.budget_s / 60:.1f}"
        if self.mode == "holdout":
            m = self.members[0]
            share = (self.folds - 1) / self.folds
            upper = f" (up to {self.epochs_upper} if its epochs run faster)" if self.epochs_upper > self.epochs else ""
            refit = ", then refit on all the images for the epochs it trained" if self.refit else ""
            return (f"1 run of {m.model}@{m.size} on {share:.0%} of the images ({1 - share:.0%} held out to measure "
                    f"TTA and biases), {self.epochs} epochs{upper}{refit}: {budget}")
        sizes = sorted({m.size for m in self.members})
        names = ", ".join(f"{m.model}@{m.size}" + (f" seed+{m.seed_offset}" if m.seed_offset else "")
                          for m in self.members)
        upper = f" (up to {self.epochs_upper} if they run faster)" if self.epochs_upper > self.epochs else ""
        return (f"{self.folds} folds x {len(self.members)} member(s) at {'/'.join(map(str, sizes))} px, "
                f"{self.epochs} epochs{upper}: {budget} ({names})")

    def bar(self, preset: Preset) -> int:
        """The epochs a fold model must reach to be worth training (as in `make_plan`)."""
        return max(self.single_epochs, preset.min_epochs, 1)

    def single_now(self) -> int:
        """What the single default run would get in the whole budget at the plan's (rescaled) costs."""
        fit = _epochs_fit(self.budget_s * PLAN_SHARE, self.members[:1], self.folds, True, self.test_ratio)
        return max(min(self.default_epochs, fit), 1)


def extras_s(m: Candidate, folds: int, holdout: bool, test_ratio: float) -> float:
    """Prediction passes after training: TTA on the held-out images (plain + views) and the test
    images (every fold model of a cv member, or the one holdout run, with TTA)."""
    passes = 1 + len(TTA_VIEWS)
    if holdout:
        return m.val_s / folds * passes + m.val_s * test_ratio * passes
    return m.val_s * passes + m.val_s * test_ratio * folds * passes


def refit_epoch_s(m: Candidate, folds: int) -> float:
    """One epoch of the refit run: every image trained, fold 0 validated (nominally)."""
    return m.train_s + m.val_s / folds


def cost(members: Sequence[Candidate], folds: int, epochs: int, *, holdout: bool = False,
         test_ratio: float = 0.0, refit: bool = False) -> float:
    """Planned seconds of training ``members`` with ``folds`` folds (only fold 0 for a ``holdout``
    run, plus a run on every image with ``refit``) for ``epochs`` each, plus their predictions
    (``test_ratio``: test images per training image)."""
    trained = 1 if holdout else folds
    return (sum(trained * (epochs * m.fold_epoch_s(folds) + FOLD_OVERHEAD_S) + MEMBER_OVERHEAD_S
                + (epochs * refit_epoch_s(m, folds) + FOLD_OVERHEAD_S if refit else 0.0)
                + extras_s(m, folds, holdout, test_ratio) for m in members) + FINAL_OVERHEAD_S)


def diverse_order(candidates: Sequence[Candidate], preset: Preset) -> list[Candidate]:
    """Candidates in the order members are taken: one per backbone first (the preset's backbone
    order, then its size order), then the other sizes, so two members differ where they can."""
    def size_rank(c: Candidate) -> int:
        return preset.sizes.index(c.size) if c.size in preset.sizes else len(preset.sizes)

    def model_rank(c: Candidate) -> int:
        return preset.backbones.index(c.model) if c.model in preset.backbones else -1  # the user's own first

    ordered = sorted(candidates, key=lambda c: (size_rank(c), model_rank(c)))
    first: list[Candidate] = []
    rest: list[Candidate] = []
    seen: set[str] = set()
    for c in ordered:
        (rest if c.model in seen else first).append(c)
        seen.add(c.model)
    return first + rest


def holdout_folds(val_fraction: float) -> int:
    """The fold count whose fold 0 is the single default run's validation share (5 for 0.2)."""
    return max(2, round(1 / val_fraction))


def single_candidate(candidates: Sequence[Candidate], preset: Preset, default: tuple[str, int] | None) -> Candidate:
    """The candidate the single default run trains: the config's model at the config's size when
    measured, else the first member the preset would take."""
    for c in candidates:
        if default is not None and (c.model, c.size) == tuple(default):
            return c
    return diverse_order(candidates, preset)[0]


def minimum_s(candidates: Sequence[Candidate], val_fraction: float = 0.2, test_ratio: float = 0.0) -> float:
    """The least a budget must be: one holdout run of the cheapest candidate for one epoch."""
    k = holdout_folds(val_fraction)
    return min(cost([c], k, 1, holdout=True, test_ratio=test_ratio) for c in candidates)


def _epochs_fit(usable: float, members: Sequence[Candidate], folds: int, holdout: bool, test_ratio: float,
                refit: bool = False) -> int:
    fixed = cost(members, folds, 0, holdout=holdout, test_ratio=test_ratio, refit=refit)
    per_epoch = sum((1 if holdout else folds) * m.fold_epoch_s(folds) + (refit_epoch_s(m, folds) if refit else 0.0)
                    for m in members)
    return int((usable - fixed) // per_epoch) if usable > fixed and per_epoch > 0 else 0


def make_plan(candidates: Sequence[Candidate], budget_s: float, preset: str | Preset, *, spent_s: float = 0.0,
              default_epochs: int = 10, val_fraction: float = 0.2, default: tuple[str, int] | None = None,
              test_ratio: float = 0.0) -> Plan:
    """The plan that is never worse than the single default run in the same time, and better where
    the budget allows.

    The single default run (`podium train`: ``default`` model at its size, ``default_epochs``,
    ``val_fraction`` held out) would get ``single_epochs = min(default_epochs, what fits)`` here.
    A cv plan (the preset's (folds, members) shapes, most wanted first, filling `PLAN_SHARE` of the
    budget) is taken only when each fold model trains on near the single run's share of the images
    (`SHARE_SLACK`) for at least ``max(single_epochs, preset.min_epochs)`` epochs: only then does the
    fold ensemble add to what one run would reach, instead of trading epochs and data for averaging.
    Otherwise the budget buys about one run, and auto does that run (a holdout: fold 0 of the
    single run's fold count) with as many epochs as fit, plus the cheap steps measured on its
    held-out part (TTA, biases), and a refit on every image where two runs fit. Refuses (naming
    the measured minimum) a budget too small for one epoch of that run. ``spent_s`` (the
    measuring) is already gone from the budget.
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if not candidates:
        raise PodiumError("podium auto: no candidate backbone to plan with")
    ctx = _Context(p, budget_s, spent_s, max(budget_s - spent_s, 0.0) * PLAN_SHARE, holdout_folds(val_fraction),
                   single_candidate(candidates, p, default), test_ratio, list(candidates), default_epochs)
    fit_single = min(p.max_epochs, _epochs_fit(ctx.usable, [ctx.single], ctx.k_hold, True, test_ratio))
    if fit_single < 1:
        raise _too_small(ctx, val_fraction)
    ctx.single_epochs = min(default_epochs, fit_single)
    return _cv_plan(ctx) or _refit_plan(ctx) or _holdout_plan(ctx, fit_single)


@dataclass
class _Context:
    """What every kind of plan is measured against: the budget left, the single default run."""
    preset: Preset
    budget_s: float
    spent_s: float
    usable: float
    k_hold: int
    single: Candidate
    test_ratio: float
    candidates: list[Candidate]
    default_epochs: int
    single_epochs: int = 0
    refit_epochs: int = 0
    tried: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return (self.k_hold - 1) / self.k_hold

    @property
    def bar(self) -> int:
        """The epochs a fold model (or a refit) must reach to beat what one run gets in the same time."""
        return max(self.single_epochs, self.preset.min_epochs)

    def plan(self, folds: int, epochs: int, members: list[Candidate], why: str, **kw) -> Plan:
        holdout = kw.get("mode") == "holdout"
        planned = self.spent_s + cost(members, folds, epochs, holdout=holdout, test_ratio=self.test_ratio,
                                      refit=kw.get("refit", False))
        return Plan(self.preset.name, self.budget_s, folds, epochs, members, planned, why, self.candidates,
                    single_epochs=self.single_epochs, test_ratio=self.test_ratio, default_epochs=self.default_epochs,
                    epochs_upper=self.preset.max_epochs, **kw)


def _too_small(ctx: _Context, val_fraction: float) -> PodiumError:
    floor = minimum_s([ctx.single], val_fraction, ctx.test_ratio)
    need = ctx.spent_s + floor / PLAN_SHARE
    return PodiumError(f"a budget of {ctx.budget_s:.0f}s is too small: measuring the candidates took {ctx.spent_s:.0f}s "
                       f"and the cheapest plan measured on this machine (one run of 1 epoch of {ctx.single.model}@"
                       f"{ctx.single.size} on {ctx.share:.0%} of the images, its predictions included) needs "
                       f"{floor / PLAN_SHARE:.0f}s more with the safety share: {need:.0f}s in all; give --time "
                       f"{math.ceil(need / 60)}m or more (or fewer --models/--sizes to measure)")


def _cv_plan(ctx: _Context) -> Plan | None:
    """The first of the preset's (folds, members) shapes whose fold models reach the bar, if any."""
    p = ctx.preset
    order = diverse_order(ctx.candidates, p)
    for folds, n in p.shapes:
        if n > len(order):
            continue
        if (folds - 1) / folds < ctx.share - SHARE_SLACK - 1e-9:
            ctx.tried.append(f"{folds}x{n}: fold models on {(folds - 1) / folds:.0%} < {ctx.share:.0%} of the images")
            continue
        members = order[:n]
        epochs = min(p.max_epochs, _epochs_fit(ctx.usable, members, folds, False, ctx.test_ratio))
        ctx.tried.append(f"{folds}x{n}: {epochs} epochs")
        if epochs >= ctx.bar:
            why = (f"preset {p.name}: the first shape (folds x members) whose fold models reach {ctx.bar} epochs (the "
                   f"single default run would get {ctx.single_epochs} in this time; the preset wants {p.min_epochs}) "
                   f"in {PLAN_SHARE:.0%} of the budget ({'; '.join(ctx.tried)}); one epoch of one fold measured "
                   + ", ".join(f"{m.model}@{m.size}={m.fold_epoch_s(folds):.1f}s" for m in members))
            plan = ctx.plan(folds, epochs, list(members), why)
            plan.why += _cap_note(ctx, plan)
            return plan
    return None


def _cap_note(ctx: _Context, plan: Plan) -> str:
    """Why a plan leaves much of a large budget unplanned: the preset's epoch cap binds, not the time
    (a user who sees "9.6 min planned of 60" should know where the rest goes and what buys more)."""
    p = ctx.preset
    left = ctx.budget_s - plan.planned_s
    if plan.epochs < p.max_epochs or left < 0.5 * ctx.budget_s:
        return ""
    seeds = f", then the first again with another seed, up to {p.seeds} seeds" if p.seeds > 1 else ""
    more = "" if p.name == "best" else f"; --preset best trains up to {PRESETS['best'].max_epochs} epochs with more members"
    return (f". The preset caps fold models at {p.max_epochs} epochs, so {left / 60:.1f} min are not planned yet: "
            f"later stages add members as they fit in the time then left (the next candidate{seeds}){more}")


def _shapes_note(ctx: _Context) -> str:
    return f"the single default run would get {ctx.single_epochs} in this time; " + (
        "; ".join(ctx.tried) or "no shape fits the candidates")


def _refit_plan(ctx: _Context) -> Plan | None:
    """One holdout run and a refit on every image, both reaching the bar (AutoGluon's refit_full)."""
    p, c, k = ctx.preset, ctx.single, ctx.k_hold
    epochs = min(p.max_epochs, _epochs_fit(ctx.usable, [c], k, True, ctx.test_ratio, refit=True))
    ctx.refit_epochs = epochs  # named by the holdout plan's why
    if epochs < ctx.bar:
        return None
    why = (f"preset {p.name}: no shape's fold models reach {ctx.bar} epochs ({_shapes_note(ctx)}), but one run on "
           f"{ctx.share:.0%} of the images and a refit on all of them both get {epochs} (AutoGluon's refit_full): the "
           f"held-out {1 - ctx.share:.0%} measures TTA and biases and how long the refit trains (one epoch measured "
           f"{c.fold_epoch_s(k):.1f}s + refit {refit_epoch_s(c, k):.1f}s)")
    return ctx.plan(k, epochs, [c], why, mode="holdout", refit=True)


def _holdout_plan(ctx: _Context, fit_single: int) -> Plan:
    """The one run the budget buys, with as many epochs as fit."""
    c, k = ctx.single, ctx.k_hold
    why = (f"preset {ctx.preset.name}: the budget buys about one run: no shape's fold models reach {ctx.bar} epochs "
           f"({_shapes_note(ctx)}), nor a holdout + refit on all the images "
           f"({ctx.refit_epochs} epochs each), so auto trains that run on {ctx.share:.0%} of the images "
           f"for {fit_single} epochs (one measured: {c.fold_epoch_s(k):.1f}s) and keeps TTA and biases only where the "
           f"held-out {1 - ctx.share:.0%} says they pay")
    return ctx.plan(k, fit_single, [c], why, mode="holdout")


# ---------------------------------------------------------------- later stages: re-planned on the time spent


def speed_ratio(epoch_times: Sequence[float], planned_epoch_s: float) -> float | None:
    """How much slower (>1) or faster (<1) the epochs actually ran than planned: the median of
    the measured epochs (the first one pays for start-up) over the planned epoch."""
    times = sorted(float(t) for t in epoch_times if t and t > 0)
    if not times or planned_epoch_s <= 0:
        return None
    return times[len(times) // 2] / planned_epoch_s


def rescaled(c: Candidate, ratio: float) -> Candidate:
    """``c`` with its costs as this machine runs them now (``ratio`` from `speed_ratio`)."""
    return replace(c, train_s=c.train_s * ratio, val_s=c.val_s * ratio)


def grow_plan(plan: Plan, preset: Preset, *, spent_s: float, ratio: float, epochs_done: int) -> Plan | None:
    """The next stage the time actually left buys, once the plan's training is done; None if none.

    The first plan is made from a short measurement; the runs then show what an epoch really
    costs (``ratio``: measured over planned, from `speed_ratio`) and ``spent_s`` what is left. A
    cached step time measured under another load planned 11 epochs where 20 ran in 9% of the
    budget (benchmarks/auto/RESULTS.md), and a loaded machine can go idle mid-run. So every
    candidate's cost is rescaled by ``ratio`` and, within `PLAN_SHARE` of the time left with
    the steps still ahead (predictions, the refit) counted:

    - a holdout run becomes fold 0 of a cv member: the other folds train for up to the
      ``epochs_done`` it trained, at least what the single default run would get at the speed
      measured now (`Plan.single_now`), and the member is a fold ensemble with
      out-of-fold predictions on every image (a planned refit is then not needed);
    - else a holdout run without a refit gets one (for the epochs it trained);
    - a cv plan gets one more member, the next candidate in the preset's diverse order.
    """
    left = max(plan.budget_s - spent_s, 0.0) * PLAN_SHARE
    now = replace(plan, members=[rescaled(m, ratio) for m in plan.members],
                  candidates=[rescaled(c, ratio) for c in plan.candidates])
    now.single_epochs = now.single_now()  # the bar, as the machine runs now: a fast machine raises it
    done = f"{spent_s:.0f}s of {plan.budget_s:.0f}s spent, epochs ran x{ratio:.2f} the planned time"
    if plan.mode == "holdout":
        return _grow_holdout(now, preset, spent_s, left, epochs_done, done)
    return _grow_cv(now, preset, spent_s, left, done)


def _grow_holdout(plan: Plan, preset: Preset, spent_s: float, left: float, epochs_done: int, done: str) -> Plan | None:
    """The holdout's other folds if they fit for the plan's bar, else a refit if it fits."""
    c, k, tr = plan.members[0], plan.folds, plan.test_ratio
    stage = f"stage {len(plan.stages) + 2}: {done}"
    fixed = (k - 1) * FOLD_OVERHEAD_S + extras_s(c, k, False, tr) + MEMBER_OVERHEAD_S + FINAL_OVERHEAD_S
    per_epoch = (k - 1) * c.fold_epoch_s(k)
    epochs = min(epochs_done, int((left - fixed) // per_epoch)) if left > fixed and per_epoch > 0 else 0
    if epochs >= plan.bar(preset):
        why = (f"{stage}: the other {k - 1} folds of {c.model}@{c.size} for {epochs} epochs fit (the holdout "
               f"trained {epochs_done}; at this speed the single default run would get {plan.single_epochs}): a "
               f"{k}-fold ensemble instead of one run")
        return replace(plan, mode="cv", epochs=epochs, epochs_upper=0, refit=False,
                       planned_s=spent_s + fixed + epochs * per_epoch, stages=[*plan.stages, why])
    need = (epochs_done * refit_epoch_s(c, k) + FOLD_OVERHEAD_S + extras_s(c, k, True, tr) + MEMBER_OVERHEAD_S
            + FINAL_OVERHEAD_S)
    if plan.refit or epochs_done < 1 or need > left:
        return None
    why = f"{stage}: a refit on every image for the {epochs_done} epochs the holdout trained fits ({need:.0f}s)"
    return replace(plan, refit=True, planned_s=spent_s + need, stages=[*plan.stages, why])


def _grow_cv(plan: Plan, preset: Preset, spent_s: float, left: float, done: str) -> Plan | None:
    """One more member if its fold models reach the plan's bar in the time left: the next candidate
    in the preset's diverse order that does, else a repeat of the plan's first member with another
    seed. Its folds then share that time under train.max_time, up to the plan's upper epochs."""
    k, tr = plan.folds, plan.test_ratio
    pending = sum(MEMBER_OVERHEAD_S + extras_s(m, k, False, tr) for m in plan.members)
    for nxt in _next_members(plan, preset):
        per_epoch = k * nxt.fold_epoch_s(k)
        fixed = pending + cost([nxt], k, 0, test_ratio=tr)
        epochs = min(max(plan.epochs, plan.epochs_upper), int((left - fixed) // per_epoch)) if left > fixed else 0
        if epochs >= plan.bar(preset):
            what = f"{nxt.model}@{nxt.size}" + (f" again with seed +{nxt.seed_offset}" if nxt.seed_offset else "")
            why = (f"stage {len(plan.stages) + 2}: {done}: one more member, {what}, {k} folds x about {epochs} "
                   f"epochs fits ({fixed + epochs * per_epoch:.0f}s with the predictions still ahead)")
            return replace(plan, members=[*plan.members, nxt], planned_s=spent_s + fixed + epochs * per_epoch,
                           stages=[*plan.stages, why])
    return None


def _next_members(plan: Plan, preset: Preset) -> list[Candidate]:
    """What one more member could be, most wanted first: the candidates not in the plan (diverse
    order), then the first member again with the next seed offset, while the preset's ``seeds``
    allow it."""
    used = {(m.model, m.size) for m in plan.members}
    fresh = [c for c in diverse_order(plan.candidates, preset) if (c.model, c.size) not in used]
    first = plan.members[0]
    repeats = [m for m in plan.members if (m.model, m.size) == (first.model, first.size)]
    if len(repeats) >= preset.seeds:
        return fresh
    return [*fresh, replace(first, seed_offset=max(m.seed_offset for m in repeats) + 1)]


# ---------------------------------------------------------------- measuring on this machine


def weights_for(name: str, cfg) -> tuple[bool, str | None]:
    """Whether ``name``'s pretrained weights are on this machine, and the local file to load.

    The config's own model uses its ``model.pretrained_path``; torchvision models are found
    in torch's hub cache (or beside the config's weights file), timm models in the Hugging
    Face cache. With ``model.pretrained=false`` every backbone is usable (no weights needed).
    """
    if not cfg.model.pretrained:
        return True, None
    if name == cfg.model.name and cfg.model.pretrained_path:
        return True, cfg.model.pretrained_path
    from podium.model.models import TV_PREFIX

    if name.startswith(TV_PREFIX):
        stem = name[len(TV_PREFIX):]
        places = [Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
        if cfg.model.pretrained_path:
            places.insert(0, Path(cfg.model.pretrained_path).expanduser().parent)
        for place in places:
            found = sorted(place.glob(f"{stem}-*.pth")) if place.is_dir() else []
            if found:
                return True, str(found[0])
        return False, None
    hub = Path.home() / ".cache" / "huggingface" / "hub"
    return (hub.is_dir() and any(hub.glob(f"models--timm--{name}*"))), None


def timings_file() -> Path:
    """Where measured step times are kept for the next auto run on this machine: ``auto/timings.json``
    in podium's cache root ($PODIUM_CACHE_DIR or ~/.cache/podium)."""
    from podium.data.cache import cache_root

    return cache_root() / "auto" / "timings.json"


def timing_key(device: str, name: str, size: int, batch: int, n_classes: int, channels_last: bool = True) -> str:
    import os

    layout = "" if channels_last else "|nchw"
    return f"{os.uname().nodename}|{device}|{name}|{size}px|batch{batch}|{n_classes}cls{layout}|v2"


#: a cached step time older than this is measured again (a library upgrade or another load pattern since)
TIMING_MAX_AGE_S = 7 * 24 * 3600.0


class Timings:
    """Step times on this machine: measured, or hinted by `timings_file` and checked by a probe.

    A cached time is only a hint: the load on a shared machine changes the cost of a step many
    times over (benchmarks/auto/RESULTS.md: a step time cached while four sessions shared two
    cores planned 11 epochs of 34 s; on the idle machine they took 2 s, and the 18m cells ended
    after 98 s of 1080 s). So the first candidate asked for (the single default run's) is always
    timed afresh, the probe; every cached time is then scaled by the probe's ratio to its own
    cached time (``load``: the machine's speed now against when the cache was written), and
    entries older than `TIMING_MAX_AGE_S` are measured again. Only the other candidates are
    saved the measuring, which on a small budget was a large part of it (78 s of 6 minutes).
    ``timer`` replaces `_time_steps` and ``now`` the wall clock of the entries' age (tests).
    """

    def __init__(self, cache: Path | None | bool = True, *, steps: int = 3, clock: Callable[[], float] = time.perf_counter,
                 timer: Callable | None = None, now: Callable[[], float] = time.time, log: Callable = print):
        self.path = timings_file() if cache is True else (Path(cache) if cache else None)
        self.steps, self.clock, self.timer, self.now, self.log = steps, clock, timer or _time_steps, now, log
        self.known = self._read()
        self.load: float | None = None  # probe time / cached time, once the probe ran against a cached entry
        self.probed = False
        self.channels_last = True  # the run's memory layout (`train.channels_last`), set by `measure`

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        import json

        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # an unreadable cache is measured again, not an error
        return known if isinstance(known, dict) else {}

    def _fresh(self, key: str) -> dict | None:
        entry = self.known.get(key)
        if not isinstance(entry, dict) or "step_s" not in entry:
            return None
        age = self.now() - float(entry.get("t", 0.0))
        return entry if age <= TIMING_MAX_AGE_S else None

    def step_times(self, key: str, name: str, size: int, batch: int, n_classes: int,
                   device: str) -> tuple[float, float, str]:
        """(step seconds, prediction-batch seconds, how they were found) for one candidate."""
        hint = self._fresh(key)
        if hint is not None and self.load is not None:  # calibrated by the probe: used, scaled
            note = f" (cached {hint.get('at', '?')}, x{self.load:.2f} for the load now)"
            return float(hint["step_s"]) * self.load, float(hint["fwd_s"]) * self.load, note
        step_s, fwd_s = self.timer(name, size, batch, n_classes, device, self.steps, self.clock, self.channels_last)
        note = ""
        if not self.probed:
            self.probed = True
            if hint is not None and float(hint["step_s"]) > 0:
                self.load = step_s / float(hint["step_s"])
                note = f" (probe: x{self.load:.2f} the cached {hint.get('at', '?')} time; cached times scaled by it)"
        self._save(key, step_s, fwd_s)
        return step_s, fwd_s, note

    def _save(self, key: str, step_s: float, fwd_s: float) -> None:
        if self.path is None:
            return
        import os

        from podium.fileio import write_json

        self.known[key] = {"step_s": step_s, "fwd_s": fwd_s, "t": self.now(), "load_avg": round(os.getloadavg()[0], 2),
                           "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.now()))}
        write_json(self.path, self.known)

    def measure(self, cfg, names: Sequence[str], sizes: Sequence[int], n_images: int, n_classes: int) -> list[Candidate]:
        """Time a short slice of training (``steps`` optimizer steps after a warm-up step, on
        batches of ``train.batch_size`` at each size) and of prediction for every candidate on
        this machine's training device, and scale both to the whole training set; image decoding
        is timed on real files separately by the caller and added to ``train_s``/``val_s``."""
        import torch

        device = "cuda" if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda") else "cpu"
        batch, self.channels_last = cfg.train.batch_size, bool(cfg.train.channels_last)
        out = []
        for name in names:
            ok, weights = weights_for(name, cfg)
            if not ok:
                self.log(f"  {name}: no local weights (model.pretrained_path, torch hub or Hugging Face cache): skipped")
                continue
            for size in sizes:
                key = timing_key(device, name, int(size), batch, n_classes, self.channels_last)
                step_s, fwd_s, note = self.step_times(key, name, int(size), batch, n_classes, device)
                batches = math.ceil(n_images / batch)
                out.append(Candidate(name, int(size), batches * step_s, batches * fwd_s, weights))
                self.log(f"  {name}@{size}: {step_s * 1000:.0f} ms/step -> {batches * step_s:.1f}s per epoch of "
                         f"{n_images} images{note}")
        return out


def measure_candidates(cfg, names: Sequence[str], sizes: Sequence[int], n_images: int, n_classes: int, *,
                       steps: int = 3, clock: Callable[[], float] = time.perf_counter, log: Callable = print,
                       timer: Callable | None = None, cache: Path | None | bool = True,
                       now: Callable[[], float] = time.time) -> list[Candidate]:
    """Every candidate's cost on this machine, in one `Timings` session (the first is the probe)."""
    return Timings(cache, steps=steps, clock=clock, timer=timer, now=now, log=log).measure(
        cfg, names, sizes, n_images, n_classes)


def _time_steps(name: str, size: int, batch: int, n_classes: int, device: str, steps: int,
                clock: Callable[[], float], channels_last: bool = True) -> tuple[float, float]:
    """Seconds of one training step (the median of ``steps``) and of one prediction batch, after a
    warm-up of each, in the run's memory layout. The first probe timed the default layout while
    runs train channels-last (`train.channels_last`, 1.7x faster steps on this CPU): on an idle
    machine it planned epochs 1.5-2.5x longer than they took, and 20m plans were holdout runs
    where a fold ensemble fitted (benchmarks/auto/RESULTS.md)."""
    import statistics

    import torch

    from podium.model.models import create_model

    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, n_classes, pretrained=False).to(device).to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, n_classes, (batch,), device=device)

    def step() -> float:
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        _sync(device)
        return clock() - t0

    model.train()
    step()
    step_s = statistics.median(step() for _ in range(steps))
    model.eval()
    with torch.no_grad():
        model(x)
        _sync(device)
        t0 = clock()
        model(x)
        _sync(device)
        fwd_s = clock() - t0
    return step_s, fwd_s


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def decode_seconds(paths: Sequence[str], size: int, clock: Callable[[], float] = time.perf_counter,
                   sample: int = 16) -> float:
    """Seconds to read and resize one image (the mean of ``sample`` real files)."""
    from PIL import Image

    chosen = list(paths)[:sample]
    if not chosen:
        return 0.0
    t0 = clock()
    for p in chosen:
        with Image.open(p) as im:
            im.convert("RGB").resize((size, size))
    return (clock() - t0) / len(chosen)
