"""uint8 conversion, PNG round trips and grids."""

from __future__ import annotations

import numpy as np

from service.images import decode_png, grid, png_bytes, to_uint8


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
