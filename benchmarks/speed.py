"""The speed benchmarks B1-B6: each compares two ways of doing the same work in one run.

Every benchmark is a function ``(Context) -> Result``. Variants run
interleaved (one of each per round) and report medians, so a shared or loaded
machine slows every variant alike and the ratios stay meaningful when the
absolute numbers move. The runner, data preparation and reports are in
`benchmarks.runner`.
"""
from __future__ import annotations

import importlib
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TARGETS = {  # ratio name -> (comparison, threshold); reported, never asserted
    "B1 warm epoch, cache: podium / usual (img/s)": (">=", 3.0),
    "B1 first epoch, cache: podium / usual (img/s)": (">=", 1.5),
    "B2 epoch / pure compute, cache": ("<=", 1.15),
    "B3 Lightning / raw loop (s per step)": ("<=", 1.10),
    "B4 batched TTA / k single passes": ("<=", 1.10),
    "B5 k folds / (k x one fold)": ("<=", 1.05),
}


@dataclass
class Sizes:
    """Work per benchmark; ``quick`` shrinks everything to a smoke test."""

    images: int          # B1 image count
    repeats: int         # repeats per variant (medians over these)
    warm_epochs: int     # B1 epochs after the first
    image_size: int      # B1/B2/B4 network input side
    model: str           # B2/B4/B6 model (no pretrained weights)
    steps: int           # B2 steps per epoch
    batch: int           # B1/B2 batch size
    tiny_size: int       # B3/B5 input side
    tiny_steps: int      # B3 steps
    tta_batch: int       # B4 images per batch
    folds: int           # B5 k
    fold_images: int     # B5 images
    decode_images: int   # B6 images per decode timing

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(images=24, repeats=1, warm_epochs=1, image_size=64, model="tv/mobilenet_v3_small",
                       steps=2, batch=8, tiny_size=32, tiny_steps=4, tta_batch=4, folds=2, fold_images=24,
                       decode_images=8)
        return cls(images=640, repeats=3, warm_epochs=2, image_size=224, model="tv/mobilenet_v3_small",
                   steps=8, batch=32, tiny_size=64, tiny_steps=30, tta_batch=16, folds=3, fold_images=96,
                   decode_images=200)


@dataclass
class Context:
    sizes: Sizes
    paths: list[str]
    targets: np.ndarray
    data_source: str
    workers: int
    workdir: Path
    device: str = "cpu"
    quick: bool = False
    log: Callable[[str], None] = print


@dataclass
class Result:
    """One benchmark: its configuration, measured rows and the ratios between them."""

    name: str
    title: str
    config: dict
    rows: list[dict] = field(default_factory=list)
    ratios: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # traceback when the benchmark failed

    def add(self, variant: str, values: list[float], unit: str) -> float:
        med = float(statistics.median(values))
        self.rows.append({"variant": variant, "median": med, "unit": unit, "values": [float(v) for v in values]})
        return med

    def ratio(self, name: str, value: float, note: str = "") -> None:
        cmp, threshold = TARGETS.get(name, (None, None))
        met = None if cmp is None else (value >= threshold if cmp == ">=" else value <= threshold)
        self.ratios.append({"ratio": name, "value": float(value), "target": f"{cmp} {threshold}" if cmp else "",
                            "met": met, "note": note})


# ------------------------------------------------------------------ timing

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per round, so machine load drifts hit all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            out[name].append(fn())
    return out


# ------------------------------------------------------------------ shared pieces

def _usual_dataset(paths: list[str], targets: np.ndarray, size: int):
    """What most tutorials write: torchvision ImageFolder's PIL loader and v1 transforms."""
    from PIL import Image
    from torchvision import transforms as T

    from podium.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    class UsualDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with open(paths[i], "rb") as f:
                image = Image.open(f).convert("RGB")
            return tf(image), int(targets[i])

    return UsualDataset()


def _podium_dataset(paths, targets, size: int, *, cache=None, train: bool = False, draft: bool = True):
    from podium.data.dataset import ImageDataset
    from podium.data.transforms import build_eval_pipeline, build_train_pipeline
    from podium.schema import AugmentConfig

    build = build_train_pipeline if train else build_eval_pipeline
    return ImageDataset(paths, targets, build(AugmentConfig(), (size, size)), (size, size),
                        train=train, draft=draft, cache=cache)


def _build_cache(paths, size: int, cache_dir: Path, lazy: bool = True):
    """podium's disk cache as training uses it: filled while the first epoch reads it."""
    from podium.data.cache import ImageCache

    return ImageCache.build(paths, (size, size), mode="disk", cache_dir=cache_dir, lazy=lazy)


def _normalizer(device: str = "cpu"):
    """podium's on-device normalisation (engine.Classifier.normalize), done by the consumer."""
    from podium.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return lambda x: (x.to(device, non_blocking=True).float() - mean) / std


def _drain(loader, consume=None) -> int:
    """One epoch through a no-op model; returns the image count."""
    n = 0
    for batch in loader:
        images = batch[0]
        if consume is not None:
            consume(images)
        n += len(images)
    return n


def _epochs(make_loader_fn: Callable[[], Iterable], epochs: int, consume=None, setup=None) -> list[float]:
    """Seconds of each epoch of a fresh loader; the first includes ``setup`` and worker start."""
    times = []
    start = time.perf_counter()
    if setup is not None:
        setup()
    loader = make_loader_fn()
    for _ in range(epochs):
        _drain(loader, consume)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    del loader
    return times


def _classifier(model: str, n_classes: int = 2):
    from podium.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from podium.model.engine import Classifier
    from podium.schema import TrainConfig

    train_cfg = TrainConfig(scheduler="none", precision="32", accelerator="cpu", devices=1).model_dump()
    return Classifier({"name": model, "pretrained": False, "dropout": 0.0}, train_cfg,
                      [f"c{i}" for i in range(n_classes)], IMAGENET_MEAN, IMAGENET_STD, load_pretrained=False)


def _sgd(module):
    from podium.model.optim import create_optimizer

    return create_optimizer("sgd", module.model, lr=0.01, weight_decay=1e-4, momentum=0.9)


def _train_step(module, optimizer, images, targets) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = module.loss(images, targets)  # what Classifier.training_step computes
    loss.backward()
    optimizer.step()


def _uint8_batches(n_batches: int, batch: int, size: int, seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, 2, (batch,), generator=g), 0) for _ in range(n_batches)]


# ------------------------------------------------------------------ B1

def bench_loader(ctx: Context) -> Result:
    """B1: images/s of the input pipeline alone (the model is a no-op)."""
    from torch.utils.data import DataLoader

    from podium.data.dataset import make_loader

    s = ctx.sizes
    epochs = 1 + s.warm_epochs
    res = Result("B1", "Loader throughput, model replaced by a no-op", {
        "images": len(ctx.paths), "size": s.image_size, "batch": s.batch, "workers": ctx.workers,
        "epochs per repeat": epochs, "repeats": s.repeats, "data": ctx.data_source,
        "usual": "PIL open -> Resize((s, s)) -> ToTensor -> Normalize, DataLoader(shuffle, workers), float32 batches",
        "podium": "ImageDataset (draft decode, eval pipeline) + make_loader (persistent workers), uint8 batches "
                  "normalised by the consumer like engine.Classifier.normalize",
        "cache": "disk ImageCache in a fresh folder each repeat, filled while the first epoch reads it "
                 "(as podium trains with data.cache=disk); the filling counts in the first epoch",
    })
    pin = torch.cuda.is_available()
    usual = _usual_dataset(ctx.paths, ctx.targets, s.image_size)
    normalize = _normalizer(ctx.device)
    to_device = (lambda x: x.to(ctx.device, non_blocking=True)) if ctx.device != "cpu" else None
    plain = _podium_dataset(ctx.paths, ctx.targets, s.image_size)

    def run_usual():
        return _epochs(lambda: DataLoader(usual, batch_size=s.batch, shuffle=True, num_workers=ctx.workers,
                                          pin_memory=pin), epochs, to_device)

    def run_plain():
        return _epochs(lambda: make_loader(plain, s.batch, shuffle=True, num_workers=ctx.workers), epochs, normalize)

    def run_cached():
        holder = {}
        folder = Path(tempfile.mkdtemp(prefix="cache-", dir=ctx.workdir))
        setup = lambda: holder.update(ds=_podium_dataset(ctx.paths, ctx.targets, s.image_size,  # noqa: E731
                                                         cache=_build_cache(ctx.paths, s.image_size, folder)))
        return _epochs(lambda: make_loader(holder["ds"], s.batch, shuffle=True, num_workers=ctx.workers),
                       epochs, normalize, setup=setup)

    runs = _interleaved({"usual": run_usual, "podium": run_plain, "podium+cache": run_cached}, s.repeats)
    n = len(ctx.paths)
    rates = {}
    for name, per_repeat in runs.items():
        first = res.add(f"{name}: first epoch", [n / t[0] for t in per_repeat], "img/s")
        warm = res.add(f"{name}: warm epochs", [n / statistics.median(t[1:]) for t in per_repeat], "img/s")
        rates[name] = (first, warm)
    res.ratio("B1 warm epoch, cache: podium / usual (img/s)", rates["podium+cache"][1] / rates["usual"][1])
    res.ratio("B1 first epoch, cache: podium / usual (img/s)", rates["podium+cache"][0] / rates["usual"][0])
    res.ratio("B1 warm epoch, no cache: podium / usual (img/s)", rates["podium"][1] / rates["usual"][1])
    res.ratio("B1 first epoch, no cache: podium / usual (img/s)", rates["podium"][0] / rates["usual"][0])
    res.notes.append("First epoch = new DataLoader: worker start-up, plus the cache build for podium+cache. "
                     "Files are in the OS page cache in every variant (no root to drop it), so cold-disk "
                     "reads are not measured.")
    return res


# ------------------------------------------------------------------ B2

def bench_epoch_vs_compute(ctx: Context) -> Result:
    """B2: a training epoch fed by podium's loader vs the same steps fed from memory."""
    from podium.data.dataset import make_loader

    s = ctx.sizes
    n = s.steps * s.batch
    paths, targets = ctx.paths[:n], ctx.targets[:n]
    res = Result("B2", "Epoch wall time / pure compute time", {
        "model": s.model, "size": s.image_size, "batch": s.batch, "steps": s.steps, "workers": ctx.workers,
        "repeats": s.repeats, "pipeline": "train pipeline (augment.preset=light) in the loader workers",
        "compute": "same Classifier, SGD, same number of uint8 batches of the same shape, held in memory",
    })
    module = _classifier(s.model).to(ctx.device).train()
    optimizer = _sgd(module)
    in_memory = _uint8_batches(s.steps, s.batch, s.image_size)
    cache = _build_cache(paths, s.image_size, Path(tempfile.mkdtemp(prefix="cache-", dir=ctx.workdir)), lazy=False)
    loaders = {
        "cache": make_loader(_podium_dataset(paths, targets, s.image_size, cache=cache, train=True), s.batch,
                             shuffle=True, num_workers=ctx.workers, drop_last=True),
        "no cache": make_loader(_podium_dataset(paths, targets, s.image_size, train=True), s.batch,
                                shuffle=True, num_workers=ctx.workers, drop_last=True),
    }

    def epoch(batches) -> float:
        def go():
            for images, y, _ in batches:
                _train_step(module, optimizer, images.to(ctx.device, non_blocking=True), y.to(ctx.device))
            _sync(ctx.device)
        return _timed(go)

    epoch(in_memory[:1])  # first-call allocations and kernel selection
    for loader in loaders.values():
        _drain(loader)  # workers started, pages mapped: measure warm epochs
    variants = {"compute only": lambda: epoch(in_memory),
                **{f"epoch, {k}": (lambda ld=ld: epoch(ld)) for k, ld in loaders.items()}}
    threads, spare = torch.get_num_threads(), max(1, _usable_cpus() - ctx.workers)
    if ctx.workers and spare < threads and ctx.device == "cpu":
        variants[f"epoch, cache, torch threads {spare} (cores - workers)"] = lambda: _with_threads(
            spare, lambda: epoch(loaders["cache"]))
    runs = _interleaved(variants, s.repeats)
    meds = {k: res.add(k, v, "s") for k, v in runs.items()}
    res.ratio("B2 epoch / pure compute, cache", meds["epoch, cache"] / meds["compute only"],
              f"torch threads {threads}, {ctx.workers} loader worker(s), {_usable_cpus()} cores")
    res.ratio("B2 epoch / pure compute, no cache", meds["epoch, no cache"] / meds["compute only"])
    for k in meds:
        if "cores - workers" in k:
            res.ratio(f"B2 {k.removeprefix('epoch, ')} / pure compute ({threads} threads)",
                      meds[k] / meds["compute only"])
    return res


def _usable_cpus() -> int:
    from podium.data.cache import available_cpus

    return available_cpus()


def _with_threads(n: int, fn: Callable[[], float]) -> float:
    """Run ``fn`` with ``n`` torch threads (oversubscribed cores make OpenMP spin, not work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ B3

def bench_loop_overhead(ctx: Context) -> Result:
    """B3: podium's Lightning loop vs a hand-written PyTorch loop, same module and batches."""
    from lightning.pytorch.callbacks import Callback

    from podium.model.engine import build_trainer
    from podium.schema import PodiumConfig

    s = ctx.sizes
    res = Result("B3", "Per-step overhead of podium's training loop", {
        "model": s.model, "size": s.tiny_size, "batch": 32, "steps": s.tiny_steps, "repeats": s.repeats,
        "podium": "engine.Classifier + engine.build_trainer(progress=False), logger off, no validation",
        "raw": "for x, y: zero_grad; module.loss(x, y).backward(); step (what training_step computes)",
        "timed": "from the end of step 1 to the end of the last step (per step); fit() total separately",
    })
    batches = _uint8_batches(s.tiny_steps, 32, s.tiny_size)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    cfg = PodiumConfig.model_validate({"train": {"epochs": 1, "scheduler": "none", "precision": "32",
                                                 "accelerator": "auto", "devices": 1},
                                       "output": {"tensorboard": False}})

    class StepClock(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    def lightning() -> tuple[float, float]:
        clock = StepClock()
        torch.manual_seed(0)
        module = _classifier(s.model)
        run_dir = Path(tempfile.mkdtemp(prefix="b3-", dir=ctx.workdir))
        trainer = build_trainer(cfg, run_dir, callbacks=[clock], progress=False)
        total = _timed(lambda: trainer.fit(module, train_dataloaders=loader))
        return (clock.end - clock.start) / (s.tiny_steps - 1), total

    def raw() -> tuple[float, float]:
        torch.manual_seed(0)
        start_total = time.perf_counter()
        module = _classifier(s.model).to(ctx.device).train()
        optimizer = _sgd(module)
        start = 0.0
        for i, (x, y, _) in enumerate(loader):
            _train_step(module, optimizer, x.to(ctx.device), y.to(ctx.device))
            if i == 0:
                _sync(ctx.device)
                start = time.perf_counter()
        _sync(ctx.device)
        end = time.perf_counter()
        return (end - start) / (s.tiny_steps - 1), end - start_total

    runs = _interleaved({"lightning": lightning, "raw": raw}, s.repeats)
    per_step = {k: res.add(f"{k}: per step", [v[0] * 1000 for v in vals], "ms") for k, vals in runs.items()}
    for k, vals in runs.items():
        res.add(f"{k}: whole fit incl. set-up", [v[1] for v in vals], "s")
    res.ratio("B3 Lightning / raw loop (s per step)", per_step["lightning"] / per_step["raw"],
              f"overhead {per_step['lightning'] - per_step['raw']:+.2f} ms/step")
    return res


# ------------------------------------------------------------------ B4

def bench_tta(ctx: Context) -> Result:
    """B4: one forward of k*N images (podium.evaluation.tta) vs k forwards of N."""
    from podium.evaluation.tta import merge_view_logits, parse_views, predict_with_tta

    s = ctx.sizes
    names = ["identity", "hflip", "vflip", "scale_1.1"]
    views = parse_views(names)
    res = Result("B4", "TTA: k views in one batch / k single passes", {
        "model": s.model, "size": s.image_size, "batch": s.tta_batch, "views": names, "k": len(views),
        "repeats": max(3, s.repeats), "mode": "eval, torch.inference_mode, uint8 input normalised in the model",
    })
    module = _classifier(s.model).to(ctx.device).eval()
    batch = _uint8_batches(1, s.tta_batch, s.image_size)[0][0].to(ctx.device)

    def single_passes():
        with torch.inference_mode():
            logits = torch.cat([module(view(batch)) for view in views])
            out = merge_view_logits(logits, len(views))
        _sync(ctx.device)
        return out

    def batched():
        out = predict_with_tta(module, batch, views)
        _sync(ctx.device)
        return out

    with torch.inference_mode():
        module(batch)  # warm-up
    runs = _interleaved({"batched (predict_with_tta)": lambda: _timed(batched),
                         "k single passes": lambda: _timed(single_passes)}, max(3, s.repeats))
    meds = {k: res.add(k, v, "s") for k, v in runs.items()}
    res.ratio("B4 batched TTA / k single passes", meds["batched (predict_with_tta)"] / meds["k single passes"])
    return res


# ------------------------------------------------------------------ B5

def bench_kfold(ctx: Context) -> Result:
    """B5: k folds run back to back vs k times one fold (the CV machinery's own cost).

    With `podium.evaluation.cv`: ``run_cv`` (load, fold assignment, k fits, OOF gathering) vs
    ``cv.train_fold`` of fold 0. Without it: k `train` calls on StratifiedKFold splits.
    """
    import pandas as pd

    from podium.data.samples import PreparedData
    from podium.model.training import train
    from podium.schema import PodiumConfig

    s = ctx.sizes
    unique = list(dict.fromkeys(ctx.paths))[: s.fold_images]
    label_of = {p: f"c{t}" for p, t in zip(ctx.paths, ctx.targets)}
    frame = pd.DataFrame({"path": unique, "id": [Path(p).name + f"-{i}" for i, p in enumerate(unique)],
                          "label": [label_of[p] for p in unique]})
    csv = ctx.workdir / "b5.csv"
    frame.to_csv(csv, index=False)
    classes = sorted(frame["label"].unique())
    cfg = PodiumConfig.model_validate({
        "data": {"format": "csv", "train": str(csv), "id_column": "id", "image_size": s.tiny_size, "num_workers": 0},
        "model": {"name": s.model, "pretrained": False},
        "train": {"epochs": 1, "batch_size": 16, "scheduler": "none", "precision": "32", "accelerator": "auto",
                  "devices": 1},
        "output": {"dir": str(ctx.workdir / "b5-runs"), "tensorboard": False},
    })
    cv = importlib.import_module("podium.evaluation.cv") if importlib.util.find_spec("podium.evaluation.cv") else None
    res = Result("B5", "k-fold total / (k x one fold)", {
        "images": len(frame), "folds": s.folds, "size": s.tiny_size, "model": s.model, "epochs": 1, "workers": 0,
        "cache": "none", "how": "podium.evaluation.cv.run_cv vs podium.evaluation.cv.train_fold(fold 0)" if cv else
        "podium.evaluation.cv absent: k sequential train() calls on StratifiedKFold splits vs one such call",
    })
    quiet = lambda *a, **k: None  # noqa: E731
    if cv is not None:
        folded = frame.assign(fold=cv.make_folds(frame, s.folds, cfg.cv.seed))

        def one_fold() -> None:
            cv.train_fold(cfg, Path(tempfile.mkdtemp(prefix="b5-", dir=ctx.workdir)), folded, classes, 0,
                          progress=False, log=quiet)

        def all_folds() -> None:
            cv.run_cv(cfg, folds=s.folds, progress=False, log=quiet)
    else:
        from sklearn.model_selection import StratifiedKFold

        splits = list(StratifiedKFold(s.folds, shuffle=True, random_state=0).split(frame, frame["label"]))

        def fit(i: int) -> None:
            tr, va = splits[i]
            prepared = PreparedData(frame.iloc[tr].reset_index(drop=True), frame.iloc[va].reset_index(drop=True),
                                    classes)
            train(cfg, prepared=prepared, progress=False, log=quiet)

        one_fold = lambda: fit(0)  # noqa: E731
        all_folds = lambda: [fit(i) for i in range(s.folds)]  # noqa: E731

    one_fold()  # warm-up: imports, first Lightning set-up
    one = [_timed(one_fold) for _ in range(max(1, s.repeats - 1))]
    total = _timed(all_folds)
    one_med = res.add("one fold", one, "s")
    res.add(f"{s.folds} folds back to back", [total], "s")
    res.ratio("B5 k folds / (k x one fold)", total / (s.folds * one_med))
    return res
