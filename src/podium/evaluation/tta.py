"""Test-time augmentation: average a model's predictions over several views of each image.

A view is a shape-preserving function on an NCHW batch (uint8 or float), so
all k views of a batch can be concatenated into one k*N batch and run through
the model in a single call: on a GPU that costs about the same as k forwards
but avoids k round trips through the data loader.

View names are config strings (``predict.tta: [identity, hflip, scale_1.1]``);
some names expand to several views (``five_crop`` -> 5, ``shift`` -> 4,
``brightness`` -> 2).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from podium.errors import PodiumError, unknown_name

CROP_FRACTION = 0.875
SHIFT_FRACTION = 0.04
BRIGHTNESS_DELTA = 0.10


@dataclass(frozen=True)
class View:
    """One named, shape-preserving transform of an NCHW batch."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, batch: Tensor) -> Tensor:
        return self.fn(batch)


# ---------------------------------------------------------------- dtype-safe helpers


def _to_float(batch: Tensor) -> Tensor:
    return batch if batch.is_floating_point() else batch.float()


def _like(result: Tensor, batch: Tensor) -> Tensor:
    """Cast a float result back to the input dtype (uint8 rounds and clamps)."""
    if batch.is_floating_point():
        return result.to(batch.dtype)
    info = torch.iinfo(batch.dtype)
    return result.round().clamp(info.min, info.max).to(batch.dtype)


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) weights of antialiased bilinear resizing along one axis.

    Resizing is separable, so ``Mh @ image @ Mw.T`` equals ``F.interpolate(...,
    antialias=True)`` (to ~1e-4 of 255) while being two matrix products: ONNX
    exporters have no antialiased resize, and TTA views and ensemble members
    must export as one graph.
    """
    basis = torch.eye(n_in, dtype=torch.float64).reshape(1, 1, n_in, n_in)
    rows = F.interpolate(basis, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
    return rows[0, 0].float()


def resize(batch: Tensor, size: tuple[int, int]) -> Tensor:
    """An NCHW batch resized to ``size`` (antialiased bilinear), in the batch's dtype."""
    h, w = int(size[0]), int(size[1])
    if tuple(batch.shape[-2:]) == (h, w):
        return batch
    x = _to_float(batch)
    mh = resize_matrix(int(batch.shape[-2]), h).to(x.device, x.dtype)
    mw = resize_matrix(int(batch.shape[-1]), w).to(x.device, x.dtype)
    return _like(torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1)), batch)



def _pad(batch: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflect-pad (replicate when the pad exceeds the image) so borders look like image, not black."""
    h, w = batch.shape[-2:]
    mode = "reflect" if max(left, right) < w and max(top, bottom) < h else "replicate"
    return _like(F.pad(_to_float(batch), (left, right, top, bottom), mode=mode), batch)


# ---------------------------------------------------------------- views


def identity(batch: Tensor) -> Tensor:
    return batch


def hflip(batch: Tensor) -> Tensor:
    return torch.flip(batch, dims=[-1])


def vflip(batch: Tensor) -> Tensor:
    return torch.flip(batch, dims=[-2])


def scale(batch: Tensor, factor: float) -> Tensor:
    """Zoom by ``factor`` about the centre, then centre-crop or pad back to the input size."""
    h, w = batch.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    out = resize(batch, (nh, nw))
    if nh < h or nw < w:
        ph, pw = max(h - nh, 0), max(w - nw, 0)
        out = _pad(out, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    top, left = (out.shape[-2] - h) // 2, (out.shape[-1] - w) // 2
    return out[..., top : top + h, left : left + w]


def crop_resized(batch: Tensor, where: str, fraction: float = CROP_FRACTION) -> Tensor:
    """Crop ``fraction`` of the image at a corner (tl/tr/bl/br) or the center, resized back."""
    h, w = batch.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    tops = {"tl": 0, "tr": 0, "bl": h - ch, "br": h - ch, "center": (h - ch) // 2}
    lefts = {"tl": 0, "tr": w - cw, "bl": 0, "br": w - cw, "center": (w - cw) // 2}
    top, left = tops[where], lefts[where]
    return resize(batch[..., top : top + ch, left : left + cw], (h, w))


def shift(batch: Tensor, dx: float, dy: float) -> Tensor:
    """Translate content by (dx, dy) fractions of the size, filling with reflected border."""
    h, w = batch.shape[-2:]
    sx, sy = round(dx * w), round(dy * h)
    px, py = abs(sx), abs(sy)
    padded = _pad(batch, px, px, py, py)
    top, left = py - sy, px - sx
    return padded[..., top : top + h, left : left + w]


def brightness(batch: Tensor, factor: float) -> Tensor:
    """Scale intensities by ``factor``; uint8 is clamped to 0..255.

    Apply TTA before normalisation where possible: on mean/std-normalised
    floats this acts as a mild contrast change about the dataset mean.
    """
    return _like(_to_float(batch) * factor, batch)


def _named(name: str, fn: Callable[[Tensor], Tensor]) -> View:
    return View(name, fn)


VIEWS: dict[str, tuple[View, ...]] = {
    "identity": (_named("identity", identity),),
    "hflip": (_named("hflip", hflip),),
    "vflip": (_named("vflip", vflip),),
    "five_crop": tuple(
        _named(f"five_crop[{w}]", lambda b, w=w: crop_resized(b, w)) for w in ("tl", "tr", "bl", "br", "center")
    ),
    "shift": tuple(
        _named(f"shift[{dx:+g},{dy:+g}]", lambda b, dx=dx, dy=dy: shift(b, dx, dy))
        for dx, dy in (
            (SHIFT_FRACTION, 0.0),
            (-SHIFT_FRACTION, 0.0),
            (0.0, SHIFT_FRACTION),
            (0.0, -SHIFT_FRACTION),
        )
    ),
    "brightness": tuple(
        _named(f"brightness[{f:g}]", lambda b, f=f: brightness(b, f))
        for f in (1.0 - BRIGHTNESS_DELTA, 1.0 + BRIGHTNESS_DELTA)
    ),
}

_SCALE = re.compile(r"^scale_(\d+(?:\.\d+)?)$")


def parse_views(names: Sequence[str]) -> list[View]:
    """Views for config names, group names expanded (``five_crop`` gives 5 views)."""
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise PodiumError("TTA needs at least one view; use ['identity'] for plain prediction")
    views: list[View] = []
    for name in names:
        match = _SCALE.match(name)
        if match:
            factor = float(match.group(1))
            if not 0.25 <= factor <= 4.0:
                raise PodiumError(f"TTA view {name!r}: scale factor must be between 0.25 and 4; got {factor}")
            views.append(_named(name, lambda b, f=factor: scale(b, f)))
        elif name in VIEWS:
            views.extend(VIEWS[name])
        else:
            raise unknown_name("TTA view", name, [*VIEWS, "scale_<factor> (e.g. scale_0.9)"])
    return views


# ---------------------------------------------------------------- prediction


def apply_views(batch: Tensor, views: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
    """All views of ``batch`` stacked into one (k*N, C, H, W) batch, view-major."""
    if batch.ndim != 4:
        raise PodiumError(f"TTA expects an NCHW batch; got shape {tuple(batch.shape)}")
    outs = []
    for view in views:
        out = view(batch)
        if out.shape != batch.shape:
            name = getattr(view, "name", getattr(view, "__name__", repr(view)))
            raise PodiumError(f"TTA view {name} changed the batch shape {tuple(batch.shape)} to {tuple(out.shape)}")
        outs.append(out)
    return torch.cat(outs, dim=0)


def mean_of_probabilities(views: Tensor) -> Tensor:
    """(k, N, C) view logits -> the mean of the views' softmax probabilities."""
    return torch.softmax(views, dim=-1).mean(dim=0)


def geometric_mean(views: Tensor) -> Tensor:
    """Geometric mean of probabilities, renormalised: the softmax of the mean log-softmax
    (computed that way for stability); it penalises classes that any view finds implausible."""
    return torch.softmax(torch.log_softmax(views, dim=-1).mean(dim=0), dim=-1)


#: how TTA views are merged: name -> (k, N, C) logits -> (N, C) probabilities (`predict.tta_merge`)
MERGES: dict[str, Callable[[Tensor], Tensor]] = {"mean": mean_of_probabilities, "gmean": geometric_mean}


def resolve_merge(name: str) -> str:
    """``name`` if it is a known merge, else a user error with the valid names and the closest one."""
    if name not in MERGES:
        raise unknown_name("TTA merge", name, MERGES)
    return name


def merge_view_logits(logits: Tensor, n_views: int, merge: str = "mean") -> Tensor:
    """Merge (k*N, C) view-major logits into (N, C) probabilities with ``MERGES[merge]``."""
    fn = MERGES[resolve_merge(merge)]
    logits = logits.float()
    return fn(logits.reshape(n_views, -1, logits.shape[-1]))


@torch.no_grad()
def predict_with_tta(
    forward: Callable[[Tensor], Tensor],
    batch: Tensor,
    views: Sequence[Callable[[Tensor], Tensor]] | Sequence[str] = ("identity",),
    merge: str = "mean",
    chunk: int | None = None,
) -> Tensor:
    """Class probabilities (N, C) averaged over TTA views, in one forward of k*N images.

    ``forward`` maps an NCHW batch to logits (normalisation happens inside it
    or before the views). ``chunk`` caps images per forward call to bound memory.
    """
    resolve_merge(merge)
    if len(views) and isinstance(views[0], str):
        views = parse_views(list(views))
    if len(views) == 0:
        raise PodiumError("TTA needs at least one view; use ['identity'] for plain prediction")
    if chunk is not None and chunk < 1:
        raise PodiumError(f"TTA chunk must be a positive number of images; got {chunk}")
    stacked = apply_views(batch, views)
    if chunk is None or chunk >= len(stacked):
        logits = forward(stacked)
    else:
        logits = torch.cat([forward(part) for part in torch.split(stacked, chunk)], dim=0)
    if logits.ndim != 2 or logits.shape[0] != len(stacked):
        raise PodiumError(
            f"model returned logits of shape {tuple(logits.shape)} for {len(stacked)} images; expected (images, classes)"
        )
    return merge_view_logits(logits, len(views), merge)
