"""uint8 conversion, PNG round trips, JPEG and WebP, and grids."""

from __future__ import annotations

import numpy as np

from service.images import (
    DEFAULT_QUALITY,
    decode_png,
    encode_images,
    encode_pngs,
    grid,
    image_bytes,
    png_bytes,
    to_uint8,
    transcode,
)


def test_value_range_maps_to_full_uint8_range_and_clips() -> None:
    x = np.array([-1.0, 0.0, 1.0, 2.0, -3.0], np.float32).reshape(1, 1, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255, 0]
    assert to_uint8(np.full((1, 1, 1, 1), 0.5), (0.0, 1.0))[0, 0, 0, 0] == 128


def test_png_round_trip_is_lossless_for_grey_and_rgb() -> None:
    rng = np.random.default_rng(0)
    for c in (1, 3):
        img = rng.integers(0, 256, (28, 28, c), dtype=np.uint8)
        data = png_bytes(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(decode_png(data), img)


def test_grid_places_each_image_in_its_cell() -> None:
    imgs = np.stack([np.full((4, 4, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    g = grid(imgs, ncols=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert g[1, 1, 0] == 10 and g[1, 6, 0] == 20 and g[6, 6, 0] == 50
    assert g[6, 11, 0] == 0  # the empty sixth cell stays background


def test_encode_pngs_gives_one_png_per_image_and_an_optional_grid() -> None:
    from service.images import encode_pngs

    images = np.linspace(-1, 1, 3 * 28 * 28, dtype=np.float32).reshape(3, 1, 28, 28)
    pngs, tiled = encode_pngs(images, (-1.0, 1.0), with_grid=True)
    assert len(pngs) == 3
    np.testing.assert_array_equal(decode_png(pngs[1]), to_uint8(images)[1])
    assert tiled is not None and decode_png(tiled).shape == (2 + 30, 2 + 3 * 30, 1)
    assert encode_pngs(images, (-1.0, 1.0))[1] is None


def test_jpeg_and_webp_are_close_to_the_pixels_and_quality_trades_size() -> None:
    rng = np.random.default_rng(1)
    smooth = np.clip(np.add.outer(np.arange(28), np.arange(28)) * 4 + rng.integers(0, 8, (28, 28)), 0, 255)
    img = smooth.astype(np.uint8)[:, :, None]
    for fmt, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        high, low = image_bytes(img, fmt, 95), image_bytes(img, fmt, 10)
        assert high.startswith(magic) and low.startswith(magic)
        assert len(low) < len(high)
        decoded = decode_png(high).astype(np.int32)  # PIL reads any of the formats
        assert decoded.shape[:2] == (28, 28)
        assert np.abs(decoded[:, :, :1] - img).mean() < 4  # WebP stores grey as RGB; channel 0 is the grey
        assert image_bytes(img, fmt) == image_bytes(img, fmt, DEFAULT_QUALITY)


def test_jpeg_flattens_alpha_onto_black_and_transcode_keeps_png_as_is() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
    flat = decode_png(image_bytes(rgba, "jpeg", 95)).astype(np.int32)
    assert flat.shape == (8, 8, 3) and flat[:2].mean() > 180 and flat[6:].mean() < 20
    png = png_bytes(rgba)
    assert transcode(png, "png", None) is png
    assert transcode(png, "webp", 80) == image_bytes(rgba, "webp", 80)


def test_encode_images_writes_every_image_and_the_grid_in_the_format() -> None:
    x = np.random.default_rng(2).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    files, tiled = encode_images(x, (-1.0, 1.0), True, "jpeg", 70)
    assert len(files) == 3 and all(f.startswith(b"\xff\xd8\xff") for f in files)
    assert tiled is not None and decode_png(tiled).shape == (32, 2 + 3 * 30, 1)
    pngs, none = encode_pngs(x, (-1.0, 1.0))
    assert none is None and [decode_png(p)[:, :, 0].shape for p in pngs] == [(28, 28)] * 3
