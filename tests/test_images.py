import io

import numpy as np
import pytest
from PIL import Image

from podium.data.images import BadImageError, load_resized, load_rgb


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode, ext", [("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"),
                                       ("RGB", "webp"), ("RGB", "bmp"), ("LA", "png")])
def test_modes_and_formats_become_rgb(tmp_path, mode, ext):
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    img = base.convert(mode)
    path = _save(img, tmp_path / f"x.{ext}")
    arr = load_rgb(path)
    assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    arr16 = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr16).save(path)
    out = load_rgb(path)
    assert out.shape == (8, 8, 3)
    assert 120 <= out[0, 0, 0] <= 135  # half of full range, not 255 (clipped)


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    path = _save(img, tmp_path / "t.png")
    assert (load_rgb(path) == 255).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    img.paste((250, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    arr = load_rgb(path)
    assert arr.shape == (40, 20, 3)  # portrait after rotation
    assert arr[2, 10, 0] > 200  # the left stripe is now on top


def test_truncated_and_garbage_files_named(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    for path in (trunc, garbage, tmp_path / "missing.jpg"):
        with pytest.raises(BadImageError, match=path.name):
            load_rgb(path)


def test_load_resized_size_and_draft_same_shape(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (90, 90, 90)).save(path)
    a = load_resized(path, (50, 60), draft=True)
    b = load_resized(path, (50, 60), draft=False)
    assert a.shape == b.shape == (50, 60, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
