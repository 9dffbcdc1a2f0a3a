"""Uploaded images: decoded to the card's shape by the documented rule, or refused with a 422
naming the field, before any pixel of a hostile file is decoded."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cards import load_card
from service.errors import InvalidRequest
from service.images import png_bytes
from service.inputs import decode_image, decode_images, to_network

CARD = load_card(Path(__file__).resolve().parents[2] / "exported" / "vae")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encoded(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return b64(buf.getvalue())


def digit() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (28, 28), dtype=np.uint8)


def refused(text: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_image(text, CARD, "images.2")
    assert info.value.field == "images.2" and info.value.status == 422
    return info.value


def test_a_grey_png_round_trips_exactly_and_maps_onto_the_cards_range() -> None:
    pixels = digit()
    got = decode_image(b64(png_bytes(pixels[:, :, None])), CARD, "images.0")
    assert got.shape == (28, 28, 1) and np.array_equal(got[:, :, 0], pixels)
    x = to_network(got[None], CARD)
    assert x.shape == (1, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert x[0, 0, 0, 0] == pytest.approx(pixels[0, 0] / 255 * 2 - 1)


def test_colour_takes_the_luma_and_alpha_is_composited_onto_black() -> None:
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: luma 299/1000 of white
    assert decode_image(encoded(Image.fromarray(rgb)), CARD, "x")[0, 0, 0] == 76
    rgba = np.full((28, 28, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0  # white, fully transparent: black after compositing
    rgba[0, 0, 3] = 255  # one opaque white pixel
    got = decode_image(encoded(Image.fromarray(rgba, "RGBA")), CARD, "x")
    assert got[0, 0, 0] == 255 and got[5, 5, 0] == 0


def test_sixteen_bit_grey_keeps_its_top_byte_and_jpeg_is_accepted() -> None:
    wide = (digit().astype(np.uint16) << 8) | 0x7F
    got = decode_image(encoded(Image.fromarray(wide)), CARD, "x")
    assert np.array_equal(got[:, :, 0], digit())
    jpeg = decode_image(encoded(Image.fromarray(digit()), "JPEG"), CARD, "x")
    assert jpeg.shape == (28, 28, 1) and np.abs(jpeg[:, :, 0].astype(int) - digit()).mean() < 40


def test_wrong_size_bad_base64_other_formats_and_truncation_are_refused_naming_the_field() -> None:
    assert "29x28" in refused(encoded(Image.new("L", (29, 28)))).message
    assert "base64" in refused("not base64!").message
    assert "PNG or JPEG" in refused(encoded(Image.new("L", (28, 28)), "GIF")).message
    whole = png_bytes(digit()[:, :, None])
    assert "decode" in refused(b64(whole[: len(whole) // 2])).message


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb(side: int) -> str:
    """A side x side grey PNG header with a few bytes of pixel stream (never inflated)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b64(data + png_chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_from_their_header() -> None:
    """Pixel streams that would inflate to 25 MB and 10 GB: refused by the declared size alone."""
    assert "5000x5000" in refused(bomb(5000)).message
    assert "DecompressionBomb" in refused(bomb(100_000)).message


def test_each_image_of_a_request_is_named_by_its_index() -> None:
    good = b64(png_bytes(digit()[:, :, None]))
    assert decode_images([good, good], CARD).shape == (2, 28, 28, 1)
    with pytest.raises(InvalidRequest) as info:
        decode_images([good, good, encoded(Image.new("L", (8, 8)))], CARD)
    assert info.value.field == "images.2"
