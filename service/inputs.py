"""Images sent to the server: base64 PNG or JPEG -> the network's pixel values.

Every check that a hostile file could exploit runs before any pixel is decoded: the base64 text
has a bounded length (the schema), the bytes must start with a PNG or JPEG signature, and the
header's size must equal the model's (so a decompression bomb is refused from its header alone).
Only then are the pixels decoded, and a truncated or corrupt file is an InvalidRequest.

Conversion to the model's channels (documented in the API): a greyscale model takes the ITU-R
601-2 luma of a colour image (Pillow's `L` conversion); an alpha channel is composited onto black
first (the digits are white on black); 16-bit greyscale keeps its top 8 bits.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.cards import ModelCard
from service.errors import InvalidRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# A 28x28 PNG is well under 1 KiB; this leaves room for metadata and larger cards' images,
# and bounds the body a request with the most images can need.
MAX_IMAGE_BASE64_CHARS = 32 * 1024


def _refuse(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", field=field)


def decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(field, "not valid base64") from None


def _open(data: bytes, field: str, height: int, width: int) -> Image.Image:
    """Opens the file and checks its header, decoding no pixels yet."""
    if not (data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)):
        raise _refuse(field, "not a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:  # fmt: skip
        raise _refuse(field, f"cannot read the image header ({type(e).__name__})") from None
    if img.size != (width, height):
        raise _refuse(field, f"image is {img.size[0]}x{img.size[1]}; the model takes {width}x{height}")
    return img


def _to_channels(img: Image.Image, channels: int, field: str) -> np.ndarray:
    """(H, W, channels) uint8 by the rule in the module docstring."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr16 = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((arr16 >> 8).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode not in ("1", "L", "RGB", "CMYK", "YCbCr"):
        raise _refuse(field, f"unsupported pixel mode {img.mode}")
    target = {1: "L", 3: "RGB"}.get(channels)
    if target is None:
        raise _refuse(field, f"the model takes {channels}-channel images, which uploads cannot give")
    arr = np.asarray(img.convert(target), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(text: str, card: ModelCard, field: str) -> np.ndarray:
    """One base64 PNG/JPEG -> (H, W, C) uint8 of the card's shape, or InvalidRequest naming `field`."""
    return decode_file(decode_base64(text, field), card, field)


def load_file(data: bytes, card: ModelCard, field: str) -> Image.Image:
    """A PNG/JPEG file of the card's size with its pixels decoded: truncated or corrupt pixel
    data is refused naming `field`, not raised later by whoever reads the pixels."""
    _, h, w = card.image_shape
    img = _open(data, field, h, w)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise _refuse(field, f"cannot decode the image ({e})") from None
    return img


def decode_file(data: bytes, card: ModelCard, field: str) -> np.ndarray:
    """One PNG/JPEG file's bytes -> (H, W, C) uint8 of the card's shape, as `decode_image`."""
    return _to_channels(load_file(data, card, field), card.image_shape[0], field)


def to_network(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in the card's value range (`to_uint8`'s inverse)."""
    lo, hi = card.image.value_range
    return (pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 * (hi - lo) + lo).astype(np.float32)


def decode_images(texts: list[str], card: ModelCard, field: str = "images") -> np.ndarray:
    """A request's images -> (N, H, W, C) uint8, each checked as `decode_image` does."""
    return np.stack([decode_image(t, card, f"{field}.{i}") for i, t in enumerate(texts)])
