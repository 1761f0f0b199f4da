"""Augmentation pipelines: named presets or explicit op lists from YAML.

Images arrive already decoded and resized to the network size (uint8 HxWx3,
see `images.load_resized`), so the train pipeline only adds randomness and
the eval pipeline is usually empty. Pipelines return uint8 CHW tensors:
normalization happens on the device, inside the model wrapper, where it is
cheapest and where exported models keep it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from podium.errors import PodiumError, unknown_name

if TYPE_CHECKING:
    from podium.schema import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------ albumentations

def _albu_light(size, A):
    return [A.RandomResizedCrop(size=size, scale=(0.7, 1.0), ratio=(0.75, 1.333)), A.HorizontalFlip(p=0.5)]


def _albu_default(size, A):
    return [
        A.RandomResizedCrop(size=size, scale=(0.5, 1.0), ratio=(0.75, 1.333)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), translate_percent=(-0.05, 0.05), p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    ]


def _albu_strong(size, A):
    return _albu_default(size, A) + [
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(), A.MotionBlur(blur_limit=(3, 7))], p=0.3),
        A.ToGray(p=0.1),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), p=0.3),
    ]


def _albu_reference(size, A):
    """torchvision's reference classification recipe: RandomResizedCrop 0.08-1 + flip."""
    return [A.RandomResizedCrop(size=size, scale=(0.08, 1.0), ratio=(0.75, 1.333)), A.HorizontalFlip(p=0.5)]


def _albu_flip(size, A):
    return [A.HorizontalFlip(p=0.5)]


ALBU_PRESETS: dict[str, Callable] = {
    "none": lambda size, A: [],
    "flip": _albu_flip,
    "light": _albu_light,
    "reference": _albu_reference,
    "default": _albu_default,
    "strong": _albu_strong,
}


# ------------------------------------------------------------ torchvision v2

def _tv_light(size, T):
    return [T.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), T.RandomHorizontalFlip()]


def _tv_default(size, T):
    return [
        T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.RandomAffine(degrees=10, translate=(0.05, 0.05))], p=0.5),
        T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5),
    ]


def _tv_strong(size, T):
    return [T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), T.RandomHorizontalFlip(),
            T.RandAugment(), T.RandomErasing(p=0.25, value=0)]


TV_PRESETS: dict[str, Callable] = {
    "none": lambda size, T: [],
    "flip": lambda size, T: [T.RandomHorizontalFlip()],
    "light": _tv_light,
    "reference": lambda size, T: [T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), T.RandomHorizontalFlip()],
    "default": _tv_default,
    "strong": _tv_strong,
}


# ------------------------------------------------------------ explicit ops

def _build_op(spec: dict[str, Any], module, where: str):
    if not isinstance(spec, dict) or "name" not in spec:
        raise PodiumError(f"{where}: each op must be a mapping with a `name`, e.g. {{name: HorizontalFlip, p: 0.5}}; found {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    ops = {n: getattr(module, n) for n in dir(module) if n[:1].isupper() and callable(getattr(module, n))}
    if name not in ops:
        raise PodiumError(f"{where}: {unknown_name('op', name, ops)}")
    _refuse_function_params(ops[name], name, params, where)
    for key in ("transforms",):  # containers such as OneOf / Compose / RandomApply
        if key in params:
            params[key] = [_build_op(s, module, f"{where}.{name}") for s in params[key]]
    for key in ("size", "scale", "ratio"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    try:
        return ops[name](**params)
    except Exception as exc:  # the op rejected its parameters: say which op, keep the library's words
        raise PodiumError(f"{where}: {name}({', '.join(f'{k}={v!r}' for k, v in params.items())}) failed: {exc}") from None


def _refuse_function_params(op, name: str, params: dict[str, Any], where: str) -> None:
    """A config holds values, not code: a parameter that takes a Python function (Lambda's
    ``image``, torchvision's ``lambd``, FDA's ``read_fn``) cannot be given one, and a string in its
    place only fails mid-epoch, inside a loader worker. Nested ops (``transforms``) are built here."""
    import inspect

    try:
        signature = inspect.signature(op)
    except (TypeError, ValueError):
        return
    for key, value in params.items():
        param = signature.parameters.get(key)
        annotation = "" if param is None else str(param.annotation)
        if key == "transforms" or "Callable" not in annotation:
            continue
        if isinstance(value, str) and "str" in annotation:
            continue  # the op also takes a name here (torchvision's labels_getter="default")
        if value is None and "None" in annotation:
            continue  # null: no function (Equalize's mask, labels_getter), which the op allows
        raise PodiumError(
            f"{where}: {name}'s `{key}` takes a Python function, which a config cannot give ({key}={value!r} is not "
            f"code). Use ops that take plain values, or build the augmentation in Python (podium.data.transforms)")


def _build_ops(specs: list[dict], module, where: str) -> list:
    return [_build_op(spec, module, f"{where}[{i}]") for i, spec in enumerate(specs)]


# ------------------------------------------------------------ pipelines

class Pipeline:
    """uint8 HxWx3 array -> uint8 CHW tensor, with a per-sample seed so that
    augmentation is reproducible from torch's RNG (and thus resumable)."""

    def __init__(self, backend: str, ops: list, tensor_ops: list | None = None):
        self.backend = backend
        self.ops = ops
        # torchvision v2 ops on the uint8 CHW tensor after ``ops`` (TrivialAugmentWide, RandomErasing)
        self.tensor_ops = list(tensor_ops or [])
        self._tensor_compose = None
        if self.tensor_ops:
            from torchvision.transforms import v2 as T

            self._tensor_compose = T.Compose(self.tensor_ops)
        if backend == "albumentations":
            import albumentations as A

            self._compose = A.Compose(ops, seed=0) if ops else None
        else:
            from torchvision.transforms import v2 as T

            self._compose = T.Compose(ops) if ops else None

    @property
    def is_identity(self) -> bool:
        return self._compose is None and self._tensor_compose is None

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        if self._compose is not None and self.backend == "albumentations":
            if seed is not None:
                self._compose.set_random_seed(seed)
            image = self._compose(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        if self._compose is not None and self.backend == "torchvision":
            from torchvision import tv_tensors

            if seed is None:
                tensor = self._compose(tv_tensors.Image(tensor)).as_subclass(torch.Tensor)
            else:
                # torchvision draws from torch's global RNG: seed it per sample, inside a fork so the
                # caller's RNG (dropout, in the main process) is untouched; the result depends only
                # on the sample's seed, never on which worker ran it or what it ran before.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    tensor = self._compose(tv_tensors.Image(tensor)).as_subclass(torch.Tensor)
        if self._tensor_compose is not None:
            tensor = self._apply_tensor_ops(tensor, seed)
        return tensor

    def _apply_tensor_ops(self, tensor: torch.Tensor, seed: int | None) -> torch.Tensor:
        """torchvision draws from torch's global RNG: with a seed, draw from a private one."""
        from torchvision import tv_tensors

        compose = self._tensor_compose
        if compose is None:
            return tensor
        if seed is None:
            return compose(tv_tensors.Image(tensor)).as_subclass(torch.Tensor)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return compose(tv_tensors.Image(tensor)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"Pipeline({self.backend}, {self.ops!r})"


def _module(backend: str):
    if backend == "albumentations":
        import albumentations as A

        return A
    from torchvision.transforms import v2 as T

    return T


def build_train_pipeline(cfg: AugmentConfig, size: tuple[int, int]) -> Pipeline:
    module = _module(cfg.backend)
    if cfg.train_ops is not None:
        ops = _build_ops(cfg.train_ops, module, "augment.train_ops")
    else:
        presets = ALBU_PRESETS if cfg.backend == "albumentations" else TV_PRESETS
        ops = presets[cfg.preset](tuple(size), module)
    return Pipeline(cfg.backend, ops, tensor_ops=extra_train_ops(cfg))


def extra_train_ops(cfg: AugmentConfig) -> list:
    """The switches added after the preset or explicit ops: `trivial_augment`, `random_erasing`."""
    if not cfg.trivial_augment and cfg.random_erasing <= 0:
        return []
    from torchvision.transforms import v2 as T

    ops = []
    if cfg.trivial_augment:
        ops.append(T.TrivialAugmentWide())
    if cfg.random_erasing > 0:
        ops.append(T.RandomErasing(p=cfg.random_erasing, value=0))
    return ops


def build_eval_pipeline(cfg: AugmentConfig, size: tuple[int, int], crop_pct: float = 1.0) -> Pipeline:
    """The deterministic eval view. With ``crop_pct`` < 1 images arrive larger
    (`podium.data.dataset.eval_load_size`) and their center ``size`` is kept
    first, as torchvision's Resize(256) + CenterCrop(224) does."""
    module = _module(cfg.backend)
    ops = [_center_crop(module, cfg.backend, (size[0], size[1]))] if crop_pct < 1 else []
    if cfg.eval_ops:
        ops += _build_ops(cfg.eval_ops, module, "augment.eval_ops")
    return Pipeline(cfg.backend, ops)


def _center_crop(module, backend: str, size: tuple[int, int]):
    return module.CenterCrop(*size) if backend == "albumentations" else module.CenterCrop(size)


def resolve_normalization(cfg: AugmentConfig, dataset_stats: Callable[[], tuple] | None = None):
    """(mean, std) in [0,1] units; ``dataset_stats`` is only called for `dataset`."""
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None:
            raise PodiumError("augment.mean and augment.std go together: set both (3 values each, in [0,1])")
        if min(cfg.std) <= 0:
            raise PodiumError(f"augment.std must be > 0, found {list(cfg.std)}")
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if dataset_stats is None:
        raise PodiumError("augment.normalize=dataset needs training images to measure")
    return dataset_stats()


def channel_stats(images: list[np.ndarray]) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0,1] over uint8 HxWx3 images."""
    from podium.data.statistics import mean_std

    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for img in images:
        pixels = img.reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels ** 2).sum(0)
        count += pixels.shape[0]
    return mean_std(total, total_sq, count)
