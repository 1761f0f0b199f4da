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
    "fast": Preset("fast", ((3, 1),), 3, 12, (64,), ("tv/mobilenet_v2", "mobilenetv3_small_100", "resnet18")),
    "medium": Preset("medium", ((5, 2), (3, 2), (5, 1), (3, 1)), 5, 20, (64, 96),
                     ("tv/mobilenet_v2", "resnet18", "mobilenetv3_large_100")),
    "best": Preset("best", ((5, 3), (5, 2), (3, 3), (3, 2), (5, 1), (3, 1)), 8, 30, (96, 64, 128),
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
    """The chosen folds, members (candidates) and epochs, with the arithmetic that chose them."""
    preset: str
    budget_s: float
    folds: int
    epochs: int
    members: list[Candidate]
    planned_s: float
    why: str
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["members"] = [Candidate(**m) for m in d["members"]]
        d["candidates"] = [Candidate(**m) for m in d.get("candidates", [])]
        return cls(**d)

    def describe(self) -> str:
        sizes = sorted({m.size for m in self.members})
        names = ", ".join(f"{m.model}@{m.size}" for m in self.members)
        return (f"{self.folds} folds x {len(self.members)} member(s) at {'/'.join(map(str, sizes))} px, "
                f"{self.epochs} epochs: {self.planned_s / 60:.1f} min planned of {self.budget_s / 60:.1f} "
                f"({names})")


def cost(members: Sequence[Candidate], folds: int, epochs: int) -> float:
    """Planned seconds of training ``members`` with ``folds`` folds for ``epochs`` each."""
    return (sum(folds * (epochs * m.fold_epoch_s(folds) + FOLD_OVERHEAD_S) + MEMBER_OVERHEAD_S for m in members)
            + FINAL_OVERHEAD_S)


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


def minimum_s(candidates: Sequence[Candidate]) -> float:
    """The least a budget must be: 2 folds of the cheapest candidate for one epoch."""
    return min(cost([c], 2, 1) for c in candidates)


def make_plan(candidates: Sequence[Candidate], budget_s: float, preset: str | Preset, *, spent_s: float = 0.0) -> Plan:
    """The preset's most wanted (folds, members) shape whose epochs, filling `PLAN_SHARE` of
    the budget, reach the preset's ``min_epochs``; else the smallest shape with as many epochs
    as fit (at least one). Refuses (naming the measured minimum) a budget too small for that.
    ``spent_s`` (the measuring) is already gone from the budget."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if not candidates:
        raise PodiumError("podium auto: no candidate backbone to plan with")
    usable = max(budget_s - spent_s, 0.0) * PLAN_SHARE
    floor = minimum_s(candidates)
    if usable < floor:
        need = spent_s + floor / PLAN_SHARE
        raise PodiumError(f"a budget of {budget_s:.0f}s is too small: measuring the candidates took {spent_s:.0f}s and "
                          f"the cheapest plan measured on this machine (2 folds x 1 epoch of "
                          f"{min(candidates, key=lambda c: cost([c], 2, 1)).model}) needs {floor / PLAN_SHARE:.0f}s more "
                          f"with the safety share: {need:.0f}s in all; give --time {math.ceil(need / 60)}m or more "
                          "(or fewer --models/--sizes to measure)")
    order = diverse_order(candidates, p)
    shapes = list(p.shapes) + [(3, 1), (2, 1)]
    tried = []
    for folds, n in shapes:
        if n > len(order):
            continue
        members = order[:n]
        fixed = cost(members, folds, 0)
        per_epoch = sum(folds * m.fold_epoch_s(folds) for m in members)
        epochs = min(p.max_epochs, int((usable - fixed) // per_epoch)) if usable > fixed else 0
        tried.append(f"{folds}x{n}: {epochs} epochs")
        need = p.min_epochs if (folds, n) in p.shapes else 1
        if epochs >= need:
            why = (f"preset {p.name}: took the first shape (folds x members) whose epochs reach {need} in "
                   f"{PLAN_SHARE:.0%} of the budget ({'; '.join(tried)}); one epoch of one fold measured "
                   + ", ".join(f"{m.model}@{m.size}={m.fold_epoch_s(folds):.1f}s" for m in members))
            return Plan(p.name, budget_s, folds, epochs, list(members), spent_s + cost(members, folds, epochs), why,
                        list(candidates))
    c = min(candidates, key=lambda c: cost([c], 2, 1))
    return Plan(p.name, budget_s, 2, 1, [c], spent_s + cost([c], 2, 1), "only 2 folds x 1 epoch fit", list(candidates))


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


def measure_candidates(cfg, names: Sequence[str], sizes: Sequence[int], n_images: int, n_classes: int, *,
                       steps: int = 3, clock: Callable[[], float] = time.perf_counter,
                       log: Callable = print) -> list[Candidate]:
    """Time a short slice of training (``steps`` optimizer steps after a warm-up step, on
    batches of ``train.batch_size`` at each size) and of prediction for every candidate on
    this machine's training device, and scale both to the whole training set; image decoding
    is timed on real files separately by the caller and added to ``train_s``/``val_s``."""
    import torch

    device = "cuda" if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda") else "cpu"
    batch = cfg.train.batch_size
    out = []
    for name in names:
        ok, path = weights_for(name, cfg)
        if not ok:
            log(f"  {name}: no local weights (model.pretrained_path, torch hub or Hugging Face cache): skipped")
            continue
        for size in sizes:
            step_s, fwd_s = _time_steps(name, int(size), batch, n_classes, device, steps, clock)
            batches = math.ceil(n_images / batch)
            out.append(Candidate(name, int(size), batches * step_s, batches * fwd_s, path))
            log(f"  {name}@{size}: {step_s * 1000:.0f} ms/step -> {batches * step_s:.1f}s per epoch of {n_images} images")
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
