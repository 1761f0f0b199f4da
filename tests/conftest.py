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


def colour_images(root: Path, per_class: int, seed: int = 0, labeled: bool = True) -> list[Path]:
    """32x32 images of three plain colours (class = colour) with pixel noise: what a tiny
    network learns in two epochs, so tests can rely on what it predicts."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for name, rgb in COLORS.items():
        folder = root / name if labeled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (32, 32, 3))
            path = folder / f"{name}_{seed}_{i:02d}.png"
            cv2.imwrite(str(path), np.clip(np.array(rgb[::-1])[None, None] + noise, 0, 255).astype(np.uint8))
            paths.append(path)
    return paths


def learnable_overrides(data: Path, runs: Path, name: str, epochs: int = 3) -> list[str]:
    """A config a tiny network learns the colours with (test_resnet, Adam), in seconds."""
    return [f"data.train={data}", "model.name=test_resnet", "model.pretrained=false", "data.image_size=32",
            f"train.epochs={epochs}", "train.batch_size=8", "train.precision='32'", "data.num_workers=0",
            "output.tensorboard=false", "output.report=false", f"output.dir={runs}", f"output.name={name}",
            "train.accelerator=cpu", "train.devices=1", "train.optimizer=adam", "train.lr=0.01"]


@pytest.fixture(scope="session")
def noisy_cv(tmp_path_factory):
    """A finished 3-fold cv run on colour images of which 6 of 54 carry a wrong label (a CSV
    path,label): (cv folder, ids of the flipped images). Shared by audit, distil and pseudo-label tests."""
    import pandas as pd

    from podium.evaluation.cv import run_cv
    from podium.schema import load_config

    root = tmp_path_factory.mktemp("noisy")
    paths = colour_images(root / "data", per_class=18)
    table = pd.DataFrame({"path": [p.relative_to(root / "data").as_posix() for p in paths],
                          "label": [p.parent.name for p in paths]})
    names = list(COLORS)
    flipped = table.index[::9][:6]
    table.loc[flipped, "label"] = [names[(names.index(c) + 1) % 3] for c in table.loc[flipped, "label"]]
    table.to_csv(root / "data" / "labels.csv", index=False)
    cfg = load_config(None, learnable_overrides(root / "data" / "labels.csv", root / "runs", "noisy"))
    result = run_cv(cfg, folds=3, progress=False, log=lambda *a: None)
    return result.run_dir, set(table.loc[flipped, "path"])
