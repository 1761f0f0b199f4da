"""Face / box crop preprocessing, computed once and cached on disk.

Cropping to the face before training lets a small input size spend its pixels
on what decides the label (mask, age, gender) instead of background. Detection
is the slow part and it is deterministic, so crops are written once under a
folder keyed by everything that could change them (detector settings, margin,
aspect, the source files' size and mtime) and reused on every later run.

Crops are saved as JPEG quality 95 with 4:4:4 chroma by default: the sources are
already JPEG-compressed photos, so recompression at that quality changes pixels
far less than their existing compression noise, while PNG crops would be about
5x larger and slower to decode each epoch. ``image_format="png"`` is there for
lossless sources (screenshots, medical PNGs) where that trade does not hold.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from podium.data.images import load_rgb
from podium.errors import PodiumError, lookup, summarize_list
from podium.fileio import atomic_path, write_json

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

CACHE_VERSION = 1
MANIFEST = "manifest.json"
YUNET_ENV = "PODIUM_YUNET"
YUNET_HELP = (
    "download face_detection_yunet_*.onnx from the OpenCV Zoo "
    "(https://github.com/opencv/opencv_zoo, folder models/face_detection_yunet) "
    f"and pass its path as model_path or set the {YUNET_ENV} environment variable"
)
# What the face pipeline should use unless the user says otherwise: 40% more
# than the detector's box, 60% of the vertical extra below the face so a mask
# and the chin stay inside, and the portrait 3:4 shape of the photos.
FACE_DEFAULTS = {"margin": 0.4, "chin_share": 0.6, "aspect": "3:4"}


class Detector(Protocol):
    """Anything that finds one box in an image; ``settings`` feeds the cache key."""

    name: str

    def settings(self) -> dict[str, Any]: ...

    def __call__(self, image: np.ndarray, *, id: str, path: str) -> Box | None: ...


# ---------------------------------------------------------------- box geometry


def parse_aspect(aspect: float | str | None) -> float | None:
    """Width / height from 0.75, "0.75" or "3:4"; None keeps each box's shape."""
    if aspect is None:
        return None
    try:
        if isinstance(aspect, str) and ":" in aspect:
            w, h = (float(v) for v in aspect.split(":"))
            value = w / h
        else:
            value = float(aspect)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise PodiumError(
            f"invalid crop aspect {aspect!r}; expected width:height like '3:4' "
            "or a positive number width/height like 0.75"
        )
    return value


def resolve_box(box: Sequence[float], width: int, height: int, units: str = "auto") -> Box:
    """Pixel box from pixels or image fractions; 'auto' reads all-in-[0, 1] as fractions."""
    if len(box) != 4:
        raise PodiumError(f"a box needs 4 numbers x0, y0, x1, y1; got {list(box)!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if units not in ("auto", "px", "frac"):
        raise PodiumError(f"box units {units!r} unknown; valid: auto, px, frac")
    if units == "frac" or (units == "auto" and all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1))):
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if x1 <= x0 or y1 <= y0:
        raise PodiumError(f"box {list(box)!r} is empty: it needs x1 > x0 and y1 > y0")
    return (x0, y0, x1, y1)


def expand_box(box: Box, margin: float, chin_share: float = 0.5) -> Box:
    """Grow a face box by ``margin`` of its size; ``chin_share`` of the vertical growth goes below."""
    x0, y0, x1, y1 = box
    dx = margin * (x1 - x0) / 2
    dy = margin * (y1 - y0)
    return (x0 - dx, y0 - dy * (1 - chin_share), x1 + dx, y1 + dy * chin_share)


def fit_aspect(box: Box, aspect: float | None) -> Box:
    """Grow the short side around the centre until width / height == aspect (never cuts)."""
    if aspect is None:
        return box
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        cx, w = (x0 + x1) / 2, h * aspect
        return (cx - w / 2, y0, cx + w / 2, y1)
    cy, h = (y0 + y1) / 2, w / aspect
    return (x0, cy - h / 2, x1, cy + h / 2)


def clip_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box inside the image: shifted in when it fits (keeps its size), else the full side.

    The size is rounded once, not each edge, so equal boxes give equal crop sizes
    wherever they sit in the image.
    """
    x0, x1 = _span_inside(box[0], box[2], width)
    y0, y1 = _span_inside(box[1], box[3], height)
    return x0, y0, x1, y1


def _span_inside(lo: float, hi: float, size: int) -> tuple[int, int]:
    length = min(size, max(1, round(hi - lo)))
    start = min(max(0, round(lo)), size - length)
    return start, start + length


def face_crop_box(face: Box, width: int, height: int, *, margin: float,
                  chin_share: float, aspect: float | None) -> tuple[int, int, int, int]:
    """The crop for a detected face: margin, then aspect, then the image bounds."""
    return clip_box(fit_aspect(expand_box(face, margin, chin_share), aspect), width, height)


# ------------------------------------------------------------------ detectors


class FixedBoxDetector:
    """The same box for every image, in pixels or fractions of the image."""

    name = "fixed"

    def __init__(self, box: Sequence[float], units: str = "auto"):
        self.box = [float(v) for v in box]
        self.units = units
        resolve_box(self.box, 1000, 1000, units)  # validate now, not mid-run

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "box": self.box, "units": self.units}

    def __call__(self, image: np.ndarray, *, id: str = "", path: str = "") -> Box | None:
        return resolve_box(self.box, image.shape[1], image.shape[0], self.units)


class CenterDetector:
    """A centred box: ``fraction`` of each side, or of the largest ``aspect`` box that fits."""

    name = "center"

    def __init__(self, fraction: float = 1.0, aspect: float | str | None = None):
        if not 0 < float(fraction) <= 1:
            raise PodiumError(f"center crop fraction must be in (0, 1]; got {fraction!r}")
        self.fraction = float(fraction)
        self.aspect = parse_aspect(aspect)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "fraction": self.fraction, "aspect": self.aspect}

    def __call__(self, image: np.ndarray, *, id: str = "", path: str = "") -> Box | None:
        height, width = image.shape[:2]
        w, h = float(width), float(height)
        if self.aspect is not None:
            w, h = min(w, h * self.aspect), min(h, w / self.aspect)
        w, h = w * self.fraction, h * self.fraction
        cx, cy = width / 2, height / 2
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


class CsvBoxDetector:
    """Boxes listed in a CSV (columns id or path, x0, y0, x1, y1), e.g. from an annotation tool."""

    name = "csv"

    def __init__(self, csv_path: str | Path, units: str = "auto"):
        self.csv_path = Path(csv_path)
        self.units = units
        if not self.csv_path.is_file():
            raise PodiumError(f"box CSV not found: {self.csv_path}")
        table = pd.read_csv(self.csv_path)
        missing = [c for c in ("x0", "y0", "x1", "y1") if c not in table.columns]
        keys = [c for c in ("id", "path") if c in table.columns]
        if missing or not keys:
            raise PodiumError(
                f"box CSV {self.csv_path} has columns {list(table.columns)}; it needs "
                "x0, y0, x1, y1 and an id or path column to match images"
            )
        self._boxes: dict[tuple[str, str], Box | None] = {}
        for key in keys:
            named = table[table[key].notna() & (table[key].astype(str) != "")]
            for name, row in zip(named[key].astype(str), named[["x0", "y0", "x1", "y1"]].itertuples(index=False)):
                if (key, name) in self._boxes:
                    raise PodiumError(f"box CSV {self.csv_path} lists {key} {name!r} twice")
                self._boxes[(key, name)] = None if any(pd.isna(v) for v in row) else tuple(row)
        self._digest = hashlib.sha256(self.csv_path.read_bytes()).hexdigest()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "csv_sha256": self._digest, "units": self.units}

    def __call__(self, image: np.ndarray, *, id: str = "", path: str = "") -> Box | None:
        box = self._boxes.get(("id", str(id)))
        if box is None:
            box = self._boxes.get(("path", str(path)))
        if box is None:
            return None
        return resolve_box(box, image.shape[1], image.shape[0], self.units)


def default_yunet_path() -> str | None:
    """The YuNet model named by $PODIUM_YUNET, so configs need not hard-code a path."""
    return os.environ.get(YUNET_ENV) or None


class YuNetDetector:
    """OpenCV's YuNet face detector; the highest-scoring face wins.

    Images are shrunk to ``max_side`` before detection: YuNet is trained on faces
    of 10-300 px, so full-resolution photos only cost time. One cv2 detector per
    thread because ``setInputSize`` mutates it.
    """

    name = "yunet"

    def __init__(self, model_path: str | Path | None = None, score_threshold: float = 0.6,
                 nms_threshold: float = 0.3, top_k: int = 5000, max_side: int = 640):
        model_path = model_path or default_yunet_path()
        if model_path is None:
            raise PodiumError(f"the yunet face detector needs its ONNX model file: {YUNET_HELP}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise PodiumError(f"YuNet model not found at {self.model_path}: {YUNET_HELP}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.max_side = int(max_side)
        self._digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        self._local = threading.local()
        self._net()  # fail now on a broken model file, not inside a worker

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "model_sha256": self._digest, "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "top_k": self.top_k, "max_side": self.max_side}

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            import cv2

            try:
                net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), self.score_threshold,
                                                self.nms_threshold, self.top_k)
            except cv2.error as exc:
                raise PodiumError(f"cannot load YuNet model {self.model_path}: {exc}. {YUNET_HELP}") from None
            self._local.net = net
        return net

    def __call__(self, image: np.ndarray, *, id: str = "", path: str = "") -> Box | None:
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        net = self._net()
        net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = net.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        x, y, w, h = faces[int(np.argmax(faces[:, 14])), :4] / scale  # column 14 is the score
        return (float(x), float(y), float(x + w), float(y + h))


DETECTORS: dict[str, Callable[..., Detector]] = {
    "fixed": FixedBoxDetector,
    "center": CenterDetector,
    "csv": CsvBoxDetector,
    "yunet": YuNetDetector,
}


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build a registered detector; wrong option names get a message listing the valid ones."""
    factory = lookup(DETECTORS, name, "crop detector")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise PodiumError(f"bad options {sorted(kwargs)} for crop detector {name!r} ({exc}); "
                          f"valid options: {', '.join(params)}") from None
    return factory(**kwargs)


# ---------------------------------------------------------------- crop + cache


@dataclass(frozen=True)
class _Plan:
    detector: Detector
    margin: float
    chin_share: float
    aspect: float | None
    fallback_box: tuple[float, ...] | None
    image_format: str
    reuse_stem: str
    root: Path


@dataclass(frozen=True)
class _Result:
    crop: str  # relative to the cache folder
    box: tuple[int, int, int, int]
    source: str  # detected | reused | fallback


def crop_images(
    samples: pd.DataFrame,
    out_dir: str | Path,
    detector: Detector,
    *,
    margin: float = 0.0,
    chin_share: float = 0.5,
    aspect: float | str | None = None,
    fallback_box: Sequence[float] | None = None,
    group_reuse: bool = False,
    reuse_stem: str = "normal",
    image_format: str = "jpg",
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Crop every sample to its detected box, reusing an identical earlier run's crops.

    Returns a copy of ``samples`` whose ``path`` points at the crops, and a report
    with counts of detected / reused / fallback images and the fallback ids (the
    images worth eyeballing). ``group_reuse`` detects once on each group's
    ``reuse_stem`` photo and applies that box to the group's other photos,
    because masks and odd poses make detectors miss or misplace faces the
    unmasked photo shows plainly. Without a face, the image falls back to
    ``fallback_box`` (pixels or fractions; None = the whole image), used as is.
    """
    _check_crop_args(samples, margin=margin, chin_share=chin_share, fallback_box=fallback_box,
                     group_reuse=group_reuse, image_format=image_format)
    paths = samples["path"].astype(str).tolist()
    ids = samples["id"].astype(str).tolist()
    groups = samples["group"].tolist() if group_reuse else [None] * len(paths)
    aspect_value = parse_aspect(aspect)
    fallback = tuple(float(v) for v in fallback_box) if fallback_box is not None else None
    key = cache_key(paths, ids, {
        "detector": detector.settings(), "margin": float(margin), "chin_share": float(chin_share),
        "aspect": aspect_value, "fallback_box": fallback, "group_reuse": bool(group_reuse),
        "reuse_stem": reuse_stem if group_reuse else None, "format": image_format,
    })
    root = Path(out_dir).resolve() / key
    start = time.perf_counter()
    plan = _Plan(detector, float(margin), float(chin_share), aspect_value, fallback, image_format,
                 reuse_stem.lower(), root)
    manifest, cached = _cached_or_cropped(plan, key, paths, ids, groups, reuse_stem, workers, progress)
    out = samples.copy()
    out["path"] = [str(root / row["crop"]) for row in manifest["rows"]]
    report = dict(manifest["report"], cached=cached, cache_dir=str(root),
                  seconds=round(time.perf_counter() - start, 3))
    return out, report


def _check_crop_args(samples: pd.DataFrame, *, margin: float, chin_share: float,
                     fallback_box: Sequence[float] | None, group_reuse: bool, image_format: str) -> None:
    """Every argument of `crop_images` checked before any image is read or folder made."""
    missing = [c for c in ("path", "id") if c not in samples.columns]
    if missing:
        raise PodiumError(f"samples table lacks column(s) {missing}; it has {list(samples.columns)}")
    if group_reuse and "group" not in samples.columns:
        raise PodiumError("group_reuse needs a 'group' column (e.g. the person id) in the samples "
                          "table; add one or set group_reuse to false")
    if image_format not in ("jpg", "png"):
        raise PodiumError(f"crop image_format {image_format!r} unknown; valid: jpg, png")
    if margin < 0 or not 0 <= chin_share <= 1:
        raise PodiumError(f"crop margin must be >= 0 and chin_share in [0, 1]; got {margin}, {chin_share}")
    if fallback_box is not None:
        resolve_box(fallback_box, 1000, 1000)  # validate before any work
    duplicated = samples["id"][samples["id"].duplicated()].astype(str).unique().tolist()
    if duplicated:
        raise PodiumError(f"sample ids must be unique to name their crops; repeated: {summarize_list(duplicated)}")


def _cached_or_cropped(plan: _Plan, key: str, paths: list[str], ids: list[str], groups: list, reuse_stem: str,
                       workers: int, progress: Callable[[int, int], None] | None) -> tuple[dict, bool]:
    """The crop folder's manifest and whether it was there already: under the folder's build lock,
    an identical earlier run's crops are reused, else every image is cropped and the manifest written."""
    with _build_lock(plan.root):
        manifest = _read_manifest(plan.root, key, ids)
        if manifest is not None:
            return manifest, True
        units = _work_units(paths, groups, reuse_stem)
        results = _run_units(plan, units, paths, ids, workers, progress)
        return _write_manifest(plan.root, key, paths, ids, results, plan.detector.settings()), False


def cache_key(paths: Sequence[str], ids: Sequence[str], settings: dict[str, Any]) -> str:
    """Hash of the settings and each source's (path, size, mtime_ns): any change, new folder."""
    stats, missing = [], []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        stats.append([path, st.st_size, st.st_mtime_ns])
    if missing:
        raise PodiumError(f"{len(missing)} image(s) to crop do not exist: {summarize_list(missing)}")
    payload = {"version": CACHE_VERSION, "settings": settings, "ids": list(ids), "sources": stats}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def _build_lock(root: Path):
    """Serialise builders of one key, so a second process waits and then reuses."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: atomic writes + manifest-last still keep it consistent
        yield
        return
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_manifest(root: Path, key: str, ids: list[str]) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    rows = manifest.get("rows", [])
    if manifest.get("key") != key or [r["id"] for r in rows] != ids:
        return None
    if not all((root / r["crop"]).is_file() for r in rows):
        return None  # crops deleted by hand: rebuild
    return manifest


def _write_manifest(root: Path, key: str, paths: list[str], ids: list[str],
                    results: list[_Result], settings: dict) -> dict:
    counts = {s: sum(r.source == s for r in results) for s in ("detected", "reused", "fallback")}
    report = {"key": key, "n_images": len(results), **counts,
              "fallback_ids": [i for i, r in zip(ids, results) if r.source == "fallback"]}
    rows = [{"id": i, "source_path": p, "crop": r.crop, "box": list(r.box), "source": r.source}
            for i, p, r in zip(ids, paths, results)]
    manifest = {"key": key, "version": CACHE_VERSION, "detector": settings, "report": report, "rows": rows}
    write_json(root / MANIFEST, manifest)
    return manifest


def _work_units(paths: list[str], groups: list, reuse_stem: str) -> list[list[int]]:
    """Row indices processed together: a group with its reference photo first, else one row."""
    units: list[list[int]] = []
    by_group: dict[Any, list[int]] = {}
    for i, group in enumerate(groups):
        if group is None or pd.isna(group):
            units.append([i])
        else:
            by_group.setdefault(group, []).append(i)
    stem = reuse_stem.lower()
    for members in by_group.values():
        members.sort(key=lambda i: Path(paths[i]).stem.lower() != stem)  # stable: reference first
        units.append(members)
    return units


def _run_units(plan: _Plan, units: list[list[int]], paths: list[str], ids: list[str],
               workers: int, progress: Callable[[int, int], None] | None) -> list[_Result]:
    results: list[_Result | None] = [None] * len(paths)
    job = lambda unit: _process_unit(plan, unit, paths, ids)  # noqa: E731
    done = 0
    outputs: Iterator[list[tuple[int, _Result]]]
    if workers <= 1:
        outputs = map(job, units)
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=workers)  # cv2 and libjpeg release the GIL
        outputs = pool.map(job, units)
    try:
        for unit_results in outputs:
            for i, result in unit_results:
                results[i] = result
            done += len(unit_results)
            if progress is not None:
                progress(done, len(paths))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results  # type: ignore[return-value]


def _process_unit(plan: _Plan, unit: list[int], paths: list[str], ids: list[str]) -> list[tuple[int, _Result]]:
    """Crop one unit; in a group, the first (reference) photo's face box is shared as fractions."""
    shared: Box | None = None  # face box as fractions of the reference image
    has_reference = len(unit) > 1 and Path(paths[unit[0]]).stem.lower() == plan.reuse_stem
    out = []
    for n, i in enumerate(unit):
        image = load_rgb(paths[i])
        height, width = image.shape[:2]
        source, face = "detected", None
        if n > 0 and shared is not None:
            source = "reused"
            face = (shared[0] * width, shared[1] * height, shared[2] * width, shared[3] * height)
        else:
            face = plan.detector(image, id=ids[i], path=paths[i])
            if face is not None and (face[2] - face[0] < 1 or face[3] - face[1] < 1):
                face = None  # a degenerate box is no detection
        if n == 0 and face is not None and has_reference:
            shared = (face[0] / width, face[1] / height, face[2] / width, face[3] / height)
        if face is None:
            source = "fallback"
            box = clip_box(resolve_box(plan.fallback_box or (0.0, 0.0, 1.0, 1.0), width, height), width, height)
        else:
            box = face_crop_box(face, width, height, margin=plan.margin,
                                chin_share=plan.chin_share, aspect=plan.aspect)
        out.append((i, _Result(_write_crop(plan, image, box, ids[i]), box, source)))
    return out


def _crop_name(sample_id: str, image_format: str) -> str:
    """Readable and collision-free: the id's stem plus a short hash of the whole id."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(sample_id).stem)[:60] or "img"
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:10]
    return f"crops/{stem}_{digest}.{image_format}"


def _write_crop(plan: _Plan, image: np.ndarray, box: tuple[int, int, int, int], sample_id: str) -> str:
    x0, y0, x1, y1 = box
    crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    name = _crop_name(sample_id, plan.image_format)
    with atomic_path(plan.root / name) as tmp:
        if plan.image_format == "jpg":
            crop.save(tmp, format="JPEG", quality=95, subsampling=0)
        else:
            crop.save(tmp, format="PNG", compress_level=3)
    return name


def default_crop_dir() -> Path:
    """Cropped copies when ``crop.cache_dir`` is unset: ``<cache root>/crops``, beside the image
    cache (``$PODIUM_CACHE_DIR`` or ``~/.cache/podium``; see `podium.data.cache.cache_root`)."""
    from podium.data.cache import cache_root

    return cache_root() / "crops"


def crop_samples(samples: pd.DataFrame, cfg, log=print) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the config's ``crop.*`` settings: cropped copies are built once and reused."""
    c = cfg.crop
    detector = create_detector(c.detector, **c.options)
    out, report = crop_images(
        samples, c.cache_dir or default_crop_dir(), detector, margin=c.margin, chin_share=c.chin_share,
        aspect=c.aspect, fallback_box=c.fallback_box, group_reuse=c.group_reuse)
    if report["fallback"]:
        log(f"crop: {report['fallback']} of {report['n_images']} image(s) had no detected face and used the "
            f"fallback box (first: {', '.join(map(str, report['fallback_ids'][:3]))})")
    return out, report
