"""Decoded-image cache and DataLoader worker setup.

Decoding a JPEG and resizing it is the deterministic, expensive first step of
every pipeline; augmentation afterwards is random and cheap by comparison.
`ImageCache` runs that first step once per (files, size) and stores the uint8
result, so epochs, CV folds and Optuna trials only pay for augmentation.

On disk the cache is a plain ``.npy`` file read through a memory map: the OS
page cache shares it between DataLoader workers and between processes, and a
worker only opens it when it first reads (nothing large is pickled).

Concurrency: a build writes a temp file beside the target and renames it into
place, then writes a sidecar JSON manifest (also atomically). Readers trust an
``.npy`` only when its manifest exists and matches, so a half-written cache is
never read. An ``fcntl`` lock makes a second process wait for the first build
instead of repeating it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from podium import fileio
from podium.data.images import BadImageError, load_resized
from podium.errors import PodiumError, summarize_list

FORMAT_VERSION = 1
CACHE_DIR_ENV = "PODIUM_CACHE_DIR"  # podium's cache root: images/ (this cache) and crops/ (data.crops) inside
DEFAULT_CACHE_ROOT = Path("~/.cache/podium")

CacheMode = Literal["disk", "memory"]
OnBadImage = Literal["error", "skip"]
Progress = Callable[[int, int], None]

_MODES = ("disk", "memory")
_CHUNK = 16  # images per decode task
_ON_BAD = ("error", "skip")


# ----------------------------------------------------------------------------
# Keys and locations
# ----------------------------------------------------------------------------

def cache_root() -> Path:
    """podium's cache root, one meaning for every cache: ``$PODIUM_CACHE_DIR`` if set, else
    ``~/.cache/podium``. Each cache is a named folder inside it (``images``, ``crops``)."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_ROOT.expanduser()


def default_cache_dir() -> Path:
    """The decoded-image disk cache: ``<cache root>/images`` (see `cache_root`)."""
    return cache_root() / "images"


def _file_fingerprint(path: str) -> list:
    # A missing file still gets a key; decoding it then fails through the
    # on_bad_image policy with a proper message.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [path, -1, -1]
    return [path, st.st_size, st.st_mtime_ns]


def _decoder_versions() -> dict[str, str]:
    # Another Pillow/libjpeg or OpenCV can decode or resize to slightly
    # different pixels; the cache must match what load_resized returns now.
    import cv2
    import PIL

    return {"pillow": PIL.__version__, "opencv": cv2.__version__}


def cache_key(paths: Sequence[str | Path], size: tuple[int, int], draft: bool = True, resize: str = "squash") -> str:
    """sha256 over everything that decides the cached pixels.

    Absolute paths in order with each file's size and mtime_ns (so rewriting a
    file invalidates the cache), the target size, the draft flag, the format
    version, the decoder library versions and the resize mode (``data.resize``;
    absent for ``squash``, so caches written before the modes existed stay valid).
    """
    h, w = _check_size(size)
    payload = {
        "version": FORMAT_VERSION,
        "size": [h, w],
        "draft": bool(draft),
        "decoders": _decoder_versions(),
        "files": [_file_fingerprint(os.path.abspath(p)) for p in paths],
    }
    if resize != "squash":
        payload["resize"] = resize
    blob = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise PodiumError(
            f"image cache size must be (height, width) integers; got {size!r}. "
            "Set it to e.g. (224, 224)."
        ) from None
    if h <= 0 or w <= 0:
        raise PodiumError(
            f"image cache size must be positive (height, width); got {size!r}. "
            "Set it to e.g. (224, 224)."
        )
    return h, w


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PodiumError(
            f"image cache {name} must be one of {', '.join(choices)}; got {value!r}."
        )


# ----------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------

class ImageCache:
    """Decoded, resized uint8 images (N, h, w, 3), in memory or memory-mapped.

    Create with `ImageCache.build`. ``get(i)`` returns a private copy, so an
    in-place augmentation can never corrupt the cache for later epochs. Rows
    listed in ``bad_indices`` are zeros: the dataset should drop them.

    A disk cache pickles as its file name (cheap for spawn/forkserver
    DataLoader workers); a memory cache pickles its whole array, so prefer
    disk mode whenever workers are not forked.
    """

    def __init__(
        self,
        paths: Sequence[str],
        size: tuple[int, int],
        key: str,
        *,
        draft: bool = True,
        array: np.ndarray | None = None,
        path: Path | None = None,
        bad_indices: Sequence[int] = (),
        resize: str = "squash",
    ):
        if array is None and path is None:
            raise ValueError("ImageCache needs an in-memory array or a .npy path")
        self.paths = [str(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.key = key
        self.draft = draft
        self.resize = resize
        self.path = path
        self.bad_indices = sorted(int(i) for i in bad_indices)
        self._array = array

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        size: tuple[int, int],
        *,
        mode: CacheMode = "disk",
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        progress: Progress | None = None,
        on_bad_image: OnBadImage = "error",
        draft: bool = True,
        lazy: bool = False,
        resize: str = "squash",
    ) -> ImageCache:
        """Return the cache for ``paths`` at ``size`` = (h, w), decoding only if needed.

        ``lazy=True`` (disk mode) decodes nothing up front: rows are filled the
        first time they are read (the first epoch), so the first epoch costs no
        more than uncached loading; the finished file is published for later
        runs by `FillingCache.finalize` (or by the next `build`).

        ``mode="disk"`` reuses a matching cache file written by any earlier
        run or concurrent process; ``"memory"`` always decodes into RAM (for
        small datasets or read-only machines). ``on_bad_image="skip"`` keeps
        going past undecodable files and lists them in ``bad_indices`` (their
        rows are zeros); ``"error"`` raises `BadImageError` naming them.
        ``progress(done, total)`` is called from the calling thread.
        """
        _check_choice("mode", mode, _MODES)
        _check_choice("on_bad_image", on_bad_image, _ON_BAD)
        size = _check_size(size)
        abs_paths = [os.path.abspath(p) for p in paths]
        key = cache_key(abs_paths, size, draft, resize)
        if mode == "memory":
            array = np.zeros((len(abs_paths), *size, 3), dtype=np.uint8)
            errors = _decode_into(array, abs_paths, size, draft, workers, progress, resize=resize)
            _raise_if_bad(errors, abs_paths, on_bad_image)
            return cls(abs_paths, size, key, draft=draft, array=array,
                       bad_indices=sorted(errors), resize=resize)
        directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if lazy:
            return _open_filling(directory, abs_paths, size, key, draft, on_bad_image, resize=resize)
        return _build_on_disk(cls, directory, abs_paths, size, key, draft, workers, progress,
                              on_bad_image, resize=resize)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> np.ndarray:
        """HxWx3 uint8 image ``index``, a copy that the caller may modify."""
        return np.array(self._data()[index], dtype=np.uint8, copy=True)

    __getitem__ = get

    def array(self) -> np.ndarray:
        """Every image, (N, h, w, 3) uint8 (read-only when memory-mapped): for a whole-set copy."""
        return self._data()

    @property
    def bad_paths(self) -> list[str]:
        """Files that failed to decode (``on_bad_image="skip"``), for the run log."""
        return [self.paths[i] for i in self.bad_indices]

    @property
    def nbytes(self) -> int:
        h, w = self.size
        return len(self) * h * w * 3

    def _data(self) -> np.ndarray:
        if self._array is None:
            # First read in this process (e.g. a DataLoader worker): map lazily.
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memory map instead of receiving the pixels.
        state = self.__dict__.copy()
        if self.path is not None:
            state["_array"] = None
        return state

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"ImageCache(n={len(self)}, size={self.size}, at={where})"


class FillingCache(ImageCache):
    """A disk cache that fills itself while the first epoch reads it.

    Row i is decoded on its first read and written into a shared memory map;
    a one-byte flag per row (0 = empty, 1 = filled, 2 = undecodable) tells
    every process, DataLoader workers included, what is already there.
    Concurrent fillers write identical pixels, so no row lock is needed.
    """

    def __init__(self, paths, size, key, *, draft, path, flags_path, manifest, on_bad_image, resize="squash"):
        super().__init__(paths, size, key, draft=draft, path=path, resize=resize)
        self.flags_path, self.manifest, self.on_bad_image = flags_path, manifest, on_bad_image
        self._flags = None

    def _data(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r+")
        return self._array

    def _flag_array(self) -> np.ndarray:
        if self._flags is None:
            self._flags = np.load(self.flags_path, mmap_mode="r+")
        return self._flags

    def get(self, index: int) -> np.ndarray:
        flags = self._flag_array()
        if flags[index] == 1:
            return np.array(self._data()[index], dtype=np.uint8, copy=True)
        try:
            image = load_resized(self.paths[index], self.size, draft=self.draft, mode=self.resize)
        except BadImageError:
            flags[index] = 2
            raise
        self._data()[index] = image
        flags[index] = 1
        return image

    __getitem__ = get

    @property
    def complete(self) -> bool:
        return bool((self._flag_array() != 0).all())

    def finalize(self) -> ImageCache | None:
        """Publish the filled file as a regular cache; None while rows are missing."""
        if not self.complete:
            return None
        with _exclusive_lock(self.manifest.with_suffix(".lock")):
            final = self.manifest.with_suffix(".npy")
            shape = (len(self.paths), *self.size, 3)
            if _read_valid(final, self.manifest, self.key, shape) is None:
                self._data().flush()
                bad = np.flatnonzero(self._flag_array() == 2).tolist()
                os.replace(self.path, final)
                _write_manifest(self.manifest, self.paths, self.size, self.key, self.draft,
                                {i: f"cannot decode image {self.paths[i]}" for i in bad})
            self.flags_path.unlink(missing_ok=True)
        found = _read_valid(final, self.manifest, self.key, shape)
        return ImageCache(self.paths, self.size, self.key, draft=self.draft, path=final,
                          bad_indices=found["bad_indices"], resize=self.resize)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_array"], state["_flags"] = None, None
        return state


def _open_filling(directory: Path, paths: list[str], size: tuple[int, int], key: str, draft: bool,
                  on_bad_image: str, resize: str = "squash") -> ImageCache:
    """The finished cache if there is one, else a `FillingCache` (created or resumed)."""
    npy, manifest = directory / f"{key}.npy", directory / f"{key}.json"
    partial, flags = directory / f"{key}.partial.npy", directory / f"{key}.flags.npy"
    shape = (len(paths), *size, 3)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(directory / f"{key}.lock"):
        found = _read_valid(npy, manifest, key, shape)
        if found is None and not (partial.exists() and flags.exists()):
            _check_free_space(directory, int(np.prod(shape)))
            with fileio.atomic_path(partial) as tmp:  # sparse until rows are written
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
            with fileio.atomic_path(flags) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.zeros(len(paths), dtype=np.uint8))
    if found is not None:
        errors = {int(i): msg for i, msg in found["bad_images"].items()}
        _raise_if_bad(errors, paths, on_bad_image)
        return ImageCache(paths, size, key, draft=draft, path=npy, bad_indices=sorted(errors), resize=resize)
    filling = FillingCache(paths, size, key, draft=draft, path=partial, flags_path=flags, manifest=manifest,
                           on_bad_image=on_bad_image, resize=resize)
    return filling.finalize() or filling


# ----------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------

def _decode_into(
    out: np.ndarray,
    paths: Sequence[str],
    size: tuple[int, int],
    draft: bool,
    workers: int | None,
    progress: Progress | None,
    resize: str = "squash",
) -> dict[int, str]:
    """Fill ``out[i]`` with image i; return {index: error message} for failures.

    Threads, not processes: Pillow and OpenCV release the GIL while decoding
    and resizing, and threads write straight into ``out`` (a memory map or
    array) without pickling pixels back to the parent.
    """
    n = len(paths)
    errors: dict[int, str] = {}
    # Chunks keep the number of futures small for million-image datasets
    # while still giving regular progress updates.
    chunks = [range(start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK)]

    def work(chunk: range) -> int:
        for i in chunk:
            try:
                out[i] = load_resized(paths[i], size, draft=draft, mode=resize)
            except BadImageError as exc:
                errors[i] = str(exc)
        return len(chunk)

    threads = workers if workers is not None else available_cpus()
    threads = max(1, min(int(threads), max(len(chunks), 1)))
    done = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="podium-decode") as pool:
        futures = [pool.submit(work, chunk) for chunk in chunks]
        try:
            for fut in as_completed(futures):
                done += fut.result()  # anything but BadImageError is a bug: let it out
                if progress is not None:
                    progress(done, n)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return dict(sorted(errors.items()))


def _raise_if_bad(errors: dict[int, str], paths: Sequence[str], on_bad_image: str) -> None:
    if not errors or on_bad_image == "skip":
        return
    bad = sorted(errors)
    raise BadImageError(
        f"{len(bad)} of {len(paths)} images cannot be decoded: "
        f"{summarize_list([paths[i] for i in bad])}. First error: {errors[bad[0]]}. "
        "Remove or fix these files, or set on_bad_image='skip' to drop them."
    )


# ----------------------------------------------------------------------------
# Disk mode
# ----------------------------------------------------------------------------

def _build_on_disk(
    cls: type[ImageCache],
    directory: Path,
    paths: list[str],
    size: tuple[int, int],
    key: str,
    draft: bool,
    workers: int | None,
    progress: Progress | None,
    on_bad_image: str,
    resize: str = "squash",
) -> ImageCache:
    npy = directory / f"{key}.npy"
    manifest = directory / f"{key}.json"
    shape = (len(paths), *size, 3)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PodiumError(
            f"cannot create image cache dir {directory}: {exc}. Point cache_dir or "
            f"${CACHE_DIR_ENV} at a writable folder, or use mode='memory'."
        ) from None
    found = _read_valid(npy, manifest, key, shape)
    if found is None:
        with _exclusive_lock(directory / f"{key}.lock"):
            # Another process may have finished while this one waited.
            found = _read_valid(npy, manifest, key, shape)
            if found is None:
                found = _write_cache(npy, manifest, paths, size, key, draft, workers, progress, resize=resize)
    errors = {int(i): msg for i, msg in found["bad_images"].items()}
    _raise_if_bad(errors, paths, on_bad_image)
    return cls(paths, size, key, draft=draft, path=npy, bad_indices=sorted(errors), resize=resize)


def _read_valid(npy: Path, manifest: Path, key: str, shape: tuple) -> dict | None:
    """The manifest if it and the .npy both describe this key and shape."""
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
        return None
    if tuple(meta.get("shape", ())) != shape:
        return None
    try:
        mapped = np.load(npy, mmap_mode="r")
    except (FileNotFoundError, ValueError, OSError):
        return None
    if mapped.shape != shape or mapped.dtype != np.uint8:
        return None
    return meta


def _write_cache(
    npy: Path,
    manifest: Path,
    paths: list[str],
    size: tuple[int, int],
    key: str,
    draft: bool,
    workers: int | None,
    progress: Progress | None,
    resize: str = "squash",
) -> dict:
    shape = (len(paths), *size, 3)
    _check_free_space(npy.parent, int(np.prod(shape)))
    with fileio.atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            errors = _decode_into(out, paths, size, draft, workers, progress, resize=resize)
            out.flush()
        finally:
            del out
    return _write_manifest(manifest, paths, size, key, draft, errors)


def _write_manifest(manifest: Path, paths: list[str], size: tuple[int, int], key: str, draft: bool,
                    errors: dict[int, str]) -> dict:
    meta = {
        "version": FORMAT_VERSION,
        "key": key,
        "shape": [len(paths), *size, 3],
        "size": list(size),
        "draft": draft,
        "bad_indices": sorted(errors),
        "bad_images": {str(i): msg for i, msg in errors.items()},
        "paths": paths,
    }
    # Written last: its presence is what tells readers the .npy is complete.
    fileio.write_json(manifest, meta)
    return meta


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    # Keep a margin so the cache never fills the disk to the last byte.
    if needed + (256 << 20) > free:
        raise PodiumError(
            f"image cache needs {needed / 2**30:.2f} GiB but {directory} has "
            f"{free / 2**30:.2f} GiB free. Free space, point cache_dir or "
            f"${CACHE_DIR_ENV} at a bigger disk, use a smaller image size, "
            "or turn the cache off."
        )


@contextmanager
def _exclusive_lock(lock_path: Path):
    """Block until this process alone may build the cache for one key.

    Without fcntl (Windows) both processes build; the atomic renames still
    leave one complete, identical file, just with duplicated work.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------
# DataLoader workers
# ----------------------------------------------------------------------------

def _cgroup_cpu_limit(cpu_max: str | None = None) -> float | None:
    """CPUs allowed by a cgroup v2 quota (``docker --cpus``), or None if unlimited."""
    if cpu_max is None:
        try:
            cpu_max = Path("/sys/fs/cgroup/cpu.max").read_text()
        except OSError:
            return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if period > 0 else None


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup quota.

    os.cpu_count() reports the whole host, which oversubscribes containers
    and taskset-pinned jobs.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def default_num_workers(cpus: int | None = None) -> int:
    """DataLoader workers: one per spare core, at most 8, none on one core.

    One core stays with the main process, which runs the model step, collation
    and pinning. With the decoded cache a worker only augments small uint8
    arrays, so beyond ~8 workers the loader is no longer the bottleneck while
    each worker still costs RAM and start-up time. On a single core, a worker
    would only add inter-process copies, so loading stays in the main process.
    """
    cores = available_cpus() if cpus is None else max(1, int(cpus))
    return max(0, min(8, cores - 1))


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one thread per worker and distinct seeds.

    Without it every worker runs torch and OpenCV thread pools sized for the
    whole machine (N workers x N threads), and workers forked from the same
    parent share numpy/random/albumentations RNG state, so they apply the same
    "random" augmentations. The seed is torch's per-worker seed, which
    changes every epoch and follows the DataLoader's generator.
    """
    import torch

    # No thread-pool calls here: torch's worker loop already runs torch.set_num_threads(1),
    # and touching torch's or OpenCV's pool again in a forked child can deadlock.
    # OpenCV runs single-threaded everywhere in podium (images.cv2_module), workers included.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed_transforms(info.dataset, seed)


def reseed_transforms(dataset: Any, seed: int) -> int:
    """Reseed every albumentations Compose held by ``dataset``; return how many.

    albumentations 2.x keeps its own generators inside each Compose, which
    numpy/random seeding does not reach. Looks at the dataset's attributes and
    follows the ``dataset`` / ``datasets`` attributes of wrappers such as
    torch's Subset and ConcatDataset.
    """
    from albumentations.core.composition import BaseCompose

    if isinstance(dataset, BaseCompose):
        dataset.set_random_seed(seed)
        return 1
    count = 0
    for name, value in getattr(dataset, "__dict__", {}).items():
        if isinstance(value, BaseCompose):
            value.set_random_seed(seed)
            count += 1
        elif name == "dataset" and value is not dataset:
            count += reseed_transforms(value, seed)
        elif name == "datasets" and isinstance(value, (list, tuple)):
            count += sum(reseed_transforms(item, seed) for item in value)
    return count
