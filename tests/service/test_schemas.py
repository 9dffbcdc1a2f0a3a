"""Request schemas: bounds from the card and the limits, errors that name the field, jobs out."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cards import ModelCard, load_card
from service.schemas import (
    DiffusionGenerateRequest,
    GanGenerateRequest,
    InterpolateRequest,
    ModelInfo,
    ReconstructRequest,
    VaeGenerateRequest,
)
from service.settings import Limits


@pytest.fixture(scope="module")
def diffusion_card(tiny_model_dir: Path) -> ModelCard:
    return load_card(tiny_model_dir / "tiny-diffusion")


def _error_fields(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]


def validate(body: dict[str, object], card: ModelCard, limits: Limits | None = None) -> DiffusionGenerateRequest:
    return DiffusionGenerateRequest.model_validate(body, context={"card": card, "limits": limits or Limits()})


def test_a_valid_body_becomes_a_frozen_job(diffusion_card: ModelCard) -> None:
    job = validate(
        {"n": 8, "label": 3, "steps": 20, "sampler": "dpmpp_2m", "seed": 42, "guidance": 2}, diffusion_card
    ).to_job()
    assert (job.n, job.label, job.steps, job.sampler, job.seed, job.guidance) == (8, 3, 20, "dpmpp_2m", 42, 2.0)
    with pytest.raises(AttributeError):
        job.n = 3  # type: ignore[misc]


def test_every_family_accepts_the_grid_flag() -> None:
    assert GanGenerateRequest(grid=True).grid and VaeGenerateRequest(grid=True).grid
    assert DiffusionGenerateRequest(grid=True).grid and not DiffusionGenerateRequest().grid


def test_every_image_answering_request_takes_a_format_and_quality() -> None:
    for cls in (GanGenerateRequest, VaeGenerateRequest, DiffusionGenerateRequest, ReconstructRequest,
                InterpolateRequest):  # fmt: skip
        assert "output_format" in cls.model_fields and "quality" in cls.model_fields, cls
    req = DiffusionGenerateRequest(output_format="webp", quality=60)
    assert (req.output_format, req.quality) == ("webp", 60)
    assert (GanGenerateRequest().output_format, GanGenerateRequest().quality) == ("png", None)


def test_a_missing_seed_is_drawn_and_reported() -> None:
    seeds = {GanGenerateRequest().to_job().seed for _ in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"steps": 1001}, "steps", "at most 1000 steps"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"n": 65}, "n", "at most 64 images"),
        ({"label": 10}, "label", "index below 10"),
        ({"label": -1}, "label", "greater than or equal to 0"),
        ({"sampler": "euler"}, "sampler", "'ddpm', 'ddim' or 'dpmpp_2m'"),
        ({"guidance": 50}, "guidance", "at most 20"),
        ({"seed": 2**63}, "seed", "less than or equal to"),
        ({"n": "three"}, "n", "valid integer"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
        ({"output_format": "jpeg", "quality": 0}, "quality", "greater than or equal to 1"),
        ({"quality": 80}, "quality", "quality applies to jpeg and webp; png is lossless"),
    ],
)
def test_bad_fields_are_named(diffusion_card: ModelCard, body: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        validate(body, diffusion_card)
    assert field in _error_fields(exc.value)
    assert message in str(exc.value)


def test_the_cost_cap_says_what_the_limit_is(diffusion_card: ModelCard) -> None:
    limits = Limits(max_cost=10_000)
    validate({"n": 10, "steps": 1000}, diffusion_card, limits)
    with pytest.raises(ValidationError, match=r"10 x 1000 x 2 = 20000 exceeds the limit 10000"):
        validate({"n": 10, "steps": 1000, "label": 1, "guidance": 3}, diffusion_card, limits)


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, diffusion_card: ModelCard) -> None:
    monkeypatch.setenv("GENSERVE_MAX_IMAGES", "4")
    with pytest.raises(ValidationError, match="at most 4 images"):
        validate({"n": 5}, diffusion_card, Limits())


def test_a_card_without_null_label_requires_a_label(diffusion_card: ModelCard) -> None:
    card = diffusion_card.model_copy(update={"null_label": None})
    with pytest.raises(ValidationError, match="class-conditional only"):
        validate({"n": 1}, card)


def test_latent_schemas_carry_their_knobs() -> None:
    assert GanGenerateRequest(truncation=0.7).to_job().truncation == 0.7
    assert VaeGenerateRequest(temperature=0.5).to_job().temperature == 0.5
    with pytest.raises(ValidationError, match="temperature"):
        VaeGenerateRequest(temperature=3)


def test_model_info_describes_limits_and_samplers(diffusion_card: ModelCard) -> None:
    info = ModelInfo.from_card(diffusion_card, Limits(max_steps=500))
    assert info.max_steps == 500 and info.samplers == ["ddpm", "ddim", "dpmpp_2m"] and info.unconditional


def test_previews_are_bounded_per_request(diffusion_card: ModelCard) -> None:
    assert validate({"steps": 100, "preview_every": 5, "stream": True}, diffusion_card).preview_every == 5
    with pytest.raises(ValidationError, match="preview_every at least 5"):
        validate({"steps": 100, "preview_every": 2}, diffusion_card)
