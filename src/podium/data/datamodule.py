"""The Lightning DataModule: train/val loaders over already-split sample tables.

Kept apart from `podium.data.dataset` so reading and checking data (EDA,
prediction) never imports Lightning.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from podium.data.dataset import (
    BAD_IMAGE_HINT,
    EvalShare,
    ImageDataset,
    SeededSampler,
    balanced_weights,
    build_cache,
    build_eval_dataset,
    encode_labels,
    eval_load_size,
    make_loader,
    resolve_num_workers,
)
from podium.data.device import DeviceBatches, DeviceImages, device_augment
from podium.data.images import set_max_image_pixels
from podium.data.transforms import Pipeline
from podium.errors import EveryRankError
from podium.schema import AugmentConfig, DataConfig


class PodiumDataModule(pl.LightningDataModule):
    """Train/val loaders built from already-split sample tables."""

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, classes: list[str], cfg: DataConfig,
                 train_pipeline: Pipeline, augment: AugmentConfig, batch_size: int,
                 sampler: str = "random", seed: int = 0, start_epoch: int = 0, train_values=None, train_soft=None):
        super().__init__()
        self.seed = seed
        self.start_epoch = start_epoch  # the epoch a resumed run continues with
        self.train_frame, self.val_frame = train, val
        self.classes = classes
        self.cfg = cfg
        self.batch_size = batch_size
        self.sampler = sampler
        self.num_workers = resolve_num_workers(cfg.num_workers)
        set_max_image_pixels(cfg.max_image_pixels)  # before workers fork: they inherit it
        self.train_targets = encode_labels(train["label"], classes, "training data")
        self.val_targets = encode_labels(val["label"], classes, "validation data")
        # ordinal heads also learn from exact values: rows of (composite class, value, ...)
        rows = self.train_targets if train_values is None else np.column_stack([self.train_targets, train_values])
        if train_soft is not None:  # float rows (class, hard weight, soft weight, distribution): `SoftTargets`
            rows = train_soft.rows(self.train_targets)
        self.preset = augment.preset
        self.train_set: ImageDataset | DeviceImages
        self.val_set: ImageDataset | DeviceImages
        if cfg.cache == "device":
            self._device_sets(train["path"], rows, val["path"])
            self.num_workers = 0  # batches are cut and augmented on the device: no loader workers
            return
        self.train_set = ImageDataset(train["path"], rows, train_pipeline, cfg.size_hw, train=True,
                                      draft=cfg.draft_decode, on_bad_image=cfg.on_bad_image, resize=cfg.resize,
                                      cache=build_cache(train["path"], cfg, "train"), bad_image_hint=BAD_IMAGE_HINT)
        self.val_set = build_eval_dataset(val["path"], self.val_targets, cfg, augment, cache=True,
                                          on_bad_image=cfg.on_bad_image, bad_image_hint=BAD_IMAGE_HINT)

    def setup(self, stage: str) -> None:
        """Refuse a split too small for the processes before any rank trains: every rank computes
        the same shares, so all refuse alike instead of one crashing inside a collective."""
        check_rank_shares(len(self.train_set), len(self.val_set), self._rank_share()[1])

    def _device_sets(self, train_paths, train_rows, val_paths) -> None:
        """`data.cache=device`: decoded uint8 images that move to the training device (`DeviceImages`)."""
        cfg = self.cfg
        self.train_set = DeviceImages.from_cache(build_cache(train_paths, cfg, "train"), train_rows)
        load_size = eval_load_size(cfg.size_hw, cfg.eval_crop_pct)
        self.val_set = DeviceImages.from_cache(build_cache(val_paths, cfg, "val", size=load_size), self.val_targets)

    def _device(self):
        """The device the Trainer trains on (the CPU before a Trainer is attached)."""
        import torch

        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _rank_share(self) -> tuple[int, int]:
        """(rank, world size) of the attached Trainer: each rank loads its own share
        (the Trainer runs with use_distributed_sampler=False: no padded repeats)."""
        trainer = getattr(self, "trainer", None)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        weights = balanced_weights(self.train_targets, len(self.classes)) if self.sampler == "balanced" else None
        rank, world = self._rank_share()
        sampler = SeededSampler(len(self.train_set), self.seed, weights, epoch=self.start_epoch,
                                rank=rank, world_size=world)
        drop_last = len(sampler) > self.batch_size
        if isinstance(self.train_set, DeviceImages):
            return DeviceBatches(self.train_set.to(self._device()), self.batch_size, sampler=sampler,
                                 augment=device_augment(self.preset), drop_last=drop_last)
        return make_loader(self.train_set, self.batch_size, sampler=sampler, num_workers=self.num_workers,
                           drop_last=drop_last, seed=self.seed)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        """This rank's share of validation (each image on one rank once; metrics gather the shares)."""
        return self.eval_loader(whole=False)

    def eval_loader(self, whole: bool) -> DataLoader | DeviceBatches:
        """Validation batches: this rank's share, or ``whole`` (every image, in order: the end-of-run
        evaluation rank 0 does alone, after fitting, with the Trainer still attached)."""
        rank, world = (0, 1) if whole else self._rank_share()
        if isinstance(self.val_set, DeviceImages):
            return DeviceBatches(self.val_set.to(self._device()), self.batch_size, crop=self.cfg.size_hw,
                                 rank_share=(rank, world))
        return make_loader(self.val_set, self.batch_size, sampler=EvalShare(len(self.val_set), rank, world),
                           num_workers=self.num_workers)

    def publish_caches(self) -> None:
        """Publish caches the epochs have filled, so later runs, folds and trials reuse them."""
        for dataset in (self.train_set, self.val_set):
            finalize = getattr(dataset.cache, "finalize", None)
            published = finalize() if finalize is not None else None
            if published is not None:
                dataset.cache = published


def check_rank_shares(n_train: int, n_val: int, world: int) -> None:
    """Under DDP each process needs two training images (batch norm cannot train on one) and one
    validation image (Lightning refuses an empty loader): say so, not a rank's crash."""
    if world == 1:
        return
    train_share, val_share = n_train // world, n_val // world
    if train_share >= 2 and val_share >= 1:
        return
    raise EveryRankError(
        f"{world} processes (train.devices x train.num_nodes) share {n_train} training and {n_val} validation "
        f"images: each process gets {train_share} training and as few as {val_share} validation image(s), "
        f"but needs at least 2 and 1. Use fewer processes (train.devices=1) or add images.")
