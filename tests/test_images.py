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


def _stripes(h: int, w: int) -> np.ndarray:
    """A wide image: left third red, middle green, right third blue."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3: 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3:, 2] = 255
    return arr


def test_resize_modes_keep_or_drop_the_aspect_ratio():
    from podium.data.images import RESIZE_MODES, resize_rgb

    image = _stripes(20, 60)
    assert set(RESIZE_MODES) == {"squash", "crop", "pad"}
    squash = resize_rgb(image, (30, 30), "squash")
    crop = resize_rgb(image, (30, 30), "crop")
    pad = resize_rgb(image, (30, 30), "pad")
    assert squash.shape == crop.shape == pad.shape == (30, 30, 3)
    # squash keeps all three stripes; crop keeps only the middle one (short side 30 -> 90 wide, center 30)
    assert squash[15, 2, 0] == 255 and squash[15, 27, 2] == 255
    inner = crop[:, 2:-2]  # away from the stripe edges that interpolation blends
    assert (inner[:, :, 1] == 255).all() and inner[:, :, 0].max() == 0
    # pad fits 60x20 into 30x10 at the vertical center: black borders above and below
    assert pad[:10].max() == 0 and pad[20:].max() == 0
    assert pad[15, 2, 0] == 255 and pad[15, 27, 2] == 255
    tall = resize_rgb(_stripes(60, 20).transpose(1, 0, 2).copy(), (16, 8), "crop")
    assert tall.shape == (16, 8, 3)


def test_load_resized_applies_the_mode_and_rejects_unknown_ones(tmp_path):
    from podium.errors import PodiumError

    path = tmp_path / "wide.png"
    Image.fromarray(_stripes(20, 60)).save(path)
    assert (load_resized(path, (30, 30), mode="crop")[:, 2:-2, 1] == 255).all()
    assert load_resized(path, (30, 30)).tolist() == load_resized(path, (30, 30), mode="squash").tolist()
    with pytest.raises(PodiumError, match=r"unknown resize mode \(data.resize\) 'cropp'.*Did you mean 'crop'"):
        load_resized(path, (30, 30), mode="cropp")


def test_the_cache_key_and_the_cached_pixels_follow_the_resize_mode(tmp_path):
    from podium.data.cache import ImageCache, cache_key

    path = tmp_path / "wide.png"
    Image.fromarray(_stripes(20, 60)).save(path)
    keys = {mode: cache_key([path], (30, 30), True, mode) for mode in ("squash", "crop", "pad")}
    assert len(set(keys.values())) == 3
    assert keys["squash"] == cache_key([path], (30, 30), True)  # caches written before the modes stay valid
    for lazy in (False, True):
        cache = ImageCache.build([path], (30, 30), mode="disk", cache_dir=tmp_path / "c", resize="crop", lazy=lazy)
        assert np.array_equal(cache.get(0), load_resized(path, (30, 30), mode="crop"))
