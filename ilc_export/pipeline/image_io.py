"""Reading and writing images: every RGB input Pillow reads, with a stated policy.

Policy (docs/usage.md):
- EXIF orientation is honoured (the image is coded as it is displayed).
- Alpha is dropped (composited on nothing: the RGB channels are kept as they are);
  a warning is returned so the CLI can tell the user.
- Grayscale, palette, CMYK, YCbCr and LAB are converted to RGB; 16-bit images are
  scaled to 8 bits. The decoded image is always 8-bit RGB of the original size.
- Pillow's decompression-bomb limit is honoured: such files are refused.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..contract.geometry import PAD_MULTIPLE
from ..contract.errors import IlcError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp", ".gif", ".tga"}
MAX_SIDE = 65535  # the bitstream stores sizes as u16


class ImageError(IlcError, ValueError):
    """An input that cannot be coded, with a one-line reason."""


def load_rgb(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Return (uint8 HxWx3 array, notes about conversions applied)."""
    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if getattr(im, "n_frames", 1) > 1:
                    notes.append(f"{im.n_frames} frames: only the first is coded")
                im = ImageOps.exif_transpose(im)
                arr = _to_rgb8(im, notes)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused, image larger than Pillow's safety limit ({' '.join(str(e).split())}); "
                         "--max-pixels N raises the limit, 0 lifts it") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise ImageError(f"{path}: image has no pixels")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ImageError(f"{path}: {w}x{h} exceeds the maximum side of {MAX_SIDE} pixels")
    return arr, notes


def _to_rgb8(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        # 16-bit modes span 0..65535; a 32-bit "I" image is read as 16-bit when any value
        # exceeds 255 (PNG/TIFF store 16-bit gray as "I"), else as 8-bit
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"{mode} grayscale scaled to 8 bits and replicated to RGB")
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        notes.append("float grayscale clipped to 8 bits and replicated to RGB")
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "LAB":
        from PIL import ImageCms

        notes.append("CIELAB converted to sRGB")
        xform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return np.ascontiguousarray(np.asarray(ImageCms.applyTransform(im, xform), dtype=np.uint8))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append("alpha channel dropped (only RGB is coded)")
    if mode in ("RGB;16", "RGBA;16") or (mode.startswith("RGB") and im.getbands() and np.asarray(im).dtype != np.uint8):
        a = np.asarray(im).astype(np.float64)
        return np.clip(np.round(a[..., :3] / 257.0), 0, 255).astype(np.uint8)
    if mode not in ("RGB",):
        if mode not in ("RGBA", "L", "P"):
            notes.append(f"{mode} converted to RGB")
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def pad_to_multiple(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate an HxWx3 image at the bottom/right to a multiple of `multiple`."""
    h, w = arr.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return arr
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")


def to_nchw(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0))


def model_input(img: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> the 1x3xHpxWp float32 the transforms take (padded to PAD_MULTIPLE)."""
    return to_nchw(pad_to_multiple(img, PAD_MULTIPLE))


def from_nchw(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop, clip and round a (1,3,H,W) float image to uint8 HxWx3."""
    x = x[0, :, :height, :width]
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()
