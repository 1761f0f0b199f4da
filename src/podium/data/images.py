"""Reading images from disk into RGB uint8 arrays.

Every image that enters podium passes through `load_rgb`, so EXIF rotation,
odd modes (grayscale, palette, RGBA, CMYK, 16-bit) and reduced-size JPEG
decoding are handled once, the same way at train and predict time.
"""
from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from podium.errors import PodiumError, lookup

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # GIF: the first frame

#: Pillow's own decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS): ~13400 x 13400
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
_max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


class BadImageError(PodiumError):
    """An image file that cannot be decoded."""


def set_max_image_pixels(limit: int | None) -> None:
    """``data.max_image_pixels``: images with more pixels are bad images (refused or skipped),
    found from the header before anything is decoded. ``None`` lifts the limit.

    podium's own setting, set when data is loaded so that DataLoader workers forked afterwards
    inherit it. Pillow's ``Image.MAX_IMAGE_PIXELS`` is left as the caller has it: a limit above
    Pillow's is honoured per file in `_open`.
    """
    global _max_pixels
    _max_pixels = None if limit is None else int(limit)


_pillow_limit = threading.Lock()


def _open_beyond_pillow_limit(path: str | Path) -> ImageFile.ImageFile:
    """``Image.open`` without Pillow's bomb check, for an image podium's limit allows but Pillow's
    (a process-wide setting) refuses; Pillow's value is put back before returning."""
    with _pillow_limit, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(path: str | Path) -> ImageFile.ImageFile:
    """``Image.open`` (lazy: header only) that refuses decompression bombs as bad images."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:
        im = _open_beyond_pillow_limit(path)  # data.max_image_pixels decides, checked below from the header
    w, h = im.size
    if _max_pixels is not None and w * h > _max_pixels:
        im.close()
        raise BadImageError(
            f"image {path} is {w}x{h} = {w * h:,} pixels, above data.max_image_pixels={_max_pixels:,} "
            "(a decompression bomb?); raise data.max_image_pixels if it is genuine")
    return im


def is_image_file(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as an image viewer shows them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | Path, draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 RGB array with EXIF orientation applied.

    ``draft_size`` (w, h) lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the
    result stays at least that large on both sides: the caller resizes
    afterwards, so this only saves work, never changes the output size.
    """
    try:
        with _open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                _safe_draft(im, draft_size)
            im = ImageOps.exif_transpose(im)
            return np.asarray(_to_rgb(im), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise BadImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot decode image {path}: {exc}") from None


def _safe_draft(im: Image.Image, size: tuple[int, int]) -> None:
    """Draft-decode only when both sides stay >= ``size`` after EXIF rotation."""
    w, h = size
    orientation = im.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # rotated 90 degrees: the stored sides swap
        w, h = h, w
    im.draft("RGB", (w, h))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone, after EXIF rotation."""
    try:
        with _open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except FileNotFoundError:
        raise BadImageError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from None


@functools.cache
def cv2_module():
    """OpenCV, single-threaded: podium parallelises across images (DataLoader workers,
    thread pools), and OpenCV's own pool deadlocks in forked DataLoader workers."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def resize_rgb(image: np.ndarray, size: tuple[int, int], mode: str = "squash") -> np.ndarray:
    """Resize an HxWx3 uint8 array to ``size`` = (height, width).

    ``mode`` (`RESIZE_MODES`): ``squash`` stretches to the size; ``crop`` and
    ``pad`` keep the aspect ratio (short side to size + center crop, or long
    side to size + black borders). Area interpolation when shrinking (no
    aliasing), bilinear when growing.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return lookup(RESIZE_MODES, mode, "resize mode (data.resize)")(image, (h, w))


def _scale_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    cv2 = cv2_module()

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def _aspect_size(shape: tuple[int, ...], size: tuple[int, int], cover: bool) -> tuple[int, int]:
    """(h, w) of the image scaled by one factor to cover (crop) or fit inside (pad) ``size``."""
    ih, iw = shape[:2]
    pick = max if cover else min
    scale = pick(size[0] / ih, size[1] / iw)
    if cover:
        return max(size[0], round(ih * scale)), max(size[1], round(iw * scale))
    return min(size[0], max(1, round(ih * scale))), min(size[1], max(1, round(iw * scale)))


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    scaled = _scale_to(image, _aspect_size(image.shape, size, cover=True))
    top, left = (scaled.shape[0] - size[0]) // 2, (scaled.shape[1] - size[1]) // 2
    return np.ascontiguousarray(scaled[top:top + size[0], left:left + size[1]])


def _pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    scaled = _scale_to(image, _aspect_size(image.shape, size, cover=False))
    out = np.zeros((size[0], size[1], 3), dtype=np.uint8)
    top, left = (size[0] - scaled.shape[0]) // 2, (size[1] - scaled.shape[1]) // 2
    out[top:top + scaled.shape[0], left:left + scaled.shape[1]] = scaled
    return out


#: `data.resize` -> (image, (h, w)) -> image of exactly that size
RESIZE_MODES: dict = {"squash": _scale_to, "crop": _center_crop, "pad": _pad}


def load_resized(path: str | Path, size: tuple[int, int], draft: bool = True, mode: str = "squash") -> np.ndarray:
    """Decode and resize to ``size`` = (height, width) by ``mode`` (`resize_rgb`): the
    deterministic first step of every pipeline, and exactly what the decoded-image cache stores."""
    h, w = size
    image = load_rgb(path, draft_size=(w, h) if draft else None)
    return resize_rgb(image, size, mode)
