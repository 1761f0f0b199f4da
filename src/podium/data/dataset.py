"""From files on disk to batches: sources, class map, splits, Dataset, DataModule.

One image's path: `load_samples` finds it (folder or CSV) and puts it in a
samples table (path, id, label[, group]); `holdout_split` decides train or
validation; `ImageDataset` decodes and resizes it (`images.load_resized`, or
the decoded-image cache), augments it (`transforms.Pipeline`) and hands a
uint8 tensor to the DataLoader; the model wrapper normalizes it on the device.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from podium.data.images import BadImageError, image_size, is_image_file, load_resized, load_rgb, set_max_image_pixels
from podium.data.transforms import Pipeline, build_eval_pipeline
from podium.errors import PodiumError, summarize_list
from podium.schema import AugmentConfig, DataConfig

SAMPLE_COLUMNS = ("path", "id", "label")


# ------------------------------------------------------------------ sources

def scan_image_folder(root: str | Path, labeled: bool = True, log=print) -> pd.DataFrame:
    """ImageFolder layout: ``root/<class>/**/<image>``; unlabeled: every image below root.
    Image links that point nowhere are left out and reported through ``log``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise PodiumError(f"data folder not found: {root}. Check the path (data.train / --data).")
    if not root.is_dir():
        raise PodiumError(f"{root} is not a folder; pass a folder of images or a .csv file")
    from podium.data.surprises import report_dangling_links

    report_dangling_links(root, log)
    if not labeled:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
        if not paths:
            raise PodiumError(f"no images ({', '.join(_exts())}) found under {root}")
        return pd.DataFrame({"path": [str(p.resolve()) for p in paths],
                             "id": [p.relative_to(root).as_posix() for p in paths], "label": None})
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
        hint = " It holds images directly: put them in one sub-folder per class." if loose else ""
        raise PodiumError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>).{hint}")
    rows, empty = [], []
    for class_dir in class_dirs:
        images = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if not images:
            empty.append(class_dir.name)
        rows += [(str(p.resolve()), p.relative_to(root).as_posix(), class_dir.name) for p in images]
    if empty:
        raise PodiumError(
            f"class folder(s) without images in {root}: {summarize_list(empty)}. "
            f"Add images ({', '.join(_exts())}) or remove the folder(s).")
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def _exts() -> list[str]:
    from podium.data.images import IMAGE_EXTENSIONS

    return list(IMAGE_EXTENSIONS)


def read_csv_samples(csv_path: str | Path, cfg: DataConfig, labeled: bool | None = True,
                     root: str | Path | None = None) -> pd.DataFrame:
    """A CSV with a path column (relative to ``root``, default the CSV's folder) and a label column.

    Other columns (e.g. attributes of a multi-attribute task) are kept as they are.
    ``labeled=None`` keeps a label column when present without requiring it.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise PodiumError(f"CSV file not found: {csv_path}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PodiumError(f"cannot read CSV {csv_path}: {exc}") from None
    if labeled is None:
        labeled = cfg.label_column in table.columns
    need = [cfg.path_column] + ([cfg.label_column] if labeled else [])
    need += [cfg.id_column] if cfg.id_column else []
    need += [cfg.group_column] if cfg.group_column and labeled is not False else []  # nothing is grouped at predict time
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise PodiumError(
            f"CSV {csv_path} lacks column(s) {missing}; it has {list(table.columns)}. "
            f"Set data.path_column / data.label_column / data.id_column / data.group_column to the right names.")
    if table.empty:
        raise PodiumError(f"CSV {csv_path} has a header but no rows")
    base = Path(root or cfg.root or csv_path.parent).expanduser()
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in table[cfg.path_column]]
    absent = [raw for raw, p in zip(table[cfg.path_column], paths) if not p.is_file()]
    if absent:
        raise PodiumError(
            f"{len(absent)} of {len(paths)} image paths in {csv_path} do not exist (relative to {base}): "
            f"{summarize_list(absent, 3)}. Fix the paths or set data.root to the folder they are relative to.")
    frame = pd.DataFrame({
        "path": [str(p.resolve()) for p in paths],
        "id": table[cfg.id_column] if cfg.id_column else table[cfg.path_column],
        "label": table[cfg.label_column] if labeled else None,
    })
    if labeled and (frame["label"] == "").any():
        rows = (np.flatnonzero(frame["label"] == "") + 2).tolist()
        raise PodiumError(f"CSV {csv_path}: empty label in row(s) {summarize_list(rows)}")
    if cfg.group_column and cfg.group_column in table.columns:
        frame["group"] = table[cfg.group_column].to_numpy()
    used = {cfg.path_column, cfg.label_column, cfg.id_column, cfg.group_column}
    for column in table.columns:
        if column not in used and column not in frame.columns:
            frame[column] = table[column].to_numpy()
    return frame


def load_samples(spec: str | Path, cfg: DataConfig, labeled: bool | None = True,
                 age_thresholds: tuple[int, int] = (30, 60), log=print) -> pd.DataFrame:
    """Dispatch on what ``spec`` is: a CSV file, the mask-competition layout, or a folder.

    ``labeled=None``: labels where the source has them (CSV attribute columns).
    """
    spec = Path(spec).expanduser()
    set_max_image_pixels(cfg.max_image_pixels)
    if spec.suffix.lower() == ".csv":
        frame = read_csv_samples(spec, cfg, labeled)
    elif cfg.format == "mask_competition" and labeled is not False:
        frame = _read_competition(spec, age_thresholds, log)
    elif cfg.format == "mask_competition":
        from podium.data.competition import read_mask_eval

        frame = read_mask_eval(spec)
    else:
        frame = scan_image_folder(spec, labeled is not False, log=log)
    if frame.empty:
        raise PodiumError(f"no images found in {spec}")
    from podium.data.surprises import report_empty_groups

    frame = apply_label_case(frame, spec, cfg.label_case, log)
    report_empty_groups(frame, spec, cfg.group_column, log)
    duplicated = frame["id"][frame["id"].duplicated()].tolist()
    if duplicated:
        raise PodiumError(f"duplicate image ids in {spec}: {summarize_list(duplicated)}; ids must be unique")
    return frame.reset_index(drop=True)


def apply_label_case(frame: pd.DataFrame, where, policy: str, log=print) -> pd.DataFrame:
    """``data.label_case``: labels that differ only by case or surrounding spaces ('cat', 'Cat',
    'cat ') are almost always one class typed three ways, and would silently train as three.
    ``error`` refuses them naming the variants; ``merge`` strips and case-folds every label;
    ``keep`` trains them as separate classes (e.g. letters 'A' and 'a'), with a warning."""
    from podium.data.surprises import describe_label_variants, label_variants, merged_label

    clashes = label_variants(frame)
    if policy == "merge":
        if clashes:
            log(f"note: merged labels in {where} that differ only by case or surrounding spaces "
                f"(data.label_case=merge): {describe_label_variants(frame, clashes)}")
        frame = frame.copy()
        frame["label"] = frame["label"].map(lambda v: v if v is None or pd.isna(v) else merged_label(str(v)))
        return frame
    if not clashes:
        return frame
    found = (f"{sum(len(v) for v in clashes.values())} labels in {where} differ only by case or surrounding "
             f"spaces: {describe_label_variants(frame, clashes)}")
    if policy == "keep":
        log(f"warning: {found}; they train as separate classes (data.label_case=keep)")
        return frame
    raise PodiumError(
        f"{found}. They would train as separate classes. Fix the labels (or folder names), set "
        f"data.label_case=merge to merge them (stripped, lower-cased), or data.label_case=keep if they "
        f"are different classes")


def _read_competition(root: Path, age_thresholds, log) -> pd.DataFrame:
    from podium.data.competition import format_problems, read_mask_train

    if not root.is_dir():
        raise PodiumError(f"data folder not found: {root}")
    frame, problems = read_mask_train(root, age_thresholds)
    if problems:
        log(format_problems(problems))
    return frame


# ------------------------------------------------------------------ checks

#: How a training run gets past unreadable images (check_images, and decoding during training).
BAD_IMAGE_HINT = "Remove or replace unreadable images, or set data.on_bad_image=skip to leave them out"


def skipped_images_note(skipped: Sequence[str]) -> str:
    """The one line train and cv log for images `check_images` left out (data.on_bad_image=skip),
    naming the first few so the user can find them."""
    return f"skipped {len(skipped)} unreadable image(s) (data.on_bad_image=skip): {summarize_list(list(skipped), 3)}"


def check_images(frame: pd.DataFrame, on_bad_image: str = "error", workers: int = 8) -> tuple[pd.DataFrame, list[str]]:
    """Find unreadable images before training.

    ``error``: read every header (fast), so missing or non-image files stop the run at once;
    a truncated file passes and stops the run, naming it, when first decoded.
    ``skip``: decode every image (at reduced size where the format allows), so truncated
    files are left out too and the count is exact.
    """
    def probe(path: str) -> str | None:
        try:
            if on_bad_image == "skip":
                load_rgb(path, draft_size=(64, 64))
            else:
                image_size(path)
            return None
        except BadImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(probe, frame["path"]))
    bad = [e for e in errors if e]
    if bad and on_bad_image == "error":
        raise PodiumError(
            f"{len(bad)} unreadable image(s): {summarize_list(bad, 3)}. "
            f"{BAD_IMAGE_HINT}.")
    keep = np.array([e is None for e in errors], dtype=bool)
    return frame[keep].reset_index(drop=True), bad


# ------------------------------------------------------------------ classes & splits

def build_class_map(labels: Sequence[str]) -> list[str]:
    classes = sorted({str(label) for label in labels})
    if len(classes) < 2:
        raise PodiumError(f"need at least 2 classes to train a classifier, found {classes}")
    return classes


def encode_labels(labels: Sequence[str], classes: list[str], where: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(label) for label in labels} - set(index))
    if unknown:
        raise PodiumError(
            f"{where} has label(s) the run never saw: {summarize_list(unknown)}; the run knows "
            f"{summarize_list(classes, 20)}. Use data with the same classes or train a new run.")
    return np.array([index[str(label)] for label in labels], dtype=np.int64)


def holdout_split(frame: pd.DataFrame, fraction: float, seed: int, group_column: str | None = None,
                  log=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified holdout; with groups, no group straddles train and validation.
    Classes left out of validation (e.g. a class with a single image) are reported through ``log``."""
    from podium.data.splits import group_ids, has_groups

    labels = frame["label"].astype(str).to_numpy()
    if has_groups(frame):
        from sklearn.model_selection import StratifiedGroupKFold

        n_splits = max(2, round(1 / fraction))
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, val_idx = next(splitter.split(np.zeros(len(frame)), labels, group_ids(frame)))
        is_val = np.zeros(len(frame), dtype=bool)
        is_val[val_idx] = True
    else:
        from sklearn.model_selection import train_test_split

        counts = pd.Series(labels).value_counts()
        splittable = np.isin(labels, counts[counts >= 2].index)
        idx = np.flatnonzero(splittable)
        n_val = max(int(round(fraction * len(idx))), len(set(labels[idx])))
        if n_val >= len(idx):
            raise PodiumError(f"too few images ({len(frame)}) for a validation split of {fraction}; add data or set data.val")
        _, val_idx = train_test_split(idx, test_size=n_val, stratify=labels[idx], random_state=seed)
        is_val = np.zeros(len(frame), dtype=bool)
        is_val[val_idx] = True
    train, val = frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)
    check_no_leakage(train, val)
    from podium.data.surprises import report_unvalidated_classes

    report_unvalidated_classes(train, val, log)
    return train, val


def check_no_leakage(train: pd.DataFrame, val: pd.DataFrame) -> None:
    """Stop when a group (e.g. a person) or an image appears on both sides."""
    if "group" in train.columns and "group" in val.columns:
        shared = sorted(set(train["group"].astype(str)) & set(val["group"].astype(str)))
        if shared:
            raise PodiumError(
                f"leakage: {len(shared)} group(s) appear in both train and validation: {summarize_list(shared)}. "
                f"Split by group (data.group_column) or fix the validation set.")
    shared_paths = sorted(set(train["path"]) & set(val["path"]))
    if shared_paths:
        raise PodiumError(f"leakage: {len(shared_paths)} image(s) are in both train and validation: "
                          f"{summarize_list(shared_paths, 3)}")


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(targets, minlength=num_classes)


# ------------------------------------------------------------------ dataset

class SeededSampler(Sampler):
    """Shuffled (or class-balanced) order plus one augmentation seed per sample,
    both drawn from (seed, epoch) alone; under DDP, this rank's share of it.

    Because neither the order nor the augmentation depends on global RNG state
    or on which worker process decodes an image, a resumed run sees exactly
    the batches an uninterrupted one would, and workers never repeat each
    other's augmentations.

    Every rank draws the same epoch order and takes every ``world_size``-th
    entry from ``rank`` on, cut to ``n // world_size``: the shares are disjoint,
    equally long (so no rank waits on a gradient all-reduce another never
    joins) and together are the epoch's first ``world_size * (n // world_size)``
    draws; the few left over (fewer than ``world_size``) are dropped instead of
    padded with repeats as DistributedSampler does. Rank r's k-th batch of
    size B/W holds the draws a single process's batch of size B would hold.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, epoch: int = 0,
                 rank: int = 0, world_size: int = 1):
        check_rank_share(rank, world_size)
        self.n, self.seed, self.weights = n, seed, weights
        self.rank, self.world_size = rank, world_size
        # A resumed run starts at its next epoch: Lightning creates the loader iterator (and
        # DataLoader workers prefetch their first batches) before it calls set_epoch.
        self.epoch = epoch
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch, self._epoch_set = epoch, True

    def __len__(self) -> int:
        return self.n // self.world_size

    def epoch_draws(self) -> list[tuple[int, int]]:
        """The whole epoch's (index, seed) pairs, as every rank draws them."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(torch.as_tensor(self.weights, dtype=torch.double), self.n, True, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        return list(zip(order.tolist(), seeds.tolist()))

    def __iter__(self):
        draws = self.epoch_draws()
        if not self._epoch_set:  # not driven by Lightning: advance on our own
            self.epoch += 1
        return iter(draws[self.rank::self.world_size][:len(self)])


class EvalShare(Sampler):
    """This rank's share of an evaluation set: indices ``rank, rank + W, ...``.

    Unlike DistributedSampler, nothing is padded, so no image is scored twice;
    shares may differ by one image (validation has no gradient all-reduce, and
    the metrics gather every rank's states once per epoch).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        check_rank_share(rank, world_size)
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))


def check_rank_share(rank: int, world_size: int) -> None:
    """A rank share needs 0 <= rank < world_size (a programming error otherwise, not a user one)."""
    if not (isinstance(rank, int) and isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"rank share needs 0 <= rank < world_size, found rank={rank!r}, world_size={world_size!r}")


class ImageDataset(Dataset):
    """Decoded, resized, augmented images as uint8 CHW tensors.

    Training indices arrive as (index, seed) pairs from `SeededSampler`; the
    seed drives the augmentation, so it is reproducible and resumable.
    """

    def __init__(self, paths: Sequence[str], targets: Sequence[int] | np.ndarray | None, pipeline: Pipeline,
                 size: tuple[int, int], *, train: bool = False, draft: bool = True,
                 on_bad_image: str = "error", cache=None, resize: str = "squash", bad_image_hint: str = ""):
        self.paths = list(paths)
        self.targets = None if targets is None else np.asarray(targets)
        if self.targets is not None and not np.issubdtype(self.targets.dtype, np.floating):
            self.targets = self.targets.astype(np.int64)  # class indices (rows with exact values); floats: soft targets
        self.pipeline = pipeline
        self.size = (size[0], size[1])
        self.train = train
        self.draft = draft
        self.resize = resize
        self.on_bad_image = on_bad_image
        self.bad_image_hint = bad_image_hint  # how to get past a bad image, where a setting allows it
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.get(index)
        return load_resized(self.paths[index], self.size, draft=self.draft, mode=self.resize)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            image = self.load(index)
        except BadImageError as exc:
            if self.on_bad_image == "skip":
                return None
            if self.bad_image_hint:
                raise BadImageError(f"{exc}. {self.bad_image_hint}") from None
            raise
        tensor = self.pipeline(image, seed=seed)
        if self.targets is None:
            return tensor, -1
        target = self.targets[index]  # a class index, or a row (class, exact values...) for ordinal heads
        return tensor, (int(target) if target.ndim == 0 else torch.from_numpy(target))


def collate_skipping_bad(batch: list):
    """Default collate that drops samples whose image failed to decode and counts them."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), skipped
    images = torch.stack([b[0] for b in kept])
    first = kept[0][1]
    targets = (torch.stack([b[1] for b in kept]) if isinstance(first, torch.Tensor)
               else torch.tensor([b[1] for b in kept], dtype=torch.long))
    return images, targets, skipped


def resolve_num_workers(requested: int | None) -> int:
    if requested is not None:
        return requested
    from podium.data.cache import default_num_workers

    return default_num_workers()


def make_loader(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False, sampler=None,
                num_workers: int = 0, drop_last: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over ``dataset``; ``sampler`` (a `SeededSampler` or `EvalShare`) picks this rank's share."""
    from podium.data.cache import worker_init
    from podium.data.images import cv2_module

    cv2_module()  # single-threaded OpenCV before any worker is forked
    if shuffle and sampler is None:
        sampler = SeededSampler(len(dataset), seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_skipping_bad, drop_last=drop_last,
        persistent_workers=num_workers > 0, worker_init_fn=worker_init if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),  # worker seeds stay off the global RNG
    )


def balanced_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights that make every class equally likely to be drawn."""
    counts = class_counts(targets, num_classes).astype(np.float64)
    return 1.0 / np.maximum(counts[targets], 1.0)


def eval_load_size(size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """The size eval images are resized to before their center ``size`` is kept
    (`data.eval_crop_pct`; torchvision: 256 for 224, i.e. floor(size / 0.875))."""
    if crop_pct >= 1.0:
        return size[0], size[1]
    return int(size[0] / crop_pct), int(size[1] / crop_pct)


def build_eval_dataset(paths: Sequence, targets: Sequence[int] | np.ndarray | None, data: DataConfig, augment: AugmentConfig, *,
                       cache: bool = False, on_bad_image: str = "error", bad_image_hint: str = "") -> ImageDataset:
    """The one way validation, prediction, export parity and serving read images:
    the run's size, resize mode, eval crop, draft decoding and eval pipeline."""
    size = data.size_hw
    load_size = eval_load_size(size, data.eval_crop_pct)
    return ImageDataset(list(paths), targets, build_eval_pipeline(augment, size, data.eval_crop_pct), load_size,
                        train=False, draft=data.draft_decode, on_bad_image=on_bad_image, resize=data.resize,
                        bad_image_hint=bad_image_hint, cache=build_cache(paths, data, "val", size=load_size) if cache else None)


def build_cache(paths: Sequence[str], cfg: DataConfig, desc: str, size: tuple[int, int] | None = None):
    """The decoded-and-resized uint8 cache for ``paths`` (at ``size``, default the
    network size), or None when disabled."""
    if cfg.cache == "none":
        return None
    from podium.data.cache import ImageCache

    # Disk caches fill during the first epoch instead of decoding everything up front; the
    # device cache (`podium.data.device`) is decoded into memory first, then moved.
    mode = "memory" if cfg.cache == "device" else cfg.cache
    return ImageCache.build(list(paths), size or cfg.size_hw, mode=mode, cache_dir=cfg.cache_dir,
                            draft=cfg.draft_decode, on_bad_image=cfg.on_bad_image, lazy=cfg.cache == "disk",
                            resize=cfg.resize)


def describe_split(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Per-class image counts of train and validation (shown to the user, saved with the run)."""
    return (pd.DataFrame({"train": train["label"].value_counts(), "val": val["label"].value_counts()})
            .fillna(0).astype(int).sort_index())
