"""Shared fixtures: tiny generated image folders and a fast config."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PYTHONWARNINGS", "ignore")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COLORS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "fox": (40, 60, 220)}


def make_image(color, size=32, seed=0, shape="square") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    lo, hi = size // 4, 3 * size // 4
    arr[lo:hi, lo:hi] = np.clip(np.array(color) + rng.integers(-20, 20, 3), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def make_folder(root: Path, per_class: dict[str, int] | None = None, size: int = 32, seed: int = 0,
                ext: str = "png") -> Path:
    per_class = per_class or {c: 12 for c in COLORS}
    for ci, (name, n) in enumerate(per_class.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_image(COLORS[name], size, seed=seed * 1000 + ci * 100 + i).save(d / f"{name}_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data dir" / "train")


@pytest.fixture
def val_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data dir" / "val", {c: 4 for c in COLORS}, seed=7)


def fast_overrides(tmp_path: Path, **extra) -> list[str]:
    """A config that trains in seconds on 2 CPU cores."""
    base = {
        "model.name": "test_efficientnet", "model.pretrained": "false", "data.image_size": "32",
        "data.num_workers": "0", "train.batch_size": "8", "train.epochs": "1", "train.precision": "32",
        "train.accelerator": "cpu", "train.devices": "1", "train.lr": "0.05", "output.tensorboard": "false",
        "output.dir": str(tmp_path / "runs dir"), "augment.preset": "light",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (real data and weights) is absent on this machine")
    return SHARED
