"""Model cards and the registry: good folders load, bad ones fail with one message naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.cards import ModelCard, discover, load_card
from service.errors import ModelLoadError
from service.registry import load_cards, load_model


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_model_dir / "tiny-diffusion", tmp_path / "tiny-diffusion")
    return tmp_path / "tiny-diffusion"


def _edit(folder: Path, **changes: object) -> None:
    path = folder / "model.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_registry_finds_every_model_folder(tiny_model_dir: Path) -> None:
    assert [p.name for p in discover(tiny_model_dir)] == ["tiny-diffusion", "tiny-gan", "tiny-vae"]
    cards, broken = load_cards(tiny_model_dir)
    assert set(cards) == {"tiny-diffusion", "tiny-gan", "tiny-vae"} and broken == {}


def test_a_loaded_diffusion_model_has_its_schedule(model_copy: Path) -> None:
    m = load_model(model_copy, device="cpu")
    assert m.card.family == "diffusion" and m.alphas_cumprod is not None
    assert m.alphas_cumprod.shape == (1000,) and 0 < m.alphas_cumprod[-1] < m.alphas_cumprod[0] < 1
    assert m.onnx.provider == "CPUExecutionProvider"


def test_bad_json_names_the_file(model_copy: Path) -> None:
    (model_copy / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tiny-diffusion/model.json: not valid JSON"):
        load_card(model_copy)


def test_a_missing_field_is_named(model_copy: Path) -> None:
    card = json.loads((model_copy / "model.json").read_text())
    del card["schedule"]
    (model_copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"model.json: invalid model card: .*needs `schedule`"):
        load_card(model_copy)


def test_unknown_card_fields_are_refused(model_copy: Path) -> None:
    _edit(model_copy, colour="blue")
    with pytest.raises(ModelLoadError, match="colour: Extra inputs are not permitted"):
        load_card(model_copy)


def test_a_missing_onnx_file_names_the_file(model_copy: Path) -> None:
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"tiny-diffusion/model.onnx: ONNX file not found"):
        load_model(model_copy, device="cpu")


def test_a_corrupt_onnx_file_names_the_file(model_copy: Path) -> None:
    (model_copy / "model.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"model.onnx: ONNX Runtime cannot load it"):
        load_model(model_copy, device="cpu")


def test_card_inputs_that_do_not_match_the_graph_are_named(model_copy: Path) -> None:
    _edit(
        model_copy,
        onnx={"file": "model.onnx", "inputs": {"sample": "x", "timestep": "time", "label": "label"}, "output": "eps"},
    )
    with pytest.raises(
        ModelLoadError, match=r"input 'time' \(role timestep\) is not in the graph.*\['t'\] are not named"
    ):
        load_model(model_copy, device="cpu")


def test_image_shape_that_does_not_match_the_graph_is_named(model_copy: Path) -> None:
    _edit(model_copy, image={"channels": 1, "height": 32, "width": 32})
    with pytest.raises(ModelLoadError, match=r"input 'x' has shape .*28, 28.*the card implies .*32, 32"):
        load_model(model_copy, device="cpu")


def test_card_name_must_match_its_folder(model_copy: Path) -> None:
    _edit(model_copy, name="other")
    with pytest.raises(ModelLoadError, match="differs from its folder name"):
        load_card(model_copy)


def test_broken_folders_are_reported_beside_the_healthy_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    for name in ("tiny-gan", "tiny-vae"):
        shutil.copytree(tiny_model_dir / name, tmp_path / name)
    (tmp_path / "tiny-vae" / "model.json").write_text("[]")
    cards, broken = load_cards(tmp_path)
    assert list(cards) == ["tiny-gan"]
    assert "tiny-vae/model.json" in broken["tiny-vae"]


def test_every_card_field_is_documented() -> None:
    for name, field in ModelCard.model_fields.items():
        assert field.description, f"ModelCard.{name} has no description"
