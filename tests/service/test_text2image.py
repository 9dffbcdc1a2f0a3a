"""Text-to-image pipelines in the Stable Diffusion ONNX layout.

The parity test is the one that tells a user with a real export that it will work: a tiny
Stable-Diffusion-shaped pipeline (random weights, diffusers' and transformers' own model
classes, exported to the standard layout by training/sd_layout.py) gives the same images through
genserve's step-level batched path as through diffusers' own OnnxStableDiffusionPipeline, for
the same prompts, starting latents and scheduler.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service import openai_images
from service.cards import load_card
from service.errors import InvalidRequest, ModelLoadError
from service.jobs import DiffusionJob
from service.registry import check_models, load_model
from service.schemas import ModelInfo, TextGenerateRequest
from service.settings import Limits
from service.text2image import TextPipeline, TextToImage, load_pipeline
from training.sd_layout import PARITY_ATOL, PARITY_CASES, PARITY_SEED, parity, tiny_reference

CASES = PARITY_CASES


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sd")
    export_diffs = tiny_reference(path)
    assert max(export_diffs.values()) < PARITY_ATOL, export_diffs
    return path


@pytest.fixture(scope="module")
def pipeline(folder: Path) -> TextPipeline:
    return load_pipeline(folder, device="cpu")


def generate(pipeline: TextPipeline, jobs: list[DiffusionJob], **kwargs: Any) -> list[np.ndarray]:
    async def go() -> list[np.ndarray]:
        service = TextToImage(pipeline, **kwargs)
        try:
            return [r.images for r in await asyncio.gather(*(service.generate(j) for j in jobs))]
        finally:
            await service.close()

    return asyncio.run(go())


def job(k: int, n: int = 2, **kw: Any) -> DiffusionJob:
    prompt, negative, guidance, sampler, steps = CASES[k]
    return DiffusionJob(
        seed=PARITY_SEED + k,
        n=n,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        prompt=prompt,  # type: ignore[arg-type]
        negative_prompt=negative,
        **kw,
    )


def test_images_equal_diffusers_onnx_pipeline_while_batched_together(folder: Path) -> None:
    rows, shared = parity(folder)
    assert shared == len(CASES), "every request shared UNet calls with every other"
    diffs = {(r["sampler"], r["steps"], r["guidance"]): r["max_abs_diff"] for r in rows}
    assert max(diffs.values()) < PARITY_ATOL, diffs
    # Not trivially equal: prompts, and the two images of a request, give different pictures.
    a, b = rows[0]["images"], rows[4]["images"]
    assert a.shape == (2, 3, 64, 64)
    assert np.abs(a[0] - b[0]).mean() > 1e-2 and np.abs(a[0] - a[1]).mean() > 1e-2


def test_same_seed_same_pixels_alone_or_batched(pipeline: TextPipeline) -> None:
    alone = generate(pipeline, [job(1, n=3)])[0]
    batched = generate(pipeline, [job(0), job(1, n=3), job(3)], max_batch=5)[1]
    assert np.array_equal(alone, batched)


def test_the_prompt_and_guidance_steer_the_image(pipeline: TextPipeline) -> None:
    base = DiffusionJob(seed=3, n=1, steps=6, sampler="dpmpp_2m", guidance=7.5, prompt="dog face")
    a, b, c, d = generate(
        pipeline,
        [
            base,
            DiffusionJob(**{**base.__dict__, "prompt": "red apple"}),
            DiffusionJob(**{**base.__dict__, "guidance": 1.0}),
            DiffusionJob(**{**base.__dict__, "negative_prompt": "green"}),
        ],
    )
    for other in (b, c, d):
        assert np.abs(a - other).mean() > 1e-2


def test_sizes_the_model_allows(pipeline: TextPipeline) -> None:
    assert pipeline.default_size == (64, 64) and pipeline.size_multiple == 16
    small, default = generate(pipeline, [job(2, size=(32, 48)), job(2)])
    assert small.shape == (2, 3, 32, 48) and default.shape == (2, 3, 64, 64)
    with pytest.raises(InvalidRequest, match="size 40x64 is not allowed: height and width must be multiples of 16"):
        generate(pipeline, [job(2, size=(40, 64))])
    with pytest.raises(InvalidRequest, match="needs a prompt"):
        generate(pipeline, [DiffusionJob(seed=1, n=1, steps=2)])


@pytest.fixture
def copy(folder: Path, tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    yield target


def test_a_missing_part_is_named(copy: Path) -> None:
    (copy / "unet" / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"unet/model\.onnx: ONNX file not found"):
        load_pipeline(copy, device="cpu")


def test_a_missing_index_entry_is_named(copy: Path) -> None:
    index = json.loads((copy / "model_index.json").read_text())
    del index["text_encoder"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model_index\.json: no 'text_encoder' entry"):
        load_pipeline(copy, device="cpu")


def test_parts_that_do_not_fit_are_named(copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tiny_reference(other, hidden_size=16)
    shutil.copy(other / "text_encoder" / "model.onnx", copy / "text_encoder" / "model.onnx")
    with pytest.raises(
        ModelLoadError,
        match=r"unet/model\.onnx: encoder_hidden_states width 32 does not match .*text_encoder/model\.onnx's output width 16",
    ):
        load_pipeline(copy, device="cpu")


def test_an_unsupported_scheduler_setting_is_named(copy: Path) -> None:
    path = copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "clip_sample": True}))
    with pytest.raises(ModelLoadError, match=r"scheduler_config\.json: clip_sample = True is not supported"):
        load_pipeline(copy, device="cpu")


@pytest.fixture
def model_dir(folder: Path, tmp_path: Path) -> Path:
    """A model directory holding the tiny pipeline under its card's name."""
    root = tmp_path / "models"
    shutil.copytree(folder, root / "tiny-sd")
    card = json.loads((root / "tiny-sd" / "model.json").read_text())
    (root / "tiny-sd" / "model.json").write_text(json.dumps({**card, "name": "tiny-sd"}))
    return root


def test_a_pipeline_folder_with_its_card_is_served_like_any_model(model_dir: Path) -> None:
    cards, broken = check_models(model_dir)
    assert broken == {} and cards["tiny-sd"].family == "text2image"
    model = load_model(model_dir / "tiny-sd", device="cpu")
    assert model.pipeline is not None and model.onnx is model.pipeline.unet
    info = ModelInfo.from_card(cards["tiny-sd"], Limits())
    assert info.routes == ["/generate"] and info.samplers == ["ddpm", "ddim", "dpmpp_2m"]
    assert info.text is not None and (info.text.size_multiple, info.text.max_side) == (16, 128)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": {"channels": 3, "height": 32, "width": 32, "value_range": [0.0, 1.0]}}, "but the pipeline makes 3x64x64"),
        ({"text": {"size_multiple": 8, "max_side": 128}}, "text.size_multiple 8 is not a multiple of the pipeline's 16"),
        ({"text": None}, "a text2image card needs `text`"),
        ({"onnx": {"file": "unet/model.onnx", "inputs": {"sample": "sample", "timestep": "t", "encoder_hidden_states": "encoder_hidden_states"}, "output": "out_sample"}}, "input 't' \\(role timestep\\) is not in the graph"),
    ],
)  # fmt: skip
def test_a_card_that_does_not_fit_its_pipeline_names_model_json(
    model_dir: Path, change: dict[str, Any], message: str
) -> None:
    path = model_dir / "tiny-sd" / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    _, broken = check_models(model_dir)
    assert re.search(message, broken["tiny-sd"]), broken
    assert "model.json" in broken["tiny-sd"] or "unet/model.onnx" in broken["tiny-sd"]


def validate(model_dir: Path, body: dict[str, Any]) -> TextGenerateRequest:
    card = load_card(model_dir / "tiny-sd")
    return TextGenerateRequest.model_validate(body, context={"card": card, "limits": Limits()})


def test_requests_take_prompts_and_sizes_and_name_the_field_they_break(model_dir: Path) -> None:
    req = validate(model_dir, {"prompt": "dog face", "n": 2, "height": 32, "seed": 1})
    job = req.to_job()
    assert (job.prompt, job.negative_prompt, job.size, job.guidance, job.rows) == ("dog face", "", (32, 64), 7.5, 2)
    assert validate(model_dir, {"prompt": "x", "guidance": 1.0}).to_job().rows == 1
    assert validate(model_dir, {"prompt": "x"}).to_job().size is None
    for body, field in [
        ({"n": 1}, "prompt"),
        ({"prompt": "x", "height": 40}, "height"),
        ({"prompt": "x", "width": 256}, "width"),
        ({"prompt": "x", "label": 1}, "label"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "x", "negative_prompt": "y" * 2001}, "negative_prompt"),
        ({"prompt": "x", "n": 64, "steps": 1000}, None),  # over the cost cap
    ]:
        with pytest.raises(ValidationError) as e:
            validate(model_dir, body)
        if field is not None:
            assert e.value.errors()[0]["loc"][0] == field, body


def test_openai_images_requests_carry_the_prompt_straight_to_a_text_model(model_dir: Path) -> None:
    card = load_card(model_dir / "tiny-sd")
    req = openai_images.parse(b'{"model": "tiny-sd", "prompt": "a red apple", "n": 2, "size": "48x32", "seed": 4}')
    body = openai_images.generate_body(req, card, Limits())
    assert body == {"n": 2, "prompt": "a red apple", "width": 48, "height": 32, "seed": 4}
    assert validate(model_dir, body).to_job().size == (32, 48)
    with pytest.raises(InvalidRequest) as e:
        openai_images.generate_body(openai_images.parse(b'{"model": "tiny-sd", "prompt": "x", "size": "big"}'),
                                    card, Limits())  # fmt: skip
    assert e.value.field == "size"
    streamed = openai_images.parse(b'{"model": "tiny-sd", "prompt": "x", "stream": true, "partial_images": 2}')
    assert openai_images.generate_body(streamed, card, Limits()) == {"n": 1, "prompt": "x"}, "previews decode too"
    assert validate(model_dir, {"prompt": "x", "steps": 20, "preview_every": 5}).preview_every == 5
    with pytest.raises(ValidationError) as v:
        validate(model_dir, {"prompt": "x", "steps": 100, "preview_every": 1})
    assert v.value.errors()[0]["loc"][0] == "preview_every"
