"""The ONNX wrapper: a batch run as parallel slices gives every row exactly what one call gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.cards import load_card
from service.runtime import OnnxModel

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


@pytest.mark.parametrize("batch", [1, 2, 7, 32])
def test_parallel_slices_give_the_same_rows_as_one_call(batch: int) -> None:
    card = load_card(SHIPPED / "diffusion")
    roles = card.onnx.inputs
    rng = np.random.default_rng(batch)
    feeds = {
        roles["sample"]: rng.standard_normal((batch, *card.image_shape)).astype(np.float32),
        roles["timestep"]: rng.integers(0, 1000, batch),
        roles["label"]: rng.integers(0, 11, batch),
    }
    one = OnnxModel(SHIPPED / "diffusion" / "model.onnx", device="cpu", intra_op_threads=1)
    sliced = OnnxModel(SHIPPED / "diffusion" / "model.onnx", device="cpu", intra_op_threads=3)
    assert one.ways == 1 and sliced.ways == 3
    expected = one.run(card.onnx.output, feeds)
    got = sliced.run(card.onnx.output, feeds)
    assert got.shape == expected.shape == (batch, *card.image_shape)
    np.testing.assert_array_equal(got, expected)
