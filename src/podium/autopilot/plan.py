"""Planning `podium auto` from measured epoch times.

The plan is a pure function of the measured cost of each candidate and the
budget (`make_plan`), so tests drive it with made-up measurements and a fake
clock; `measure_candidates` measures the real costs on this machine.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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


@dataclass(frozen=True)
class Preset:
    """What a preset may choose: fold counts and member counts in order of preference, the epochs
    a member needs to be worth training (``min_epochs``) and the most it gets, candidate sizes."""
    name: str
    shapes: tuple[tuple[int, int], ...]  # (folds, members), most wanted first
    min_epochs: int
    max_epochs: int
    sizes: tuple[int, ...]
    backbones: tuple[str, ...]


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", ((5, 1), (4, 1)), 3, 12, (64,), ("tv/mobilenet_v2", "mobilenetv3_small_100", "resnet18")),
    "medium": Preset("medium", ((5, 2), (5, 1), (4, 1)), 5, 20, (64, 96),
                     ("tv/mobilenet_v2", "resnet18", "mobilenetv3_large_100")),
    "best": Preset("best", ((5, 3), (5, 2), (5, 1), (4, 1)), 8, 30, (96, 64, 128),
                   ("tv/mobilenet_v2", "resnet18", "mobilenetv3_large_100", "efficientnet_b0")),
}


@dataclass(frozen=True)
class Candidate:
    """One backbone at one image size with its measured cost on the whole training set:
    ``train_s`` one training epoch over every image, ``val_s`` one prediction pass."""
    model: str
    size: int
    train_s: float
    val_s: float
    pretrained_path: str | None = None

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
        names = ", ".join(f"{m.model}@{m.size}" for m in self.members)
        return (f"{self.folds} folds x {len(self.members)} member(s) at {'/'.join(map(str, sizes))} px, "
                f"{self.epochs} epochs: {budget} ({names})")


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
    held-out part (TTA, biases). Refuses (naming the measured minimum) a budget too small for one
    epoch of that run. ``spent_s`` (the measuring) is already gone from the budget.
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if not candidates:
        raise PodiumError("podium auto: no candidate backbone to plan with")
    usable = max(budget_s - spent_s, 0.0) * PLAN_SHARE
    k_hold = holdout_folds(val_fraction)
    share = (k_hold - 1) / k_hold
    single = single_candidate(candidates, p, default)
    fit_single = min(p.max_epochs, _epochs_fit(usable, [single], k_hold, True, test_ratio))
    if fit_single < 1:
        floor = minimum_s([single], val_fraction, test_ratio)
        need = spent_s + floor / PLAN_SHARE
        raise PodiumError(f"a budget of {budget_s:.0f}s is too small: measuring the candidates took {spent_s:.0f}s and "
                          f"the cheapest plan measured on this machine (one run of 1 epoch of {single.model}@"
                          f"{single.size} on {share:.0%} of the images, its predictions included) needs "
                          f"{floor / PLAN_SHARE:.0f}s more with the safety share: {need:.0f}s in all; give --time "
                          f"{math.ceil(need / 60)}m or more (or fewer --models/--sizes to measure)")
    single_epochs = min(default_epochs, fit_single)
    bar = max(single_epochs, p.min_epochs)
    order = diverse_order(candidates, p)
    tried = []
    for folds, n in p.shapes:
        if n > len(order):
            continue
        if (folds - 1) / folds < share - SHARE_SLACK - 1e-9:
            tried.append(f"{folds}x{n}: fold models on {(folds - 1) / folds:.0%} < {share:.0%} of the images")
            continue
        members = order[:n]
        epochs = min(p.max_epochs, _epochs_fit(usable, members, folds, False, test_ratio))
        tried.append(f"{folds}x{n}: {epochs} epochs")
        if epochs >= bar:
            why = (f"preset {p.name}: the first shape (folds x members) whose fold models reach {bar} epochs (the "
                   f"single default run would get {single_epochs} in this time; the preset wants {p.min_epochs}) in "
                   f"{PLAN_SHARE:.0%} of the budget ({'; '.join(tried)}); one epoch of one fold measured "
                   + ", ".join(f"{m.model}@{m.size}={m.fold_epoch_s(folds):.1f}s" for m in members))
            return Plan(p.name, budget_s, folds, epochs, list(members),
                        spent_s + cost(members, folds, epochs, test_ratio=test_ratio), why, list(candidates),
                        single_epochs=single_epochs, test_ratio=test_ratio)
    shapes = f"the single default run would get {single_epochs} in this time; " + (
        "; ".join(tried) or "no shape fits the candidates")
    refit_epochs = min(p.max_epochs, _epochs_fit(usable, [single], k_hold, True, test_ratio, refit=True))
    if refit_epochs >= bar:
        why = (f"preset {p.name}: no shape's fold models reach {bar} epochs ({shapes}), but one run on {share:.0%} "
               f"of the images and a refit on all of them both get {refit_epochs} (AutoGluon's refit_full): the "
               f"held-out {1 - share:.0%} measures TTA and biases and how long the refit trains (one epoch measured "
               f"{single.fold_epoch_s(k_hold):.1f}s + refit {refit_epoch_s(single, k_hold):.1f}s)")
        return Plan(p.name, budget_s, k_hold, refit_epochs, [single],
                    spent_s + cost([single], k_hold, refit_epochs, holdout=True, test_ratio=test_ratio, refit=True),
                    why, list(candidates), mode="holdout", epochs_upper=p.max_epochs, single_epochs=single_epochs,
                    test_ratio=test_ratio, refit=True)
    why = (f"preset {p.name}: the budget buys about one run: no shape's fold models reach {bar} epochs ({shapes}), "
           f"nor a holdout + refit on all the images ({refit_epochs} epochs each), so auto trains that run on "
           f"{share:.0%} of the images for {fit_single} epochs (one measured: {single.fold_epoch_s(k_hold):.1f}s) and "
           f"keeps TTA and biases only where the held-out {1 - share:.0%} says they pay")
    return Plan(p.name, budget_s, k_hold, fit_single, [single],
                spent_s + cost([single], k_hold, fit_single, holdout=True, test_ratio=test_ratio), why,
                list(candidates), mode="holdout", epochs_upper=p.max_epochs, single_epochs=single_epochs,
                test_ratio=test_ratio)


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


def timing_key(device: str, name: str, size: int, batch: int, n_classes: int) -> str:
    import os

    return f"{os.uname().nodename}|{device}|{name}|{size}px|batch{batch}|{n_classes}cls"


def measure_candidates(cfg, names: Sequence[str], sizes: Sequence[int], n_images: int, n_classes: int, *,
                       steps: int = 3, clock: Callable[[], float] = time.perf_counter,
                       log: Callable = print, timer: Callable | None = None,
                       cache: Path | None | bool = True) -> list[Candidate]:
    """Time a short slice of training (``steps`` optimizer steps after a warm-up step, on
    batches of ``train.batch_size`` at each size) and of prediction for every candidate on
    this machine's training device, and scale both to the whole training set; image decoding
    is timed on real files separately by the caller and added to ``train_s``/``val_s``.

    A step time measured earlier on this machine (same device, backbone, size, batch and class
    count) is reused from `timings_file` (``cache``: True for that file, a path, or False) instead
    of measured again: on a small budget measuring is a large part of the time (78 s of 6 minutes
    on a loaded CPU, benchmarks/auto/RESULTS.md). ``timer`` replaces `_time_steps` (tests)."""
    import torch

    from podium.fileio import write_json

    device = "cuda" if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda") else "cpu"
    batch = cfg.train.batch_size
    path = timings_file() if cache is True else (Path(cache) if cache else None)
    known: dict = {}
    if path is not None and path.is_file():
        import json

        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}  # an unreadable cache is measured again, not an error
    out = []
    for name in names:
        ok, weights = weights_for(name, cfg)
        if not ok:
            log(f"  {name}: no local weights (model.pretrained_path, torch hub or Hugging Face cache): skipped")
            continue
        for size in sizes:
            key = timing_key(device, name, int(size), batch, n_classes)
            if key in known:
                step_s, fwd_s = float(known[key]["step_s"]), float(known[key]["fwd_s"])
                note = f" (measured earlier, {known[key].get('at', '?')}; reused)"
            else:
                step_s, fwd_s = (timer or _time_steps)(name, int(size), batch, n_classes, device, steps, clock)
                note = ""
                if path is not None:
                    known[key] = {"step_s": step_s, "fwd_s": fwd_s,
                                  "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
                    write_json(path, known)
            batches = math.ceil(n_images / batch)
            out.append(Candidate(name, int(size), batches * step_s, batches * fwd_s, weights))
            log(f"  {name}@{size}: {step_s * 1000:.0f} ms/step -> {batches * step_s:.1f}s per epoch of "
                f"{n_images} images{note}")
    return out


def _time_steps(name: str, size: int, batch: int, n_classes: int, device: str, steps: int,
                clock: Callable[[], float]) -> tuple[float, float]:
    """Seconds of one training step and of one prediction batch (after a warm-up of each)."""
    import torch

    from podium.model.models import create_model

    torch.manual_seed(0)
    model = create_model(name, n_classes, pretrained=False).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, n_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    step()
    _sync(device)
    t0 = clock()
    for _ in range(steps):
        step()
    _sync(device)
    step_s = (clock() - t0) / steps
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
