"""From network output to PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) floats in `value_range` -> (N, H, W, C) uint8, clipped and rounded."""
    lo, hi = value_range
    scaled = (np.asarray(images, dtype=np.float32) - lo) / (hi - lo) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def png_bytes(image: np.ndarray) -> bytes:
    """One (H, W, C) uint8 image as PNG: grey for C=1, RGB for 3, RGBA for 4."""
    arr = image[:, :, 0] if image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, C) uint8, the inverse of `png_bytes`."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[:, :, None] if arr.ndim == 2 else arr


def grid(images: np.ndarray, ncols: int, pad: int = 2, background: int = 0) -> np.ndarray:
    """(N, H, W, C) uint8 tiled into one (rows*H, ncols*W, C) image with `pad` pixels between."""
    n, h, w, c = images.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return out


def encode_pngs(
    images: np.ndarray, value_range: tuple[float, float], with_grid: bool = False
) -> tuple[list[bytes], bytes | None]:
    """Network output (N, C, H, W) -> one PNG per image, and optionally one grid PNG of them all."""
    pixels = to_uint8(images, value_range)
    tiled = png_bytes(grid(pixels, ncols=min(len(pixels), 8))) if with_grid else None
    return [png_bytes(im) for im in pixels], tiled
