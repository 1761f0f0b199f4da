"""Tests for podium.data.crops: crop geometry, detectors, the crop cache, group reuse."""
from __future__ import annotations

import json
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from podium.data import crops as pp
from podium.errors import PodiumError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
YUNET = SHARED / "weights" / "face_detection_yunet_2026may.onnx"
PORTRAITS = SHARED / "data" / "portraits_mask2.tar"


def _write_image(path: Path, width: int, height: int, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def _samples(paths: list[str], groups: list | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"path": paths, "id": [str(Path(p).relative_to(Path(p).parents[1])) for p in paths],
                          "label": "x"})
    if groups is not None:
        frame["group"] = groups
    return frame


def _sizes(frame: pd.DataFrame) -> list[tuple[int, int]]:
    sizes = []
    for p in frame["path"]:
        with Image.open(p) as im:
            sizes.append(im.size)
    return sizes


class Counting:
    """Wraps a detector and counts calls, so tests can see when detection ran."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.seen = inner, inner.name, 0, []
        self._lock = threading.Lock()

    def settings(self):
        return self.inner.settings()

    def __call__(self, image, *, id, path):
        with self._lock:
            self.calls += 1
            self.seen.append(Path(path).stem)
        return self.inner(image, id=id, path=path)


class StemBoxes:
    """Stub detector: a box per 'folder/stem' or per stem, None for the rest."""

    name = "stem_boxes"

    def __init__(self, boxes: dict[str, tuple]):
        self.boxes = boxes

    def settings(self):
        return {"name": self.name, "boxes": sorted(self.boxes.items())}

    def __call__(self, image, *, id, path):
        p = Path(path)
        return self.boxes.get(f"{p.parent.name}/{p.stem}", self.boxes.get(p.stem))


# ---------------------------------------------------------------- geometry


def test_expand_box_puts_more_margin_below():
    box = pp.expand_box((100, 100, 200, 200), 0.4, chin_share=0.6)
    assert box == pytest.approx((80, 84, 220, 224))


def test_fit_aspect_grows_short_side_and_clip_shifts_inside():
    box = pp.fit_aspect((0, 0, 150, 150), pp.parse_aspect("3:4"))
    assert box == pytest.approx((0, -25, 150, 175))
    # Shifted inside a 300x400 image, the 150x200 size survives.
    assert pp.clip_box(box, 300, 400) == (0, 0, 150, 200)
    # Larger than the image: clipped to it.
    assert pp.clip_box((-10, -10, 500, 100), 300, 400) == (0, 0, 300, 110)


def test_parse_aspect_and_resolve_box_errors():
    assert pp.parse_aspect("3:4") == pytest.approx(0.75)
    assert pp.parse_aspect(None) is None
    with pytest.raises(PodiumError, match="3:4"):
        pp.parse_aspect("wide")
    assert pp.resolve_box((0.1, 0.2, 0.5, 1.0), 200, 100) == pytest.approx((20, 20, 100, 100))
    assert pp.resolve_box((1, 2, 50, 60), 200, 100) == (1, 2, 50, 60)
    with pytest.raises(PodiumError, match="empty"):
        pp.resolve_box((50, 0, 10, 10), 200, 100)


# ---------------------------------------------------------------- detectors


def test_fixed_and_center_crops_have_expected_size(tmp_path):
    paths = [_write_image(tmp_path / "src" / f"{i}.png", 300, 400, seed=i) for i in range(2)]
    samples = _samples(paths)

    out, report = pp.crop_images(samples, tmp_path / "c", pp.create_detector("fixed", box=[10, 20, 110, 220]))
    assert _sizes(out) == [(100, 200)] * 2
    assert report["detected"] == 2 and report["fallback"] == 0
    # The crop holds exactly those pixels (PNG: lossless).
    out_png, _ = pp.crop_images(samples, tmp_path / "c", pp.create_detector("fixed", box=[10, 20, 110, 220]),
                                image_format="png")
    source = np.asarray(Image.open(paths[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(out_png["path"].iloc[0])), source[20:220, 10:110])

    out, _ = pp.crop_images(samples, tmp_path / "c", pp.create_detector("fixed", box=[0.1, 0.1, 0.5, 0.6]))
    assert _sizes(out) == [(120, 200)] * 2
    out, _ = pp.crop_images(samples, tmp_path / "c", pp.create_detector("center", fraction=0.5))
    assert _sizes(out) == [(150, 200)] * 2
    out, _ = pp.crop_images(samples, tmp_path / "c", pp.create_detector("center", aspect="1:1"), workers=2)
    assert _sizes(out) == [(300, 300)] * 2
    # Margin and aspect apply to detector boxes: 100x100 + 40% = 140x140, then 3:4 -> 140x187.
    out, _ = pp.crop_images(samples, tmp_path / "c", pp.create_detector("fixed", box=[100, 150, 200, 250]),
                            margin=0.4, aspect="3:4")
    assert _sizes(out) == [(140, 187)] * 2


def test_csv_detector_matches_by_id_then_path(tmp_path):
    paths = [_write_image(tmp_path / "src" / f"{i}.png", 100, 100, seed=i) for i in range(3)]
    samples = _samples(paths)
    table = pd.DataFrame({"id": [samples["id"][0], "nope", None], "path": ["", "", paths[2]],
                          "x0": [0, 0, 10], "y0": [0, 0, 10], "x1": [50, 1, 30], "y1": [40, 1, 30]})
    table.to_csv(tmp_path / "boxes.csv", index=False)
    out, report = pp.crop_images(samples, tmp_path / "c", pp.create_detector("csv", csv_path=tmp_path / "boxes.csv"),
                                 fallback_box=[0, 0, 10, 10])
    assert _sizes(out) == [(50, 40), (10, 10), (20, 20)]
    assert report["fallback_ids"] == [samples["id"][1]]


def test_create_detector_errors():
    with pytest.raises(PodiumError, match="Did you mean 'yunet'"):
        pp.create_detector("yunett")
    with pytest.raises(PodiumError, match="valid options: box, units"):
        pp.create_detector("fixed", bx=[0, 0, 1, 1])


def test_yunet_missing_model_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(pp.YUNET_ENV, raising=False)
    assert pp.default_yunet_path() is None
    with pytest.raises(PodiumError, match="opencv_zoo.*face_detection_yunet"):
        pp.create_detector("yunet")
    with pytest.raises(PodiumError, match="not found at .*opencv_zoo"):
        pp.create_detector("yunet", model_path=tmp_path / "missing.onnx")
    monkeypatch.setenv(pp.YUNET_ENV, str(tmp_path / "env.onnx"))
    assert pp.default_yunet_path() == str(tmp_path / "env.onnx")


# ---------------------------------------------------------------- cache


def test_cache_is_reused_and_invalidated(tmp_path):
    paths = [_write_image(tmp_path / "src" / f"{i}.jpg", 120, 160, seed=i) for i in range(3)]
    samples = _samples(paths)
    det = Counting(pp.create_detector("fixed", box=[10, 10, 60, 60]))

    first, report1 = pp.crop_images(samples, tmp_path / "c", det, margin=0.2, workers=2)
    assert det.calls == 3 and report1["cached"] is False
    manifest = json.loads((Path(report1["cache_dir"]) / "manifest.json").read_text())
    assert [r["id"] for r in manifest["rows"]] == samples["id"].tolist()

    second, report2 = pp.crop_images(samples, tmp_path / "c", det, margin=0.2, workers=2)
    assert det.calls == 3, "second call must not detect again"
    assert report2["cached"] is True and report2["key"] == report1["key"]
    assert second["path"].tolist() == first["path"].tolist()
    assert second["label"].tolist() == ["x"] * 3 and second["id"].tolist() == samples["id"].tolist()

    _, report3 = pp.crop_images(samples, tmp_path / "c", det, margin=0.3)
    assert det.calls == 6 and report3["key"] != report1["key"]

    # Change one source file: new key, fresh detection, and the crop shows the new pixels.
    Image.fromarray(np.full((160, 120, 3), 200, np.uint8)).save(paths[1])
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed, report4 = pp.crop_images(samples, tmp_path / "c", det, margin=0.2)
    assert det.calls == 9 and report4["key"] not in (report1["key"], report3["key"])
    assert np.asarray(Image.open(changed["path"].iloc[1])).mean() == pytest.approx(200, abs=2)
    assert np.asarray(Image.open(first["path"].iloc[1])).std() > 30  # old crop untouched


def test_deleted_crop_triggers_rebuild(tmp_path):
    paths = [_write_image(tmp_path / "src" / "a.png", 50, 50)]
    det = Counting(pp.create_detector("center", fraction=0.5))
    out, _ = pp.crop_images(_samples(paths), tmp_path / "c", det)
    Path(out["path"].iloc[0]).unlink()
    out2, report = pp.crop_images(_samples(paths), tmp_path / "c", det)
    assert det.calls == 2 and report["cached"] is False and Path(out2["path"].iloc[0]).is_file()


def test_concurrent_builders_detect_once(tmp_path):
    paths = [_write_image(tmp_path / "src" / f"{i}.jpg", 64, 64, seed=i) for i in range(4)]
    samples = _samples(paths)
    det = Counting(pp.create_detector("center", fraction=0.5))
    reports, errors = [], []

    def build():
        try:
            reports.append(pp.crop_images(samples, tmp_path / "c", det)[1])
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert det.calls == 4, "the lock makes the second builder reuse the first one's crops"
    assert sorted(r["cached"] for r in reports) == [False, True]
    leftovers = [p.name for p in Path(reports[0]["cache_dir"]).rglob("*.tmp")]
    assert leftovers == []


# ---------------------------------------------------------------- fallback, group reuse


def test_fallback_counts_when_registered_detector_finds_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(pp.DETECTORS, "nothing", lambda: StemBoxes({}))
    paths = [_write_image(tmp_path / "src" / f"{i}.png", 200, 100, seed=i) for i in range(3)]
    samples = _samples(paths)
    out, report = pp.crop_images(samples, tmp_path / "c", pp.create_detector("nothing"),
                                 margin=0.4, aspect="3:4", fallback_box=[0.25, 0.0, 0.75, 1.0])
    assert (report["detected"], report["reused"], report["fallback"]) == (0, 0, 3)
    assert report["fallback_ids"] == samples["id"].tolist()
    assert _sizes(out) == [(100, 100)] * 3  # the fallback box as given: no margin, no aspect
    out, report = pp.crop_images(samples, tmp_path / "c", pp.create_detector("nothing"))
    assert _sizes(out) == [(200, 100)] * 3 and report["fallback"] == 3  # no fallback box: whole image


def test_group_reuse_uses_the_normal_box_for_other_photos(tmp_path):
    root = tmp_path / "src"
    names = {"p1": ["mask1", "normal", "incorrect_mask"], "p2": ["mask1", "normal"], "p3": ["mask1", "mask2"]}
    paths, groups = [], []
    for person, stems in names.items():
        for stem in stems:
            paths.append(_write_image(root / person / f"{stem}.jpg", 120, 160))
            groups.append(person)
    # p2's normal photo has no face: its other photos fall back to their own detection.
    boxes = {"normal": (20, 30, 80, 90), "p2/normal": None, "mask1": (0, 0, 30, 30), "mask2": (10, 10, 50, 50)}
    det = Counting(StemBoxes(boxes))
    samples = _samples(paths, groups)
    out, report = pp.crop_images(samples, tmp_path / "c", det, group_reuse=True, workers=2)

    manifest = json.loads((Path(report["cache_dir"]) / "manifest.json").read_text())
    rows = {r["id"]: r for r in manifest["rows"]}
    assert rows["p1/normal.jpg"]["source"] == "detected"
    assert rows["p1/mask1.jpg"]["box"] == rows["p1/normal.jpg"]["box"] == [20, 30, 80, 90]
    assert rows["p1/incorrect_mask.jpg"]["source"] == "reused"
    assert rows["p2/normal.jpg"]["source"] == "fallback"
    assert rows["p2/mask1.jpg"]["source"] == "detected" and rows["p2/mask1.jpg"]["box"] == [0, 0, 30, 30]
    assert rows["p3/mask2.jpg"]["box"] == [10, 10, 50, 50]
    assert (report["detected"], report["reused"], report["fallback"]) == (4, 2, 1)
    assert sorted(det.seen) == sorted(["normal", "normal", "mask1", "mask1", "mask2"])
    assert _sizes(out)[0] == (60, 60)

    with pytest.raises(PodiumError, match="unique.*p1/mask1.jpg"):
        pp.crop_images(pd.concat([samples, samples.iloc[:1]]), tmp_path / "c", det)
    with pytest.raises(PodiumError, match="group"):
        pp.crop_images(samples.drop(columns="group"), tmp_path / "c", det, group_reuse=True)


# ---------------------------------------------------------------- YuNet on real data


needs_yunet = pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet weights absent at {YUNET}")


@needs_yunet
def test_yunet_finds_nothing_in_a_blank_image(tmp_path):
    paths = [str(tmp_path / "src" / "blank.png")]
    Path(paths[0]).parent.mkdir()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(paths[0])
    det = pp.create_detector("yunet", model_path=YUNET)
    assert det(np.asarray(Image.open(paths[0])), id="blank", path=paths[0]) is None
    _, report = pp.crop_images(_samples(paths), tmp_path / "c", det, fallback_box=[0.1, 0.1, 0.9, 0.9])
    assert report["fallback"] == 1 and report["fallback_ids"] == ["src/blank.png"]


@needs_yunet
@pytest.mark.skipif(not PORTRAITS.is_file(), reason=f"portrait data absent at {PORTRAITS}")
def test_yunet_finds_a_face_in_real_portraits(tmp_path):
    members = ["facemask_prajnasb/without_mask/0.jpg", "facemask_prajnasb/with_mask/100-with-mask.jpg"]
    with tarfile.open(PORTRAITS) as tar:
        for name in members:
            tar.extract(name, tmp_path / "src", filter="data")
    paths = [str(tmp_path / "src" / m) for m in members]
    det = pp.create_detector("yunet", model_path=YUNET)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        height, width = image.shape[:2]
        x0, y0, x1, y1 = det(image, id=path, path=path)
        assert -0.05 * width <= x0 < x1 <= 1.05 * width and -0.05 * height <= y0 < y1 <= 1.05 * height
        assert 0.1 * width < x1 - x0 < width and 0.1 * height < y1 - y0 <= height  # a face, not a speck
        assert 0.5 < (x1 - x0) / (y1 - y0) < 1.5  # roughly face-shaped
    samples = pd.DataFrame({"path": paths, "id": members, "label": ["without", "with"]})
    out, report = pp.crop_images(samples, tmp_path / "c", det, **pp.FACE_DEFAULTS)
    assert report["detected"] == 2
    for w, h in _sizes(out):
        assert abs(w / h - 0.75) < 0.02
