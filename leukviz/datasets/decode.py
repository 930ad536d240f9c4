"""Decoding one image file: any mode to 8-bit RGB, the window around the cell, fitted to the model's size; the
one decoding path of the image cache, prediction and the out-of-distribution check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leukviz.datasets.dataset import DataError

IMAGE_EXTS = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"}
MAX_PIXELS = 40_000_000  # a 450x450 cell is 0.2 MP; anything this large is a decompression bomb

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(DataError):
    """One image that cannot be decoded. str(): the message (decode_rgb's names the file); .reason: why,
    without the file's name, for a caller that shows the name itself."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = message if reason is None else reason


def _named(name: str, reason: str) -> ImageError:
    return ImageError(f"{name}: {reason}", reason)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float greyscale are rescaled, alpha is composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img)  # uint16, int32 or float32 as stored: no float64 copy of a large image
        if a.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:  # min/max would be nan or inf, and the whole image would decode as black
                raise ImageError(f"{bad} pixel{'s' if bad != 1 else ''} of this floating-point image "
                                 f"{'are' if bad != 1 else 'is'} not a number (inf or NaN); refused rather than "
                                 "predicted as a black image")
        lo, hi = float(a.min()), float(a.max())
        out = np.zeros(a.shape, np.uint8)
        if hi > lo:  # rescaled a block of rows at a time, in float32: memory of a few rows, not of the image
            scale = np.float32(255.0 / (hi - lo))
            for r in range(0, a.shape[0], 256):
                out[r:r + 256] = (a[r:r + 256].astype(np.float32) - np.float32(lo)) * scale
        img = Image.fromarray(out, "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))  # cells sit on black
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


# The side of the window around the cell, as a fraction of the image's shorter side: the same window for
# every image of a dataset, so a large cell stays larger than a small one (cell size is a class cue in
# C-NMC: ALL blasts average ~36,000 px2, normal cells ~26,500). 0.75 of a 450 px C-NMC image is 338 px,
# which holds 99.5 % of the cells of training fold 1 whole (their largest side: median 228 px for ALL,
# 187 for normal cells, 99th percentile 326) and gives the cell 1.33x the pixels of the whole image.
CELL_WINDOW = 0.75


def cell_box(a: np.ndarray, threshold: int = 10) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the pixels brighter than threshold (the cell on its black background), or None."""
    # the brightest channel of each pixel; np.maximum of the three planes, as a.max(axis=2) (a reduction
    # over a length-3 axis) is much slower (docs/BENCHMARKS.md, "Numbers behind the code")
    mask = np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2]) > threshold
    if np.count_nonzero(mask) < 16:
        return None
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def _square_around(a: np.ndarray, cy: int, cx: int, side: int) -> np.ndarray:
    """The side x side square centred on (cy, cx); what lies outside the image is black."""
    out = np.zeros((side, side, 3), dtype=a.dtype)
    sy0, sx0 = cy - side // 2, cx - side // 2
    ty0, tx0 = max(0, -sy0), max(0, -sx0)
    src = a[max(0, sy0):sy0 + side, max(0, sx0):sx0 + side]
    out[ty0:ty0 + src.shape[0], tx0:tx0 + src.shape[1]] = src
    return out


def crop_to_cell(a: np.ndarray, window: float | None = CELL_WINDOW, margin: float = 0.04) -> np.ndarray:
    """A square window centred on the cell. window: its side as a fraction of the image's shorter side,
    the same for every image, so the cell keeps its scale. window=None is version 1's crop, kept only so
    that runs trained with it predict as they were trained: a square just around each cell, which
    rescales every cell to fill the frame and so throws away its size."""
    box = cell_box(a)
    if box is None:
        return a
    y0, y1, x0, x1 = box
    if window is None:
        side = int(max(y1 - y0, x1 - x0) * (1 + 2 * margin)) + 1
    else:
        side = max(2, int(round(window * min(a.shape[:2]))))
    return _square_around(a, (y0 + y1) // 2, (x0 + x1) // 2, side)


def _display_name(src: str | Path | IO[bytes]) -> str:
    """The bare file name for messages: never a server path, and an upload's name is shown, not followed."""
    name = getattr(src, "name", None) if not isinstance(src, (str, Path)) else src
    if not isinstance(name, (str, Path)) or not str(name):
        return "uploaded image"
    return Path(str(name).replace("\\", "/")).name or "uploaded image"


def load_image(src: str | Path | IO[bytes], size: int, crop: bool = True,
               window: float | None = CELL_WINDOW) -> np.ndarray:
    """Decode one image file into uint8 RGB (size, size, 3): the one decoding path for cache and prediction.

    crop: a fixed window around the cell (see crop_to_cell; window=None only for runs of version 1);
    otherwise the whole image. Either way every image is scaled by the same factor (for images of one size).

    Anything that is not a usable image raises ImageError with a one-line reason, never another exception.
    """
    return fit_image(decode_rgb(src), size, crop, window)


def decode_rgb(src: str | Path | IO[bytes]) -> np.ndarray:
    """One image file as uint8 RGB at its own size (orientation applied, 16-bit and float rescaled, alpha on
    black): what load_image fits, and what the out-of-distribution check measures. Decode once, use twice.
    ImageError (one line naming the file) for anything unusable."""
    name = _display_name(src)
    try:
        with Image.open(src) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:  # Pillow only refuses at twice its limit; between, it merely warns
                raise _named(name, f"image too large ({w}x{h} pixels; the limit is {MAX_PIXELS:,})")
            img.seek(0)  # animated images: the first frame
            img = ImageOps.exif_transpose(_to_rgb(img))
            a = np.asarray(img)
    except ImageError as e:
        if str(e).startswith(f"{name}: "):
            raise
        raise _named(name, str(e)) from None
    except Image.DecompressionBombError:
        raise _named(name, f"image too large (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        empty = isinstance(src, (str, Path)) and os.path.isfile(src) and os.path.getsize(src) == 0
        empty = empty or (hasattr(src, "getbuffer") and src.getbuffer().nbytes == 0)
        raise _named(name, "not a readable image (" + ("the file is empty: 0 bytes)" if empty else
                                                      "not an image, or an unknown format)")) from None
    except Exception as e:  # noqa: BLE001 - a damaged file can make any decoder raise anything
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e).replace(str(src), name)
        raise _named(name, f"not a readable image ({e.__class__.__name__}: {detail})") from None
    if a.ndim != 3 or a.shape[0] < 2 or a.shape[1] < 2:
        raise _named(name, "image is empty or too small")
    return a


def fit_image(a: np.ndarray, size: int, crop: bool = True, window: float | None = CELL_WINDOW) -> np.ndarray:
    """decode_rgb's image as the model sees it: cropped around the cell (crop), padded to a square on black,
    resized to size x size."""
    side = max(a.shape[:2])
    if side * side > MAX_PIXELS:  # a long thin image: shrink it first, or a square of its long side fills memory
        w, h = max(1, round(a.shape[1] * size / side)), max(1, round(a.shape[0] * size / side))
        a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    if crop:
        a = crop_to_cell(a, window)
    if a.shape[0] != a.shape[1]:  # pad to square on black so the cell is never stretched
        side = max(a.shape[:2])
        sq = np.zeros((side, side, 3), np.uint8)
        oy, ox = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
        sq[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a
        a = sq
    if a.shape[0] != size:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return np.ascontiguousarray(a, dtype=np.uint8)


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


_is_image = is_image  # the name the layer's modules used before it was public
