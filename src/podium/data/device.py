"""`data.cache=device`: decoded images held on the training device, batches augmented there.

On a GPU, a small network at a small image size trains faster than CPU workers
can decode, augment, collate and copy images (the loader starves the GPU).
With this cache the images are decoded and resized once (the memory cache's
decoder), moved to the training device as one uint8 (N, 3, H, W) tensor, and
each batch is an index into it plus a batched augmentation on the device: no
DataLoader workers, no per-image Python, no host-to-device copies.

The batches are the CPU path's batches in every other respect: uint8 images
(the model normalizes them), the same `SeededSampler` order (so a resumed run
sees the same batches), undecodable images dropped and counted, a rank's share
under DDP. Augmentation draws its parameters from the batch's sample seeds, so
it is reproducible and resumable too; it supports the presets that are crops
and flips (`DEVICE_AUGMENTS`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from podium.errors import PodiumError

#: RandomResizedCrop's aspect-ratio range, as in the CPU presets
_RATIO = (3 / 4, 4 / 3)


# ------------------------------------------------------------------ batched augmentation

def _crop_boxes(rng: np.random.Generator, n: int, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float] = _RATIO, attempts: int = 10) -> np.ndarray:
    """(n, 4) boxes (x0, y0, w, h) in pixels drawn like torchvision's RandomResizedCrop:
    area share from ``scale``, log-uniform aspect ratio, the first of ``attempts`` draws
    that fits, else the whole image clamped to the ratio range, centred."""
    area = height * width
    target = area * rng.uniform(scale[0], scale[1], (n, attempts))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, attempts)))
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]
    found = fits[rows, first]
    # fallback (no draw fitted): the central crop of the image's aspect clamped to the range
    in_ratio = width / height
    fw, fh = (width, round(width / ratio[0])) if in_ratio < ratio[0] else \
        (round(height * ratio[1]), height) if in_ratio > ratio[1] else (width, height)
    w, h = np.where(found, w, min(fw, width)), np.where(found, h, min(fh, height))
    x0 = np.where(found, np.floor(rng.uniform(0, 1, n) * (width - w + 1)), (width - w) // 2)
    y0 = np.where(found, np.floor(rng.uniform(0, 1, n) * (height - h + 1)), (height - h) // 2)
    return np.stack([x0, y0, w, h], axis=1)


def resample(images: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (x0, y0, w, h), mirrored where ``flips``, resized bilinearly to ``size``:
    one `grid_sample` for the batch. A whole-image box at the same size copies the pixels."""
    n, _, height, width = images.shape
    box = torch.as_tensor(boxes, dtype=torch.float32)
    theta = torch.zeros(n, 2, 3)
    sign = torch.where(torch.as_tensor(flips, dtype=torch.bool), -1.0, 1.0)
    theta[:, 0, 0] = sign * box[:, 2] / width
    theta[:, 0, 2] = (2 * box[:, 0] + box[:, 2]) / width - 1
    theta[:, 1, 1] = box[:, 3] / height
    theta[:, 1, 2] = (2 * box[:, 1] + box[:, 3]) / height - 1
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, 3, *size], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _flip_only(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    flips = torch.as_tensor(rng.random(len(images)) < 0.5, device=images.device).view(-1, 1, 1, 1)
    return torch.where(flips, images.flip(-1), images)


def _crop_and_flip(scale: tuple[float, float]) -> Callable[[torch.Tensor, np.random.Generator], torch.Tensor]:
    def augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        boxes = _crop_boxes(rng, n, height, width, scale)
        return resample(images, boxes, rng.random(n) < 0.5, (height, width))

    return augment


#: presets that run on the device: the CPU presets of the same names (`transforms.ALBU_PRESETS`)
DEVICE_AUGMENTS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None] = {
    "none": None,
    "flip": _flip_only,
    "light": _crop_and_flip((0.7, 1.0)),
    "reference": _crop_and_flip((0.08, 1.0)),
}


def unsupported_on_device(augment) -> str | None:
    """Why ``augment`` (an AugmentConfig) cannot run with ``data.cache=device``, or None."""
    found = []
    if augment.preset not in DEVICE_AUGMENTS:
        found.append(f"augment.preset={augment.preset}")
    for key in ("train_ops", "eval_ops"):
        if getattr(augment, key):
            found.append(f"augment.{key}")
    if augment.trivial_augment:
        found.append("augment.trivial_augment=true")
    if augment.random_erasing > 0:
        found.append(f"augment.random_erasing={augment.random_erasing}")
    if not found:
        return None
    return (f"data.cache=device augments batches on the training device, which supports augment.preset "
            f"{', '.join(DEVICE_AUGMENTS)} and no train_ops, eval_ops, trivial_augment or random_erasing; "
            f"found {', '.join(found)}. Use one of those presets, or data.cache=memory to augment in "
            f"CPU DataLoader workers")


# ------------------------------------------------------------------ the images and their batches

def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DeviceImages:
    """A set of uint8 images as one (N, 3, H, W) tensor, its targets and its undecodable rows.

    Built from the memory cache's (N, H, W, 3) array; `to` moves it to the training
    device once (the DataModule does so when the Trainer has chosen the device).
    """

    def __init__(self, array: np.ndarray, targets: Sequence | np.ndarray, bad_indices: Sequence[int] = ()):
        self.images = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()
        rows = np.asarray(targets)  # as `ImageDataset`: class indices (or ordinal rows) as int64, soft-target rows float
        self.targets = torch.as_tensor(rows if np.issubdtype(rows.dtype, np.floating) else rows.astype(np.int64))
        self.bad = torch.zeros(len(self.images), dtype=torch.bool)
        self.bad[list(bad_indices)] = True
        self.any_bad = bool(len(bad_indices))  # known on the host: no device sync per batch
        self.cache = None  # nothing to publish (`PodiumDataModule.publish_caches`)

    @classmethod
    def from_cache(cls, cache, targets) -> DeviceImages:
        return cls(cache.array(), targets, cache.bad_indices)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> DeviceImages:
        device = torch.device(device)
        if self.images.device != device:
            self.images, self.targets, self.bad = (t.to(device) for t in (self.images, self.targets, self.bad))
        return self

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(images, targets, skipped) of ``indices`` without the undecodable ones."""
        indices = indices.to(self.images.device)
        skipped = 0
        if self.any_bad:
            keep = ~self.bad[indices]
            skipped = len(indices) - int(keep.sum())
            indices = indices[keep]
        return self.images[indices], self.targets[indices], skipped


class DeviceBatches:
    """Batches of a `DeviceImages` set: an iterable Lightning takes like a DataLoader.

    Training batches follow ``sampler`` (a `SeededSampler` built for this rank's
    share: Lightning calls its ``set_epoch``), and
    are augmented on the device with parameters drawn from the batch's sample seeds.
    Evaluation batches keep the set's order, ``rank_share`` (rank, world size) taking
    indices rank, rank + W, ... (default: the process group's); a larger stored image is cut to its
    centre ``crop`` (`data.eval_crop_pct`).
    """

    def __init__(self, images: DeviceImages, batch_size: int, *, sampler=None, augment=None,
                 drop_last: bool = False, crop: tuple[int, int] | None = None,
                 rank_share: tuple[int, int] | None = None):
        self.images, self.batch_size, self.sampler = images, int(batch_size), sampler
        self.augment, self.drop_last, self.crop = augment, drop_last, crop
        self.rank_share = rank_share
        self.batch_sampler = None  # Lightning reads a loader's samplers (set_epoch, shuffle checks)

    def _share(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)  # the sampler holds this rank's share already
        rank, world = self.rank_share or _rank_and_world()
        return len(range(rank, len(self.images), world))

    def __len__(self) -> int:
        n = self._share()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if self.sampler is None:
            yield from self._eval_batches()
            return
        pairs = list(self.sampler)
        order = torch.tensor([i for i, _ in pairs], dtype=torch.long).to(self.images.device)
        seeds = [s for _, s in pairs]
        for b in range(len(self)):
            lo, hi = b * self.batch_size, (b + 1) * self.batch_size
            images, targets, skipped = self.images.batch(order[lo:hi])
            if self.augment is not None and len(images):
                images = self.augment(images, np.random.default_rng(seeds[lo:hi]))
            yield images, targets, skipped

    def _eval_batches(self):
        rank, world = self.rank_share or _rank_and_world()
        order = torch.arange(rank, len(self.images), world)
        for b in range(len(self)):
            images, targets, skipped = self.images.batch(order[b * self.batch_size:(b + 1) * self.batch_size])
            yield self._center(images), targets, skipped

    def _center(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop is None or tuple(images.shape[-2:]) == tuple(self.crop):
            return images
        (height, width), (h, w) = images.shape[-2:], self.crop
        top, left = (height - h) // 2, (width - w) // 2
        return images[..., top:top + h, left:left + w]


def device_augment(preset: str):
    """The batched augmentation of ``preset`` (None: no augmentation)."""
    if preset not in DEVICE_AUGMENTS:
        raise PodiumError(f"augment.preset={preset} does not run on the device; use one of {', '.join(DEVICE_AUGMENTS)}")
    return DEVICE_AUGMENTS[preset]
