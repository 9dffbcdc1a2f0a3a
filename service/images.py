"""From network output to image files: PNG (lossless, the default), JPEG or WebP."""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) floats in `value_range` -> (N, H, W, C) uint8, clipped and rounded."""
    lo, hi = value_range
    scaled = (np.asarray(images, dtype=np.float32) - lo) / (hi - lo) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


ImageFormat = Literal["png", "jpeg", "webp"]
DEFAULT_QUALITY = 90  # JPEG and WebP, when a request names none
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def image_bytes(image: np.ndarray, fmt: ImageFormat = "png", quality: int | None = None) -> bytes:
    """One (H, W, C) uint8 image as a file: grey for C=1, RGB for 3, RGBA for 4. `quality`
    (1-100) applies to JPEG and WebP; PNG is lossless. WebP stores grey as RGB; JPEG has no
    alpha, so an RGBA image is flattened onto black first."""
    arr = image[:, :, 0] if image.shape[2] == 1 else image
    picture = Image.fromarray(arr)
    buf = io.BytesIO()
    if fmt == "png":
        picture.save(buf, format="PNG")
    else:
        if fmt == "jpeg" and picture.mode == "RGBA":
            flat = Image.new("RGB", picture.size)
            flat.paste(picture, mask=picture.getchannel("A"))
            picture = flat
        picture.save(buf, format=fmt.upper(), quality=DEFAULT_QUALITY if quality is None else quality)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    return image_bytes(image, "png")


def transcode(png: bytes, fmt: ImageFormat, quality: int | None) -> bytes:
    """PNG bytes (what a replica's sampler answers) in another format; PNG stays as it is."""
    return png if fmt == "png" else image_bytes(decode_png(png), fmt, quality)


def base64_text(data: bytes) -> str:
    """A file as the base64 text JSON answers carry."""
    return base64.b64encode(data).decode("ascii")


def base64_as(png: bytes, fmt: ImageFormat, quality: int | None) -> str:
    """A replica's PNG as base64 text in the format a request asked for."""
    return base64_text(transcode(png, fmt, quality))


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


def encode_images(
    images: np.ndarray,
    value_range: tuple[float, float],
    with_grid: bool = False,
    fmt: ImageFormat = "png",
    quality: int | None = None,
) -> tuple[list[bytes], bytes | None]:
    """Network output (N, C, H, W) -> one file per image, and optionally one grid of them all."""
    pixels = to_uint8(images, value_range)
    tiled = image_bytes(grid(pixels, ncols=min(len(pixels), 8)), fmt, quality) if with_grid else None
    return [image_bytes(im, fmt, quality) for im in pixels], tiled


def encode_pngs(
    images: np.ndarray, value_range: tuple[float, float], with_grid: bool = False
) -> tuple[list[bytes], bytes | None]:
    """Network output (N, C, H, W) -> one PNG per image, and optionally one grid PNG of them all."""
    return encode_images(images, value_range, with_grid)
