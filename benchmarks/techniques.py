"""B6: single speed techniques switched on and off, everything else equal.

Split from `bench_speed` (B1-B5), whose helpers it reuses; the registry of all
benchmarks is `bench.BENCHMARKS`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.speed import (
    Context,
    Result,
    _build_cache,
    _classifier,
    _drain,
    _interleaved,
    _normalizer,
    _podium_dataset,
    _sgd,
    _sync,
    _timed,
    _uint8_batches,
)


def bench_techniques(ctx: Context) -> Result:
    """B6: each speed technique on/off, everything else equal."""
    from torch.utils.data import DataLoader

    from podium.data.dataset import make_loader
    from podium.data.images import load_resized

    s = ctx.sizes
    reps = max(3, s.repeats)
    res = Result("B6", "Techniques on / off", {"repeats": reps, "workers": ctx.workers, "model": s.model,
                                                "decode images": s.decode_images})
    paths = ctx.paths[: s.decode_images]
    half = max(8, s.image_size // 2)

    def decode(size: int, draft: bool) -> float:
        return len(paths) / _timed(lambda: [load_resized(p, (size, size), draft=draft) for p in paths])

    runs = _interleaved({f"decode {sz}px, draft {d}": (lambda sz=sz, d=d: decode(sz, d))
                         for sz in (s.image_size, half) for d in ("on", "off")}, reps)
    meds = {k: res.add(k, v, "img/s") for k, v in runs.items()}
    for sz in (s.image_size, half):
        res.ratio(f"B6 draft decode on / off at {sz}px (img/s)", meds[f"decode {sz}px, draft on"] /
                  meds[f"decode {sz}px, draft off"],
                  "libjpeg only skips work when the image is >= 2x the target on both sides")

    cache = _build_cache(ctx.paths, s.image_size, Path(tempfile.mkdtemp(prefix="cache-", dir=ctx.workdir)), lazy=False)
    cached = _podium_dataset(ctx.paths, ctx.targets, s.image_size, cache=cache)
    normalize = _normalizer(ctx.device)
    as_float = _FloatDataset(cached, _normalizer("cpu"))
    loader_u8 = make_loader(cached, s.batch, num_workers=ctx.workers)
    loader_f32 = make_loader(as_float, s.batch, num_workers=ctx.workers)
    _drain(loader_u8), _drain(loader_f32)
    n = len(ctx.paths)
    runs = _interleaved({"uint8 batches (normalise after)": lambda: n / _timed(lambda: _drain(loader_u8, normalize)),
                         "float32 batches (normalise in worker)": lambda: n / _timed(lambda: _drain(loader_f32))},
                        reps)
    meds = {k: res.add(k, v, "img/s") for k, v in runs.items()}
    res.ratio("B6 uint8 / float32 batches, cached, warm (img/s)",
              meds["uint8 batches (normalise after)"] / meds["float32 batches (normalise in worker)"])

    if ctx.workers > 0:
        small_epochs = 3

        def epochs(persistent: bool) -> float:
            def go():
                loader = DataLoader(cached, batch_size=s.batch, num_workers=ctx.workers,
                                    persistent_workers=persistent, collate_fn=_collate3)
                for _ in range(small_epochs):
                    _drain(loader)
            return n * small_epochs / _timed(go)

        runs = _interleaved({"persistent workers": lambda: epochs(True),
                             "workers restarted each epoch": lambda: epochs(False)}, reps)
        meds = {k: res.add(f"{k} ({small_epochs} epochs)", v, "img/s") for k, v in runs.items()}
        res.ratio("B6 persistent / restarted workers (img/s)",
                  meds["persistent workers"] / meds["workers restarted each epoch"])
    else:
        res.notes.append("persistent workers: not measured (0 workers)")
    _model_techniques(ctx, res, reps)
    return res


class _FloatDataset(torch.utils.data.Dataset):
    """The cached dataset, but normalising to float32 in the worker (the usual way)."""

    def __init__(self, base, normalize):
        self.base, self.normalize = base, normalize

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.normalize(x[None])[0], y


def _collate3(batch):
    from podium.data.dataset import collate_skipping_bad

    return collate_skipping_bad(batch)


def cpu_bf16_supported() -> bool:
    """oneDNN runs bf16 natively (AVX512-BF16 / AMX); elsewhere it is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _model_techniques(ctx: Context, res: Result, reps: int) -> None:
    """channels_last, bf16 autocast and torch.compile on one training step / forward."""
    s = ctx.sizes
    device = ctx.device
    batch = _uint8_batches(1, s.batch, s.image_size)[0]
    x, y = batch[0].to(device), batch[1].to(device)

    def step_time(channels_last: bool = False, bf16: bool = False, compiled: bool = False) -> Callable[[], float]:
        torch.manual_seed(0)
        module = _classifier(s.model).to(device).train()
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        optimizer = _sgd(module)
        forward = torch.compile(module) if compiled else module

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = module.criterion(forward(xx), y)  # forward may be compiled: not module.loss
            loss.backward()
            optimizer.step()
            _sync(device)

        step()  # warm-up (and compilation)
        return lambda: _timed(step)

    variants = {"fp32, contiguous": step_time(), "fp32, channels_last": step_time(channels_last=True)}
    bf16_ok = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_bf16_supported()
    if bf16_ok:
        variants["bf16 autocast, contiguous"] = step_time(bf16=True)
    else:
        res.notes.append(f"bf16 autocast: not supported here ({device} without native bf16), not measured")
    if device == "cuda" and not ctx.quick:
        variants["torch.compile, fp32"] = step_time(compiled=True)
    else:
        res.notes.append("torch.compile: not measured here: only timed on a CUDA GPU (on CPU its minutes of "
                         "compilation would not pay back within a short fine-tune)" if device == "cpu"
                         else "torch.compile: skipped in --quick")
    runs = _interleaved(variants, reps)
    meds = {k: res.add(f"train step {s.model} {s.image_size}px b{s.batch}: {k}", v, "s") for k, v in runs.items()}
    base = meds["fp32, contiguous"]
    for k, v in meds.items():
        if k != "fp32, contiguous":
            res.ratio(f"B6 step time {k} / fp32 contiguous ({device})", v / base)
