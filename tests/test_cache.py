"""Decoded-image cache, DataLoader worker setup and draft JPEG decoding."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from podium.data import cache as cache_mod
from podium.data.cache import ImageCache, cache_key, default_num_workers, worker_init
from podium.data.images import BadImageError, load_resized, load_rgb
from podium.errors import PodiumError

SHARED_PORTRAITS = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "portraits_mask2.tar"
)


def _write_image(path: Path, seed: int, size=(37, 29), fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    # Smooth gradients plus noise: JPEG-friendly yet different per seed.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     np.full_like(xx, seed * 37 % 256)], axis=-1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def image_paths(tmp_path: Path) -> list[str]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(6):
        ext = ".png" if i % 3 == 0 else ".jpg"
        size = (37 + 11 * i, 29 + 7 * i)  # mixed sizes: some grow, some shrink
        paths.append(str(_write_image(folder / f"im{i}{ext}", seed=i, size=size)))
    return paths


def _cache_files(directory: Path) -> dict[str, list[str]]:
    names = sorted(p.name for p in directory.iterdir())
    return {
        "npy": [n for n in names if n.endswith(".npy")],
        "json": [n for n in names if n.endswith(".json")],
        "tmp": [n for n in names if n.endswith(".tmp")],
    }


# ----------------------------------------------------------------------------
# Correctness and reuse
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_cache_returns_exactly_the_uncached_pixels(image_paths, tmp_path, mode):
    size = (24, 32)
    cache = ImageCache.build(image_paths, size, mode=mode, cache_dir=tmp_path / "c", workers=3)
    assert len(cache) == len(image_paths)
    assert cache.bad_indices == []
    for i, path in enumerate(image_paths):
        got = cache.get(i)
        assert got.dtype == np.uint8 and got.shape == (24, 32, 3)
        np.testing.assert_array_equal(got, load_resized(path, size))
    if mode == "disk":
        files = _cache_files(tmp_path / "c")
        assert files["npy"] == [f"{cache.key}.npy"]
        assert files["json"] == [f"{cache.key}.json"]
        assert files["tmp"] == []
        assert cache.path == tmp_path / "c" / f"{cache.key}.npy"
    else:
        assert cache.path is None
        assert not (tmp_path / "c").exists()


def test_memory_and_disk_modes_agree(image_paths, tmp_path):
    disk = ImageCache.build(image_paths, (20, 20), cache_dir=tmp_path)
    memory = ImageCache.build(image_paths, (20, 20), mode="memory")
    assert disk.key == memory.key
    for i in range(len(disk)):
        np.testing.assert_array_equal(disk.get(i), memory.get(i))


def test_get_returns_a_copy_so_augmentation_cannot_corrupt_the_cache(image_paths, tmp_path):
    for mode in ("disk", "memory"):
        cache = ImageCache.build(image_paths, (16, 16), mode=mode, cache_dir=tmp_path)
        first = cache.get(0)
        first[:] = 0
        np.testing.assert_array_equal(cache.get(0), load_resized(image_paths[0], (16, 16)))


def test_second_build_reuses_the_file_without_decoding(image_paths, tmp_path):
    calls: list[tuple[int, int]] = []
    first = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path,
                             progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (len(image_paths), len(image_paths))
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # strictly increasing
    mtime = first.path.stat().st_mtime_ns
    calls.clear()
    second = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path,
                              progress=lambda d, n: calls.append((d, n)))
    assert calls == []
    assert second.key == first.key and second.path == first.path
    assert second.path.stat().st_mtime_ns == mtime


def test_rebuilt_when_a_source_file_changes(image_paths, tmp_path):
    size = (16, 16)
    before = ImageCache.build(image_paths, size, cache_dir=tmp_path)
    old_pixels = before.get(1)
    stat = os.stat(image_paths[1])
    _write_image(Path(image_paths[1]), seed=99, size=(45, 30))  # same file name, new content
    # Force a different mtime even on filesystems with coarse timestamps.
    os.utime(image_paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after = ImageCache.build(image_paths, size, cache_dir=tmp_path)
    assert after.key != before.key
    new_pixels = after.get(1)
    np.testing.assert_array_equal(new_pixels, load_resized(image_paths[1], size))
    assert not np.array_equal(new_pixels, old_pixels)
    np.testing.assert_array_equal(after.get(0), before.get(0))


def test_rebuilt_when_size_or_order_or_draft_changes(image_paths, tmp_path):
    base = cache_key(image_paths, (16, 16))
    assert cache_key(image_paths, (16, 17)) != base
    assert cache_key(list(reversed(image_paths)), (16, 16)) != base
    assert cache_key(image_paths, (16, 16), draft=False) != base
    assert cache_key(image_paths, (16, 16)) == base
    # Relative and absolute spellings of the same files share one cache.
    rel = [os.path.relpath(p) for p in image_paths]
    assert cache_key(rel, (16, 16)) == base

    small = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path)
    large = ImageCache.build(image_paths, (8, 12), cache_dir=tmp_path)
    assert small.key != large.key
    assert large.get(0).shape == (8, 12, 3)
    np.testing.assert_array_equal(large.get(2), load_resized(image_paths[2], (8, 12)))
    assert len(_cache_files(tmp_path)["npy"]) == 2


def test_cache_dir_from_environment(image_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("PODIUM_CACHE_DIR", str(tmp_path / "from_env"))
    assert cache_mod.default_cache_dir() == tmp_path / "from_env" / "images"
    from podium.data.crops import default_crop_dir

    assert default_crop_dir() == tmp_path / "from_env" / "crops"  # one meaning: the root of every cache
    cache = ImageCache.build(image_paths[:2], (8, 8))
    assert cache.path.parent == tmp_path / "from_env" / "images"
    monkeypatch.delenv("PODIUM_CACHE_DIR")
    assert cache_mod.default_cache_dir() == Path("~/.cache/podium/images").expanduser()


def test_incomplete_or_mismatched_cache_is_not_trusted(image_paths, tmp_path):
    size = (16, 16)
    cache = ImageCache.build(image_paths, size, cache_dir=tmp_path)
    manifest = tmp_path / f"{cache.key}.json"

    # A crash between the .npy rename and the manifest: no manifest, garbage data.
    manifest.unlink()
    np.save(cache.path, np.full((len(image_paths), 16, 16, 3), 7, np.uint8))
    rebuilt = ImageCache.build(image_paths, size, cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.get(0), load_resized(image_paths[0], size))

    # A manifest for another key or shape is ignored too.
    meta = json.loads(manifest.read_text())
    meta["shape"] = [1, 16, 16, 3]
    manifest.write_text(json.dumps(meta))
    np.save(cache.path, np.zeros((1, 16, 16, 3), np.uint8))
    again = ImageCache.build(image_paths, size, cache_dir=tmp_path)
    assert again.get(3).any()
    np.testing.assert_array_equal(again.get(3), load_resized(image_paths[3], size))


# ----------------------------------------------------------------------------
# Bad images
# ----------------------------------------------------------------------------

def test_skip_mode_records_a_corrupt_file_and_error_mode_names_it(image_paths, tmp_path):
    corrupt = Path(image_paths[2])
    corrupt.write_bytes(b"definitely not a jpeg")
    cache = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path, on_bad_image="skip")
    assert cache.bad_indices == [2]
    assert cache.bad_paths == [str(corrupt)]
    assert not cache.get(2).any()
    np.testing.assert_array_equal(cache.get(3), load_resized(image_paths[3], (16, 16)))
    meta = json.loads((tmp_path / f"{cache.key}.json").read_text())
    assert meta["bad_indices"] == [2]
    assert str(corrupt) in meta["bad_images"]["2"]

    # The reused file still knows the bad index, and "error" refuses it by name.
    with pytest.raises(BadImageError, match=corrupt.name):
        ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path, on_bad_image="error")
    with pytest.raises(BadImageError, match=r"1 of 6 images .*on_bad_image='skip'"):
        ImageCache.build(image_paths, (16, 16), mode="memory")
    memory = ImageCache.build(image_paths, (16, 16), mode="memory", on_bad_image="skip")
    assert memory.bad_indices == [2]


def test_error_mode_raises_but_records_bad_files_for_reuse(image_paths, tmp_path):
    Path(image_paths[4]).unlink()
    with pytest.raises(BadImageError, match="im4"):
        ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path / "c")
    files = _cache_files(tmp_path / "c")
    assert files["tmp"] == []
    # The decode itself succeeded for the others; the manifest records the
    # missing file so a later skip-mode run needs no second decode.
    skip = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path / "c",
                            on_bad_image="skip")
    assert skip.bad_indices == [4]


def test_invalid_arguments_are_user_errors(image_paths, tmp_path):
    with pytest.raises(PodiumError, match="mode must be one of disk, memory"):
        ImageCache.build(image_paths, (8, 8), mode="ram", cache_dir=tmp_path)
    with pytest.raises(PodiumError, match="on_bad_image"):
        ImageCache.build(image_paths, (8, 8), on_bad_image="ignore", cache_dir=tmp_path)
    with pytest.raises(PodiumError, match="positive"):
        ImageCache.build(image_paths, (0, 8), cache_dir=tmp_path)


# ----------------------------------------------------------------------------
# Two processes at once
# ----------------------------------------------------------------------------

def _build_in_child(paths: list[str], cache_dir: str, start_at: float) -> tuple[str, str, int]:
    # Line both processes up so they really race for the same key.
    time.sleep(max(0.0, start_at - time.time()))
    decoded = []
    cache = ImageCache.build(paths, (24, 24), cache_dir=cache_dir, workers=1,
                             progress=lambda d, n: decoded.append(d))
    data = np.stack([cache.get(i) for i in range(len(cache))])
    import hashlib

    return cache.key, hashlib.sha256(data.tobytes()).hexdigest(), max(decoded, default=0)


def test_two_processes_building_at_once_share_one_valid_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [str(_write_image(folder / f"{i}.jpg", seed=i, size=(64, 48))) for i in range(40)]
    cache_dir = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    start_at = time.time() + 1.5  # after both children have imported podium
    with ctx.Pool(2) as pool:
        results = pool.starmap(_build_in_child, [(paths, str(cache_dir), start_at)] * 2)
    (key_a, digest_a, decoded_a), (key_b, digest_b, decoded_b) = results
    assert key_a == key_b and digest_a == digest_b
    # The lock makes the second process wait and reuse instead of decoding again.
    assert sorted([decoded_a, decoded_b]) == [0, len(paths)]
    files = _cache_files(cache_dir)
    assert files["npy"] == [f"{key_a}.npy"] and files["json"] == [f"{key_a}.json"]
    assert files["tmp"] == []
    here = ImageCache.build(paths, (24, 24), cache_dir=cache_dir, mode="disk")
    for i in (0, 17, 39):
        np.testing.assert_array_equal(here.get(i), load_resized(paths[i], (24, 24)))


# ----------------------------------------------------------------------------
# DataLoader workers
# ----------------------------------------------------------------------------

class _CacheDataset:
    """What the lead's dataset looks like from the cache's side."""

    def __init__(self, cache: ImageCache, transform=None):
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        import torch

        image = self.cache.get(i)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), torch.get_num_threads(), i


def test_pickled_disk_cache_carries_no_pixels(image_paths, tmp_path):
    cache = ImageCache.build(image_paths, (64, 64), cache_dir=tmp_path)
    cache.get(0)  # map it in this process first
    blob = pickle.dumps(cache)
    assert len(blob) < cache.nbytes / 4
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.get(5), cache.get(5))


def test_reading_inside_dataloader_workers(image_paths, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    cache = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path)
    loader = DataLoader(_CacheDataset(cache), batch_size=2, num_workers=2,
                        worker_init_fn=worker_init)
    seen = {}
    for images, threads, indices in loader:
        assert images.dtype == torch.uint8
        assert threads.tolist() == [1] * len(indices)
        for image, i in zip(images, indices.tolist()):
            seen[i] = image.numpy()
    assert sorted(seen) == list(range(len(image_paths)))
    for i, image in seen.items():
        np.testing.assert_array_equal(image, load_resized(image_paths[i], (16, 16)))


def test_worker_init_gives_workers_different_augmentations(tmp_path):
    import albumentations as A
    import torch
    from torch.utils.data import DataLoader

    # Two copies of one image; each worker augments one. Forked workers start
    # with identical albumentations generators, so without worker_init both
    # outputs are equal (checked by hand with albumentations 2.0.8).
    paths = [str(_write_image(tmp_path / "a.png", seed=1, size=(32, 32)))] * 2
    cache = ImageCache.build(paths, (32, 32), mode="memory")
    transform = A.Compose([A.RandomBrightnessContrast(p=1.0), A.HorizontalFlip(p=0.5)])
    dataset = _CacheDataset(cache, transform)
    subset = torch.utils.data.Subset(dataset, [0, 1])
    assert cache_mod.reseed_transforms(subset, 0) == 1

    def run(epoch_seed: int) -> list[np.ndarray]:
        loader = DataLoader(subset, batch_size=1, num_workers=2, worker_init_fn=worker_init,
                            generator=torch.Generator().manual_seed(epoch_seed))
        return [images[0].numpy() for images, _, _ in loader]

    first = run(0)
    assert not np.array_equal(first[0], first[1])
    # Same DataLoader seed -> same augmentations (reproducible runs).
    again = run(0)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    # A new epoch (new DataLoader seed) draws new augmentations.
    assert not np.array_equal(run(1)[0], first[0])


def test_default_num_workers():
    assert default_num_workers(1) == 0
    assert default_num_workers(2) == 1
    assert default_num_workers(4) == 3
    assert default_num_workers(64) == 8
    assert 0 <= default_num_workers() <= 8
    assert cache_mod._cgroup_cpu_limit("max 100000\n") is None
    assert cache_mod._cgroup_cpu_limit("250000 100000\n") == 2.5


# ----------------------------------------------------------------------------
# Reduced-size (draft) JPEG decoding
# ----------------------------------------------------------------------------

def _quadrant_image(h: int, w: int) -> np.ndarray:
    """Red top-left quadrant on green: shows any rotation or mirroring."""
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = (0, 200, 0)
    image[: h // 2, : w // 2] = (220, 0, 0)
    return image


def _assert_red_top_left(image: np.ndarray) -> None:
    h, w = image.shape[:2]
    tl = image[: h // 2, : w // 2].reshape(-1, 3).mean(0)
    br = image[h // 2:, w // 2:].reshape(-1, 3).mean(0)
    tr = image[: h // 2, w // 2:].reshape(-1, 3).mean(0)
    assert tl[0] > 150 and tl[1] < 60, tl
    assert br[1] > 150 and br[0] < 60, br
    assert tr[1] > 150 and tr[0] < 60, tr


def test_draft_decodes_smaller_but_never_below_the_target(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(_quadrant_image(600, 800)).save(path, quality=95)
    full = load_rgb(path)
    assert full.shape == (600, 800, 3)
    small = load_rgb(path, draft_size=(100, 50))  # (w, h)
    assert small.shape[0] >= 50 and small.shape[1] >= 100
    assert small.shape[:2] == (75, 100)  # 1/8 scale: the draft really ran
    near_full = load_rgb(path, draft_size=(500, 350))
    assert near_full.shape == (600, 800, 3)  # halving would go below 500 wide
    for size in [(50, 100), (224, 224), (299, 401)]:
        drafted = load_resized(path, size)
        plain = load_resized(path, size, draft=False)
        assert drafted.shape == plain.shape == (*size, 3)
        assert np.abs(drafted.astype(int) - plain.astype(int)).mean() < 4
        _assert_red_top_left(drafted)


def test_draft_respects_exif_rotation(tmp_path):
    # Displayed image is 400 wide x 800 tall; stored rotated, EXIF 6 turns it upright.
    shown = _quadrant_image(800, 400)
    stored = np.ascontiguousarray(np.rot90(shown, k=1))  # 800 wide x 400 tall on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    upright = load_rgb(path)
    assert upright.shape == (800, 400, 3)
    _assert_red_top_left(upright)
    # Target 390 wide x 150 tall: drafting on the stored sides without the swap
    # would halve to 200 x 400 displayed, narrower than the 390 asked for.
    drafted = load_rgb(path, draft_size=(390, 150))
    assert drafted.shape[1] >= 390 and drafted.shape[0] >= 150
    _assert_red_top_left(drafted)
    # A small target may draft, and still comes out upright at the exact size.
    tiny = load_rgb(path, draft_size=(50, 100))
    assert tiny.shape == (100, 50, 3)  # 1/8 of the stored 800 x 400, turned upright
    _assert_red_top_left(tiny)
    for size in [(150, 390), (64, 32)]:
        out = load_resized(path, size)
        assert out.shape == (*size, 3)
        _assert_red_top_left(out)


def _extract_portraits(tmp_path: Path, count: int) -> list[Path]:
    out = []
    with tarfile.open(SHARED_PORTRAITS) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                target = tmp_path / f"{len(out)}.jpg"
                target.write_bytes(tar.extractfile(member).read())
                out.append(target)
                if len(out) == count:
                    break
    return out


@pytest.mark.skipif(not SHARED_PORTRAITS.exists(),
                    reason="../shared/data/portraits_mask2.tar absent")
def test_draft_on_real_portraits(tmp_path, capsys):
    """Same size and close pixels with or without draft; timings printed, not asserted."""
    paths = _extract_portraits(tmp_path, 20)
    assert len(paths) == 20
    lines = []
    for size in [(224, 224), (112, 112)]:
        timings = {}
        for draft in (False, True):
            load_resized(paths[0], size, draft=draft)  # warm imports
            start = time.perf_counter()
            outputs = [load_resized(p, size, draft=draft) for p in paths]
            timings[draft] = (time.perf_counter() - start) / len(paths) * 1e3
            assert all(o.shape == (*size, 3) for o in outputs)
            if draft:
                plain = [load_resized(p, size, draft=False) for p in paths]
                diff = max(np.abs(a.astype(int) - b.astype(int)).mean()
                           for a, b in zip(outputs, plain))
                assert diff < 6
        lines.append(f"{size}: plain {timings[False]:.2f} ms/img, draft {timings[True]:.2f} ms/img")
    with capsys.disabled():
        print("\nload_resized on 20 portraits: " + "; ".join(lines))


# ---------------------------------------------------------------- filling during the first epoch

class _Rows:
    """Map-style dataset over a cache (a plain class: DataLoader only needs len/getitem)."""

    def __init__(self, cache):
        self.cache = cache

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        return self.cache.get(i), i


def test_lazy_cache_fills_on_read_then_publishes(image_paths, tmp_path):
    from podium.data.cache import FillingCache

    cache = ImageCache.build(image_paths, (24, 20), cache_dir=tmp_path, lazy=True)
    assert isinstance(cache, FillingCache) and not cache.complete
    assert not list(tmp_path.glob("*.json"))  # nothing decoded, nothing published yet
    for i in range(len(image_paths) - 1):
        np.testing.assert_array_equal(cache.get(i), load_resized(image_paths[i], (24, 20)))
    assert cache.finalize() is None  # one row is still missing
    again = ImageCache.build(image_paths, (24, 20), cache_dir=tmp_path, lazy=True)  # resumes the same fill
    assert isinstance(again, FillingCache)
    again.get(len(image_paths) - 1)
    published = again.finalize()
    assert published is not None and not isinstance(published, FillingCache)
    reused = ImageCache.build(image_paths, (24, 20), cache_dir=tmp_path)  # eager build: reuses, decodes nothing
    for i, path in enumerate(image_paths):
        np.testing.assert_array_equal(reused.get(i), load_resized(path, (24, 20)))
    assert not list(tmp_path.glob("*.partial.npy")) and not list(tmp_path.glob("*.flags.npy"))


def test_lazy_cache_filled_by_dataloader_workers(image_paths, tmp_path):
    from torch.utils.data import DataLoader

    cache = ImageCache.build(image_paths, (16, 16), cache_dir=tmp_path, lazy=True)
    loader = DataLoader(_Rows(cache), batch_size=2, num_workers=2, worker_init_fn=worker_init)
    seen = {int(i): img.numpy() for images, idx in loader for img, i in zip(images, idx)}
    assert cache.complete  # rows written by the workers are visible here
    published = cache.finalize()
    for i, path in enumerate(image_paths):
        np.testing.assert_array_equal(seen[i], load_resized(path, (16, 16)))
        np.testing.assert_array_equal(published.get(i), seen[i])


def test_lazy_cache_marks_bad_images(image_paths, tmp_path):
    bad = Path(image_paths[0]).with_name("broken.jpg")
    bad.write_bytes(b"not a jpeg")
    paths = image_paths + [str(bad)]
    cache = ImageCache.build(paths, (16, 16), cache_dir=tmp_path, lazy=True)
    with pytest.raises(BadImageError, match="broken.jpg"):
        cache.get(len(paths) - 1)
    for i in range(len(image_paths)):
        cache.get(i)
    assert cache.finalize().bad_indices == [len(paths) - 1]
