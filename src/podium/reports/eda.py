"""Exploratory data analysis: look at the data before training on it.

`run_eda` answers the questions that decide a competition before any model
runs: how unbalanced are the classes (and which class weights undo it), what
sizes are the images, which mean/std to normalise with, which files are broken,
and which images appear twice, the worst case being the same picture under two
labels or in both train and test. It writes a self-contained `eda.html`, the
PNGs behind it, `eda.json` with every number, and CSVs of the problem files.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.data.images import BadImageError, image_size, load_rgb, resize_rgb
from podium.errors import PodiumError, summarize_list
from podium.fileio import write_csv, write_json
from podium.reports.html import Page, Section

HASH_DECODE_SIZE = (64, 64)  # (w, h) draft size: hashes only need a 32x32 view
THUMB = 88
MAX_GRID_CLASSES = 40
MAX_PAIRS = 100_000
UNLABELED = "(unlabeled)"
#: largest / smallest class count from which the data is called imbalanced and class weights are
#: suggested: below it the default sqrt weights stay within sqrt(1.5) = 1.22x of each other (and
#: balanced data would get [1.0, 1.0, ...], i.e. no weighting at all)
IMBALANCED_RATIO = 1.5


@dataclass
class ImageScan:
    """What one pass over a file learns; `error` set means the file is unusable."""

    sha1: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None
    dhash: int | None = None
    gray_std: float | None = None  # spread of the grey levels (0..255) of the small view: ~0 for a blank image
    error: str | None = None
    pixel_sum: np.ndarray | None = None
    pixel_sumsq: np.ndarray | None = None
    pixel_count: int = 0


# --------------------------------------------------------------------------- hashing


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes(), "big")


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: sign of horizontal gradients on a 9x8 grayscale thumbnail."""
    import cv2

    small = cv2.resize(_gray(image), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    return _bits_to_int(small[:, 1:] > small[:, :-1])


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: low 8x8 DCT frequencies of a 32x32 thumbnail against their median.

    Low frequencies survive resizing, recompression and small brightness
    changes, so re-saved copies of one picture land a few bits apart.
    """
    import cv2

    small = cv2.resize(_gray(image), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    block = cv2.dct(small)[:8, :8]
    median = np.median(block.reshape(-1)[1:])  # the DC term only measures brightness
    return _bits_to_int(block > median)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between broadcastable uint64 arrays."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x[..., None].view(np.uint8)].sum(axis=-1, dtype=np.uint8)


def near_duplicate_pairs(
    phashes: np.ndarray, dhashes: np.ndarray, phash_threshold: int, dhash_threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with both hash distances within threshold: (i, j, phash distance).

    Brute force in blocks of ~4M comparisons: exact and simple, about ten
    seconds for 50k images, and memory stays flat.
    """
    n = len(phashes)
    block = max(1, 4_000_000 // max(n, 1))
    found: list[np.ndarray] = []
    total = 0
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = hamming(phashes[start:stop, None], phashes[None, start:])
        ii, jj = np.nonzero(dist <= phash_threshold)
        upper = jj + start > ii + start
        ii, jj = ii[upper], jj[upper]
        gi, gj = ii + start, jj + start
        close = hamming(dhashes[gi], dhashes[gj]) <= dhash_threshold
        found.append(np.stack([gi[close], gj[close], dist[ii[close], jj[close]]]).astype(np.int64))
        total += int(close.sum())
        if total >= MAX_PAIRS:
            break
    pairs = np.concatenate(found, axis=1) if found else np.zeros((3, 0), np.int64)
    return pairs[0], pairs[1], pairs[2]


def duplicate_pairs(scans: Sequence[ImageScan], phash_threshold: int = 8, dhash_threshold: int = 12) -> pd.DataFrame:
    """Exact and near duplicates among scanned images: rows (a, b, kind, distance) with a < b
    indices into ``scans``; ``kind`` is exact (same bytes) or near (within both hash thresholds).
    What `podium eda` reports and `podium audit` checks against labels and groups."""
    hashed = [k for k, s in enumerate(scans) if s.phash is not None]
    ph = np.array([scans[k].phash for k in hashed], dtype=np.uint64)
    dh = np.array([scans[k].dhash for k in hashed], dtype=np.uint64)
    ii, jj, dist = near_duplicate_pairs(ph, dh, phash_threshold, dhash_threshold)
    idx = np.array(hashed, dtype=np.int64)
    a, b = idx[ii], idx[jj]
    same = np.array([scans[i].sha1 == scans[j].sha1 for i, j in zip(a, b, strict=True)], dtype=bool)
    return pd.DataFrame({"a": a, "b": b, "kind": np.where(same, "exact", "near") if len(a) else np.array([], dtype=object),
                         "distance": dist})


# --------------------------------------------------------------------------- scanning


def scan_image(path: str, with_stats: bool) -> ImageScan:
    """Hash, measure and decode one file; a broken file yields `error`, never an exception."""
    scan = ImageScan()
    try:
        scan.sha1 = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        scan.error = f"cannot read file: {exc}"
        return scan
    try:
        scan.width, scan.height = image_size(path)
        rgb = load_rgb(path) if with_stats else load_rgb(path, draft_size=HASH_DECODE_SIZE)
    except BadImageError as exc:
        scan.error = str(exc)
        return scan
    gray = _gray(rgb)
    scan.phash, scan.dhash = phash(gray), dhash(gray)
    scan.gray_std = float(gray.std())
    if with_stats:
        # Value histograms give exact sums in a fraction of the time of float arithmetic.
        hist = np.stack([np.bincount(rgb[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.float64)
        levels = np.arange(256, dtype=np.float64) / 255.0
        scan.pixel_sum = hist @ levels
        scan.pixel_sumsq = hist @ np.square(levels)
        scan.pixel_count = rgb.shape[0] * rgb.shape[1]
    return scan


def scan_images(paths: Sequence[str], stats_mask: Sequence[bool], workers: int | None = None,
                progress: bool = False) -> list[ImageScan]:
    """Scan files in threads (decoding and hashing release the GIL); order preserved. ``progress``
    shows a bar in a terminal (thousands of images take a while; a log file gets no redraws)."""
    from podium.quiet import plain_output

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(scan_image, paths, stats_mask)
        if progress and not plain_output():
            from rich.progress import track

            return list(track(results, total=len(paths), description="scanning images", transient=True))
        return list(results)


# --------------------------------------------------------------------------- numbers


def class_weights(counts: pd.Series) -> list[float]:
    """The weights training uses by default (`train.class_weights=sqrt`: the square root of inverse
    frequency, benchmarked as the default), computed as training does."""
    from podium.data.statistics import class_weight_values

    return [round(float(w), 4) for w in class_weight_values(counts.to_numpy(), "sqrt")]


def channel_stats(scans: Sequence[ImageScan]) -> tuple[list[float], list[float], int]:
    """Pixel-weighted per-channel mean and std in [0, 1] over the scanned sample."""
    used = [s for s in scans if s.pixel_count]
    if not used:
        return [], [], 0
    from podium.data.statistics import mean_std

    mean, std = mean_std(sum(s.pixel_sum for s in used), sum(s.pixel_sumsq for s in used),
                         sum(s.pixel_count for s in used))
    return list(mean), list(std), len(used)


def _yaml_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _check_columns(samples: pd.DataFrame, attributes: Sequence[str], what: str) -> None:
    if "path" not in samples.columns:
        raise PodiumError(
            f"{what} table has no 'path' column; found columns: {summarize_list(list(samples.columns))}. "
            "Build it with the podium data loader, which adds path, id and label."
        )
    missing = [a for a in attributes if a not in samples.columns]
    if missing:
        raise PodiumError(
            f"attribute column(s) {missing} not in the {what} table; found columns: "
            f"{summarize_list(list(samples.columns), 12)}. Pass attributes that are columns of the samples table."
        )


def _labels(samples: pd.DataFrame) -> pd.Series:
    if "label" not in samples.columns:
        return pd.Series([UNLABELED] * len(samples), index=samples.index, dtype=object)
    return samples["label"].astype(object).where(samples["label"].notna(), UNLABELED).astype(str)


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    if not matplotlib.get_backend().startswith("module://"):  # keep a notebook's inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(counts: pd.Series, title: str, xlabel: str = "count"):
    plt = _plt()
    n = len(counts)
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.28 * n + 1)))
    ax.barh([str(k) for k in counts.index][::-1], counts.to_numpy()[::-1], color="#2557a7")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    for y, v in enumerate(counts.to_numpy()[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    return fig


def _size_histograms(sizes: dict[str, pd.DataFrame]):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for name, frame in sizes.items():
        for ax, col in zip(axes, ("width", "height", "aspect")):
            ax.hist(frame[col].to_numpy(), bins=40, alpha=0.6, label=name)
            ax.set_title(col if col != "aspect" else "aspect (width / height)")
    if len(sizes) > 1:
        axes[0].legend()
    fig.tight_layout()
    return fig


def thumbnail(path: str, size: int = THUMB) -> np.ndarray:
    """Letterboxed square thumbnail; a grey square for a file that cannot be decoded."""
    try:
        rgb = load_rgb(path, draft_size=(size, size))
    except BadImageError:
        return np.full((size, size, 3), 200, np.uint8)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    small = resize_rgb(rgb, (max(1, round(h * scale)), max(1, round(w * scale))))
    out = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def _strip(paths: Sequence[str], cols: int) -> np.ndarray:
    gap = np.full((THUMB, 4, 3), 255, np.uint8)
    tiles = [thumbnail(p) for p in paths] + [np.full((THUMB, THUMB, 3), 255, np.uint8)] * (cols - len(paths))
    parts = [x for t in tiles for x in (t, gap)][:-1]
    return np.concatenate(parts, axis=1)


def _grid_figure(rows: list[tuple[str, list[str]]], cols: int):
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.05 * cols + 1.6, 1.05 * len(rows) + 0.2), squeeze=False)
    for ax, (name, paths) in zip(axes[:, 0], rows):
        ax.imshow(_strip(paths, cols))
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(hspace=0.08)
    return fig


# --------------------------------------------------------------------------- run_eda


def run_eda(
    samples: pd.DataFrame,
    out_dir: str | Path,
    *,
    attributes: list[str] | None = None,
    test_samples: pd.DataFrame | None = None,
    sample_per_class: int = 8,
    max_images_for_stats: int = 2000,
    seed: int = 0,
    phash_threshold: int = 8,
    dhash_threshold: int = 12,
    progress: bool = False,
) -> dict[str, Any]:
    """Analyse a samples table; write eda.html, eda.json, figures/*.png and problem-file CSVs.

    Returns the numbers of eda.json. ``test_samples`` (optional) are scanned
    too, so duplicates between train and test and broken test files show up.
    """
    out_dir = Path(out_dir)
    attributes = list(attributes or [])
    _check_eda_inputs(samples, attributes, test_samples)
    rng = np.random.default_rng(seed)
    train, table, scans, stats_mask = _scan_table(samples, test_samples, rng, max_images_for_stats, progress)
    n_train = len(train)
    page = Page("Exploratory data analysis", f"{n_train} training images" + (
        f", {len(table) - n_train} test images" if len(table) > n_train else ""))
    overview = page.section("Overview")
    result: dict[str, Any] = {"n_train": n_train, "n_test": len(table) - n_train}
    result.update(_analysis_sections(page, out_dir, train, table, scans, stats_mask, rng, attributes=attributes,
                                     test_samples=test_samples, sample_per_class=sample_per_class,
                                     phash_threshold=phash_threshold, dhash_threshold=dhash_threshold))
    result["yaml"] = _yaml_snippet(result)
    page.section("Config snippet").text(
        "What the defaults compute for this data (sqrt inverse-frequency class weights where the classes are "
        f"imbalanced, largest / smallest {IMBALANCED_RATIO:g} or more); the data's own mean/std "
        "is commented out: fine-tuning ImageNet weights keeps ImageNet's statistics."
    ).code(result["yaml"])
    _overview(overview, result)
    write_json(out_dir / "eda.json", result)
    page.write(out_dir / "eda.html")
    return result


def _check_eda_inputs(samples: pd.DataFrame, attributes: list[str], test_samples: pd.DataFrame | None) -> None:
    """The tables' columns and a non-empty training table, before any image is read."""
    _check_columns(samples, attributes, "samples")
    if test_samples is not None:
        _check_columns(test_samples, [], "test_samples")
    if len(samples) == 0:
        raise PodiumError("the samples table is empty: no images to analyse. Check the data folder in the config.")


def _scan_table(samples: pd.DataFrame, test_samples: pd.DataFrame | None, rng: np.random.Generator,
                max_images_for_stats: int, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, list, np.ndarray]:
    """The training rows, and one table of training and test rows with every image's size, hash
    and read error; their scans; and which rows (up to ``max_images_for_stats`` training images,
    drawn from ``rng``) also had their channel statistics measured."""
    train = samples.reset_index(drop=True).assign(_label=lambda f: _labels(f), _split="train")
    frames = [train]
    if test_samples is not None and len(test_samples):
        frames.append(test_samples.reset_index(drop=True).assign(_label=lambda f: _labels(f), _split="test"))
    table = pd.concat(frames, ignore_index=True)
    table["path"] = table["path"].astype(str)
    n_train = len(train)
    stats_idx = rng.choice(n_train, size=min(max_images_for_stats, n_train), replace=False)
    stats_mask = np.zeros(len(table), bool)
    stats_mask[stats_idx] = True
    scans = scan_images(table["path"].tolist(), stats_mask.tolist(), progress=progress)
    table["_error"] = [s.error for s in scans]
    table["width"] = [s.width for s in scans]
    table["height"] = [s.height for s in scans]
    table["sha1"] = [s.sha1 for s in scans]
    return train, table, scans, stats_mask


def _analysis_sections(page: Page, out_dir: Path, train: pd.DataFrame, table: pd.DataFrame, scans: list,
                       stats_mask: np.ndarray, rng: np.random.Generator, *, attributes: list[str],
                       test_samples: pd.DataFrame | None, sample_per_class: int, phash_threshold: int,
                       dhash_threshold: int) -> dict[str, Any]:
    """The page's analysis sections in reading order (classes, attributes, sizes, channels, a
    sample grid, unreadable files, duplicates, groups) and the numbers each adds to eda.json."""
    fig_dir = out_dir / "figures"
    result: dict[str, Any] = {"classes": _class_section(page, fig_dir, train)}
    if attributes:
        result["attributes"] = _attribute_section(page, fig_dir, train, attributes)
    result["sizes"] = _size_section(page, fig_dir, table)
    result["tiny_images"] = int(len(tiny_images(table)))
    result["channels"] = _channel_section(page, [s for s, m in zip(scans, stats_mask) if m])
    _grid_section(page, fig_dir, table[(table["_split"] == "train") & table["_error"].isna()],
                  sample_per_class, rng)
    result["unreadable"] = _unreadable_section(page, out_dir, table)
    result["duplicates"] = _duplicate_section(page, out_dir, fig_dir, table, scans, phash_threshold, dhash_threshold)
    if "group" in train.columns:
        result["groups"] = _group_section(page, fig_dir, train, test_samples)
    return result


def _overview(sec: Section, result: dict[str, Any]) -> None:
    dup = result["duplicates"]
    rows = [
        ("training images", result["n_train"]),
        ("test images", result["n_test"]),
        ("classes", len(result["classes"]["counts"])),
        ("unlabeled training images", result["classes"]["n_unlabeled"]),
        ("imbalance ratio (max / min)", result["classes"]["imbalance_ratio"]),
        ("unreadable files", result["unreadable"]["count"]),
        ("exact duplicate groups", dup["exact_groups"]),
        ("duplicate pairs (exact + near)", dup["pairs"]),
        ("pairs across classes", dup["cross_class_pairs"]),
        ("pairs across train/test", dup["cross_split_pairs"]),
        ("pairs across groups", dup["cross_group_pairs"]),
        (f"images with a side below {TINY_SIDE} px", result["tiny_images"]),
    ]
    sec.table(pd.DataFrame(rows, columns=["quantity", "value"]))
    if (result["unreadable"]["count"] or dup["cross_class_pairs"] or dup["cross_split_pairs"]
            or dup["cross_group_pairs"] or result["tiny_images"]):
        sec.warning("Problems found: see the Unreadable files, Image sizes and Duplicates sections.")


def _class_section(page: Page, fig_dir: Path, train: pd.DataFrame) -> dict[str, Any]:
    sec = page.section("Class balance")
    labeled = train.loc[train["_label"] != UNLABELED, "_label"]
    n_unlabeled = int(len(train) - len(labeled))
    counts = labeled.value_counts().sort_index()
    out: dict[str, Any] = {"counts": {str(k): int(v) for k, v in counts.items()}, "n_unlabeled": n_unlabeled,
                           "imbalance_ratio": None, "class_weights": []}
    if counts.empty:
        sec.note("No labels: the samples table has no labeled rows.")
        return out
    ratio = round(float(counts.max() / counts.min()), 3)
    imbalanced = ratio >= IMBALANCED_RATIO
    weights = class_weights(counts) if imbalanced else []
    out.update(imbalance_ratio=ratio, class_weights=weights)
    frame = pd.DataFrame({"class": counts.index, "count": counts.to_numpy(),
                          "share": (counts / counts.sum()).round(4).to_numpy()})
    if imbalanced:
        frame["suggested weight"] = weights
    sec.table(frame, max_rows=500)
    sec.figure(_bar(counts, "images per class"), "Images per class", save_to=fig_dir / "class_counts.png")
    sec.text(f"Imbalance ratio (largest / smallest class): {ratio:g}." + (
        "" if imbalanced else f" Balanced (below {IMBALANCED_RATIO:g}): no class weights to suggest."))
    if n_unlabeled:
        sec.note(f"{n_unlabeled} rows have no label and are left out of the counts.")
    if imbalanced:
        sec.code(f"train:\n  class_weights: {_yaml_list(weights)}  # order: {', '.join(map(str, counts.index))}")
    return out


def _attribute_section(page: Page, fig_dir: Path, train: pd.DataFrame, attributes: list[str]) -> dict[str, Any]:
    sec = page.section("Attributes")
    out: dict[str, Any] = {"counts": {}, "crosstabs": {}}
    for attr in attributes:
        counts = train[attr].astype(object).where(train[attr].notna(), "(missing)").astype(str).value_counts().sort_index()
        out["counts"][attr] = {str(k): int(v) for k, v in counts.items()}
        sec.heading(f"{attr}: counts")
        sec.table(pd.DataFrame({attr: counts.index, "count": counts.to_numpy()}))
        sec.figure(_bar(counts, f"images per {attr}"), save_to=fig_dir / f"attribute_{_safe(attr)}.png")
    columns = attributes if len(attributes) > 1 else (["_label", *attributes] if "label" in train.columns else [])
    for i, a in enumerate(columns):
        for b in columns[i + 1 :]:
            tab = pd.crosstab(train[a].astype(str), train[b].astype(str))
            name_a = "label" if a == "_label" else a
            out["crosstabs"][f"{name_a} x {b}"] = {str(r): {str(c): int(v) for c, v in row.items()}
                                                   for r, row in tab.iterrows()}
            sec.heading(f"{name_a} x {b}")
            sec.table(tab.rename_axis(index=name_a, columns=None), index=True)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(name))


#: an image with a side below this many pixels carries next to nothing once resized for a model
TINY_SIDE = 16


def tiny_images(table: pd.DataFrame) -> pd.DataFrame:
    """Readable images with a side below `TINY_SIDE` pixels (a 2 px thumbnail passes decoding)."""
    ok = table.dropna(subset=["width", "height"])
    return ok[(ok["width"] < TINY_SIDE) | (ok["height"] < TINY_SIDE)]


def _size_section(page: Page, fig_dir: Path, table: pd.DataFrame) -> dict[str, Any]:
    sec = page.section("Image sizes")
    tiny = tiny_images(table)
    if len(tiny):
        sec.warning(f"{len(tiny)} image(s) have a side below {TINY_SIDE} px (smallest "
                    f"{int(tiny['width'].min())}x{int(tiny['height'].min())}), e.g. {tiny['path'].iloc[0]}: "
                    "check them, they carry almost nothing once resized.")
    ok = table.dropna(subset=["width", "height"]).copy()
    ok["width"], ok["height"] = ok["width"].astype(int), ok["height"].astype(int)
    ok["aspect"] = ok["width"] / ok["height"]
    out: dict[str, Any] = {}
    rows = []
    for split, frame in ok.groupby("_split", sort=False):
        desc = {col: {k: round(float(v), 3) for k, v in frame[col].describe()[["min", "50%", "mean", "max"]].items()}
                for col in ("width", "height", "aspect")}
        common = frame.groupby(["width", "height"]).size().sort_values(ascending=False).head(5)
        out[split] = {**desc, "most_common": [[int(w), int(h), int(n)] for (w, h), n in common.items()]}
        for col in ("width", "height", "aspect"):
            rows.append({"split": split, "quantity": col, **{k: v for k, v in desc[col].items()}})
    if not rows:
        sec.note("No image header could be read.")
        return out
    sec.table(pd.DataFrame(rows).rename(columns={"50%": "median"}))
    sec.figure(_size_histograms({s: f for s, f in ok.groupby("_split", sort=False)}),
               "Width, height and aspect ratio (from image headers)", save_to=fig_dir / "sizes.png")
    for split, info in out.items():
        sec.note(f"most common sizes ({split}): " + ", ".join(f"{w}x{h} ({n})" for w, h, n in info["most_common"]))
    return out


def _channel_section(page: Page, stats_scans: list[ImageScan]) -> dict[str, Any]:
    sec = page.section("Channel statistics")
    mean, std, n = channel_stats(stats_scans)
    if not n:
        sec.note("No readable image in the statistics sample.")
        return {"mean": [], "std": [], "n_images": 0}
    sec.table(pd.DataFrame({"channel": ["R", "G", "B"], "mean": mean, "std": std}))
    sec.text(f"Per-channel mean and std of pixel values in [0, 1] over {n} training images (pixel-weighted).")
    sec.code(f"augment:\n  mean: {_yaml_list(mean)}\n  std: {_yaml_list(std)}")
    return {"mean": mean, "std": std, "n_images": n}


def _grid_section(page: Page, fig_dir: Path, readable: pd.DataFrame, per_class: int, rng: np.random.Generator) -> None:
    sec = page.section("Sample images")
    if readable.empty or per_class <= 0:
        sec.note("No readable training images to show.")
        return
    classes = sorted(readable["_label"].unique())
    rows = []
    for name in classes[:MAX_GRID_CLASSES]:
        paths = readable.loc[readable["_label"] == name, "path"].to_numpy()
        pick = rng.choice(len(paths), size=min(per_class, len(paths)), replace=False)
        rows.append((name, [paths[i] for i in sorted(pick)]))
    sec.figure(_grid_figure(rows, per_class), f"{per_class} random images per class", save_to=fig_dir / "samples.png")
    if len(classes) > MAX_GRID_CLASSES:
        sec.note(f"showing the first {MAX_GRID_CLASSES} of {len(classes)} classes")


def _unreadable_section(page: Page, out_dir: Path, table: pd.DataFrame) -> dict[str, Any]:
    sec = page.section("Unreadable files")
    bad = table.loc[table["_error"].notna(), ["path", "_split", "_error"]].rename(
        columns={"_split": "split", "_error": "error"})
    write_csv(out_dir / "unreadable.csv", bad)
    if bad.empty:
        sec.text("All files decode.")
    else:
        sec.warning(f"{len(bad)} file(s) cannot be decoded; remove or replace them before training.")
        sec.table(bad)
        sec.note("Full list: unreadable.csv")
    return {"count": int(len(bad)), "files": bad.to_dict("records")}


def _duplicate_section(page: Page, out_dir: Path, fig_dir: Path, table: pd.DataFrame, scans: list[ImageScan],
                       phash_threshold: int, dhash_threshold: int) -> dict[str, Any]:
    sec = page.section("Duplicates")
    sha = table["sha1"].dropna()
    exact_groups = int((sha.value_counts() > 1).sum())
    found = duplicate_pairs(scans, phash_threshold, dhash_threshold)
    a, b = table.iloc[found["a"]].reset_index(drop=True), table.iloc[found["b"]].reset_index(drop=True)
    pairs = pd.DataFrame({
        "kind": found["kind"].to_numpy(),
        "distance": found["distance"].to_numpy(),
        "path_a": a["path"], "label_a": a["_label"], "split_a": a["_split"],
        "path_b": b["path"], "label_b": b["_label"], "split_b": b["_split"],
    })
    pairs["cross_class"] = ((pairs["label_a"] != pairs["label_b"]) & (pairs["label_a"] != UNLABELED)
                            & (pairs["label_b"] != UNLABELED))
    pairs["cross_split"] = pairs["split_a"] != pairs["split_b"]
    if "group" in table.columns:  # the grouped split keeps a group together, not two groups holding one image
        ga, gb = table["group"].iloc[found["a"]].to_numpy(), table["group"].iloc[found["b"]].to_numpy()
        pairs["cross_group"] = pd.notna(ga) & pd.notna(gb) & (ga.astype(str) != gb.astype(str))
    else:
        pairs["cross_group"] = False
    pairs = pairs.sort_values(["cross_split", "cross_class", "distance", "path_a"],
                              ascending=[False, False, True, True], kind="stable").reset_index(drop=True)
    write_csv(out_dir / "duplicates.csv", pairs)
    out = {"exact_groups": exact_groups, "pairs": int(len(pairs)),
           "exact_pairs": int((pairs["kind"] == "exact").sum()), "near_pairs": int((pairs["kind"] == "near").sum()),
           "cross_class_pairs": int(pairs["cross_class"].sum()), "cross_split_pairs": int(pairs["cross_split"].sum()),
           "cross_group_pairs": int(pairs["cross_group"].sum()),
           "phash_threshold": phash_threshold, "dhash_threshold": dhash_threshold,
           "truncated": bool(len(pairs) >= MAX_PAIRS)}
    sec.text(
        f"Exact duplicates share the SHA-1 of their bytes; near duplicates are within {phash_threshold} bits of "
        f"perceptual hash and {dhash_threshold} bits of difference hash (resized, recompressed or re-exposed copies)."
    )
    sec.table(pd.DataFrame([(k, v) for k, v in out.items() if k not in ("phash_threshold", "dhash_threshold")],
                           columns=["quantity", "value"]))
    if pairs.empty:
        sec.text("No duplicates found.")
        return out
    if out["cross_class_pairs"]:
        sec.warning(f"{out['cross_class_pairs']} pair(s) carry different labels: at least one label in each is wrong.")
    if out["cross_split_pairs"]:
        sec.warning(f"{out['cross_split_pairs']} pair(s) span train and test: validation scores will be optimistic.")
    if out["cross_group_pairs"]:
        sec.warning(f"{out['cross_group_pairs']} pair(s) fall in different groups: a grouped split cannot keep them "
                    "together, so one may train while its copy validates; give each pair one group or drop a copy.")
    if out["truncated"]:
        sec.note(f"the search stopped after {MAX_PAIRS} pairs")
    root = os.path.commonpath(pairs["path_a"].tolist() + pairs["path_b"].tolist())
    shown = pairs.assign(path_a=pairs["path_a"].map(lambda p: os.path.relpath(p, root)),
                         path_b=pairs["path_b"].map(lambda p: os.path.relpath(p, root)))
    sec.table(shown, max_rows=100)
    sec.note(f"Paths relative to {root}. Full list: duplicates.csv (cross-split and cross-class pairs first).")
    rows = [(f"{r.label_a} / {r.label_b} ({r.kind}, d={r.distance})", [r.path_a, r.path_b])
            for r in pairs.head(12).itertuples()]
    sec.figure(_grid_figure(rows, 2), "Top duplicate pairs", save_to=fig_dir / "duplicates.png")
    return out


def _group_section(page: Page, fig_dir: Path, train: pd.DataFrame, test: pd.DataFrame | None) -> dict[str, Any]:
    plt = _plt()
    sec = page.section("Groups")
    groups = train["group"].dropna().astype(str)
    per_group = groups.value_counts()
    grouped = train.dropna(subset=["group"])
    labels_per_group = grouped.groupby(grouped["group"].astype(str))["_label"].nunique()
    out = {"n_groups": int(len(per_group)), "missing_group": int(train["group"].isna().sum()),
           "images_per_group": {k: round(float(v), 3) for k, v in per_group.describe()[["min", "50%", "mean", "max"]].items()},
           "groups_with_several_labels": int((labels_per_group > 1).sum())}
    if test is not None and "group" in test.columns:
        shared = set(groups) & set(test["group"].dropna().astype(str))
        out["groups_in_train_and_test"] = len(shared)
    shown = {**out, "images_per_group": " / ".join(f"{v:g}" for v in out["images_per_group"].values())}
    sec.table(pd.DataFrame(list(shown.items()), columns=["quantity", "value"]).astype({"value": str}),
              caption="images per group: min / median / mean / max")
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(per_group.to_numpy(), bins=min(40, max(5, len(per_group))), color="#2557a7")
    ax.set_xlabel("images per group"), ax.set_ylabel("groups")
    sec.figure(fig, "Images per group", save_to=fig_dir / "groups.png")
    sec.heading("Largest groups")
    sec.table(pd.DataFrame({"group": per_group.index, "images": per_group.to_numpy()}), max_rows=20)
    sec.note("Split folds by group (GroupKFold) so one person or source never sits in both train and validation.")
    return out


def _yaml_snippet(result: dict[str, Any]) -> str:
    lines = []
    weights = result["classes"]["class_weights"]
    if weights:
        order = ", ".join(result["classes"]["counts"])
        lines += ["train:", f"  class_weights: {_yaml_list(weights)}  # = the default sqrt; order: {order}"]
    if result["channels"]["mean"]:
        # fine-tuning ImageNet weights (the default) wants ImageNet's statistics (augment.normalize: imagenet);
        # this data's own only fit training from scratch
        lines += ["# training from scratch (model.pretrained: false)? normalise with this data's statistics:",
                  "# augment:", f"#   mean: {_yaml_list(result['channels']['mean'])}",
                  f"#   std: {_yaml_list(result['channels']['std'])}"]
    return "\n".join(lines) + "\n"
