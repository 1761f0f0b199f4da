"""`data.cache=device`: images held on the training device, batches cut and augmented there.

These run on the CPU (the "device" of a CPU run); tests/test_cuda.py repeats the
training check on a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fast_overrides
from lightning.pytorch.callbacks import Callback

import podium
from podium.data.dataset import SeededSampler, build_eval_dataset
from podium.data.device import (
    DEVICE_AUGMENTS,
    DeviceBatches,
    DeviceImages,
    _crop_boxes,
    device_augment,
    resample,
    unsupported_on_device,
)
from podium.data.transforms import ALBU_PRESETS
from podium.errors import PodiumError
from podium.schema import load_config


def _gradient_images(n: int = 6, size: int = 16) -> np.ndarray:
    """(n, size, size, 3) uint8 images whose pixels all differ (a crop or flip is visible)."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 15, y * 15, (x + y) * 7], axis=-1).astype(np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


class _SeeBatches(Callback):
    def __init__(self):
        self.loaders, self.dtypes, self.first_indices = set(), set(), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.loaders.add(type(trainer.train_dataloader).__name__)
        self.dtypes.add(batch[0].dtype)
        if batch_idx == 0:
            self.first_indices.append(batch[1].tolist())


def test_training_with_the_device_cache_uses_device_batches_and_no_workers(tmp_path, image_folder):
    cfg = load_config(None, fast_overrides(tmp_path, **{"data.cache": "device", "train.epochs": 2,
                                                        "data.num_workers": 2, "data.train": image_folder}))
    seen = _SeeBatches()
    run = podium.train(cfg, callbacks=[seen], progress=False)
    assert run.summary["val_images"] > 0 and run.summary["best_metric"] is not None
    assert seen.loaders == {"DeviceBatches"}, seen.loaders
    assert seen.dtypes == {torch.uint8}  # the model normalizes, as on the CPU path
    # Lightning advanced the sampler: the two epochs drew different orders
    assert seen.first_indices[0] != seen.first_indices[1]


def test_device_batches_follow_the_seeded_sampler_with_reproducible_augmentation():
    images = DeviceImages(_gradient_images(10), np.arange(10) % 3)

    def epoch(seed: int, number: int):
        sampler = SeededSampler(10, seed, epoch=number)
        sampler.set_epoch(number)
        loader = DeviceBatches(images, 4, sampler=sampler, augment=device_augment("light"), drop_last=True)
        return list(loader), [i for i, _ in SeededSampler(10, seed, epoch=number)]

    first, order = epoch(1, 0)
    again, _ = epoch(1, 0)
    later, _ = epoch(1, 1)
    assert len(first) == 2 and all(len(b[0]) == 4 for b in first)  # drop_last: 10 images -> 2 batches of 4
    assert torch.cat([t for _, t, _ in first]).tolist() == [i % 3 for i in order[:8]]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # same seed and epoch: same pixels
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, later))


def test_whole_image_boxes_copy_pixels_and_flips_mirror_them():
    images = torch.from_numpy(_gradient_images(2)).permute(0, 3, 1, 2).contiguous()
    boxes = np.array([[0, 0, 16, 16], [0, 0, 16, 16]], dtype=float)
    out = resample(images, boxes, np.array([False, True]), (16, 16))
    assert out.dtype == torch.uint8
    assert torch.equal(out[0], images[0])
    assert torch.equal(out[1], images[1].flip(-1))


def test_light_crops_differ_per_image_and_keep_the_size():
    images = torch.from_numpy(np.repeat(_gradient_images(1), 8, axis=0)).permute(0, 3, 1, 2).contiguous()
    out = DEVICE_AUGMENTS["light"](images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert len({bytes(o.numpy()) for o in out}) == 8  # one crop per image, not one per batch


@pytest.mark.parametrize("scale", [(0.7, 1.0), (0.08, 1.0)])
def test_crop_boxes_lie_inside_the_image_with_the_requested_area(scale):
    boxes = _crop_boxes(np.random.default_rng(0), 500, 24, 32, scale)
    x0, y0, w, h = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32).all() and (y0 + h <= 24).all()
    share = w * h / (24 * 32)
    assert share.min() >= scale[0] * 0.8 and share.max() <= 1.0
    assert np.ptp(x0) > 0 and np.ptp(share) > 0.1 * (scale[1] - scale[0])


def test_eval_batches_show_the_cpu_eval_view(tmp_path, image_folder):
    """eval_crop_pct < 1: stored larger, centre kept, pixel for pixel what the CPU eval dataset gives."""
    cfg = load_config(None, [*fast_overrides(tmp_path), "data.cache=device", "data.eval_crop_pct=0.75"])
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[:5]
    cpu = build_eval_dataset(paths, [0] * 5, cfg.data, cfg.augment)
    from podium.data.dataset import build_cache, eval_load_size

    load = eval_load_size(cfg.data.size_hw, cfg.data.eval_crop_pct)
    stored = DeviceImages.from_cache(build_cache(paths, cfg.data, "val", size=load), [0] * 5)
    assert tuple(stored.images.shape[-2:]) == load != cfg.data.size_hw
    (batch, _, _), = DeviceBatches(stored, 8, crop=cfg.data.size_hw)
    assert torch.equal(batch, torch.stack([cpu[i][0] for i in range(5)]))


def test_undecodable_rows_are_dropped_and_counted():
    images = DeviceImages(_gradient_images(6), np.arange(6), bad_indices=[2, 4])
    batches = list(DeviceBatches(images, 3))
    assert [t.tolist() for _, t, _ in batches] == [[0, 1], [3, 5]]
    assert [s for _, _, s in batches] == [1, 1]


def test_ranks_take_disjoint_equal_shares_of_the_epoch():
    images = DeviceImages(_gradient_images(11), np.arange(11))
    order = [i for i, _ in SeededSampler(11, 3)]
    shares = []
    for rank in (0, 1):
        loader = DeviceBatches(images, 2, sampler=SeededSampler(11, 3, rank=rank, world_size=2), drop_last=True)
        shares.append(torch.cat([t for _, t, _ in loader]).tolist())
    assert len(shares[0]) == len(shares[1]) == 4  # 11 // 2 = 5 per rank, 2 batches of 2
    assert not set(shares[0]) & set(shares[1])
    assert shares[0] == order[0::2][:4] and shares[1] == order[1::2][:4]


def test_device_presets_are_cpu_presets_and_others_fail_at_config_time():
    assert set(DEVICE_AUGMENTS) <= set(ALBU_PRESETS)
    assert unsupported_on_device(load_config(None, ["augment.preset=light"]).augment) is None
    with pytest.raises(PodiumError, match=r"data.cache=device .* found augment.preset=strong, augment.trivial_augment"):
        load_config(None, ["data.cache=device", "augment.preset=strong", "augment.trivial_augment=true"])
    with pytest.raises(PodiumError, match="augment.train_ops"):
        load_config(None, ["data.cache=device", "augment.train_ops=[{name: HorizontalFlip}]"])


@pytest.mark.parametrize("cache", ["none", "device"])
def test_soft_target_rows_reach_the_batches_unrounded(tmp_path, image_folder, cache):
    """Distillation / pseudo-label rows are floats (class, hard weight, soft weight, distribution):
    the device cache hands them over exactly as the CPU loader does, in the sampler's order."""
    import pandas as pd

    from podium.data.datamodule import PodiumDataModule
    from podium.data.transforms import build_train_pipeline
    from podium.model.soft_targets import SoftTargets

    cfg = load_config(None, [*fast_overrides(tmp_path), f"data.cache={cache}", "data.num_workers=0"])
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    frame = pd.DataFrame({"path": paths, "label": [p.split("/")[-2] for p in paths]})
    classes = sorted(frame["label"].unique())
    probs = np.random.default_rng(0).dirichlet(np.ones(len(classes)), len(frame)).astype(np.float32)
    soft = SoftTargets(probs, hard=np.full(len(frame), 0.3), soft=np.full(len(frame), 0.7))
    module = PodiumDataModule(frame, frame, classes, cfg.data, build_train_pipeline(cfg.augment, cfg.data.size_hw), cfg.augment,
                              batch_size=4, seed=5, train_soft=soft)
    batches = list(module.train_dataloader())
    targets = torch.cat([b[1] for b in batches])
    assert targets.dtype == torch.float32 and targets.shape[1] == 3 + len(classes)
    order = [i for i, _ in SeededSampler(len(frame), 5)][:len(targets)]
    expected = soft.rows(np.array([classes.index(c) for c in frame["label"]]))[order]
    np.testing.assert_array_equal(targets.numpy(), expected)
    assert not np.allclose(expected[:, 3:], np.round(expected[:, 3:]))  # the distribution is not whole numbers
