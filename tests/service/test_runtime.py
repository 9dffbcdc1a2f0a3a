"""The ONNX wrapper: a batch run as parallel slices gives every row exactly what one call gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.cards import load_card
from service.registry import load_model
from service.runtime import OnnxModel, fallback_note, wanted_provider

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


def test_the_session_for_lone_batches_sleeps_between_calls() -> None:
    """A batch smaller than the slice count runs on a multi-threaded session whose threads sleep
    between calls, GAN and diffusion alike, leaving the cores to the replica's event loop and to
    the slices when a second lane joins. The slice sessions are single-threaded (no pool)."""
    for name in ("gan", "diffusion"):
        onnx = load_model(SHIPPED / name, device="cpu", intra_op_threads=2).onnx
        whole = onnx._whole.get_session_options()
        assert whole.intra_op_num_threads == 2
        assert whole.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert onnx.session.get_session_options().intra_op_num_threads == 1
        with pytest.raises(RuntimeError, match="allow_spinning"):  # the slices' session has no pool to spin
            onnx.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_a_session_that_falls_back_from_the_provider_it_was_asked_for_says_why() -> None:
    assert wanted_provider("cpu") == "CPUExecutionProvider" and wanted_provider("cuda") == "CUDAExecutionProvider"
    assert fallback_note("CPUExecutionProvider", "CPUExecutionProvider") is None
    on_cpu = OnnxModel(SHIPPED / "gan" / "model.onnx", device="cpu")
    assert on_cpu.provider == "CPUExecutionProvider" and on_cpu.fallback is None
    asked_for_gpu = OnnxModel(SHIPPED / "gan" / "model.onnx", device="cuda")  # this machine has no GPU
    assert asked_for_gpu.provider == "CPUExecutionProvider"
    note = asked_for_gpu.fallback
    assert note is not None and note.startswith("asked for CUDAExecutionProvider but runs on CPUExecutionProvider")
