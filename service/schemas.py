"""Request and response schemas of the HTTP API (pydantic, at the edge only).

Bounds that depend on the model (labels, T) or the server (limits) are checked against the
validation context: `Request.model_validate(body, context={"card": card, "limits": limits})`.
Validated requests become frozen job dataclasses with `to_job()`.

Types are strict: JSON `true` is not an integer and `"1"` is not a number, since a wrong type is
surely a client bug; NaN and infinities are refused.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.cards import ModelCard
from service.jobs import MIN_TRUNCATION, DiffusionJob, LatentJob, network_rows
from service.samplers import SAMPLERS, SamplerName
from service.settings import Limits

MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Seed for reproducible images; random if omitted.")]


def _ctx(info: ValidationInfo) -> tuple[ModelCard | None, Limits]:
    ctx: dict[str, Any] = info.context or {}
    return ctx.get("card"), ctx.get("limits") or Limits()


STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _listed(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


class _GenerateBase(BaseModel):
    model_config = STRICT

    n: int = Field(1, ge=1, description="Number of images.")
    seed: Seed | None = None
    label: int | None = Field(
        None, ge=0, validate_default=True, description="Index into the model's labels; omit for unconditional."
    )
    grid: bool = Field(False, description="Also return all images tiled into one PNG (`grid_png_base64`).")

    @field_validator("n")
    @classmethod
    def _n_within_limit(cls, v: int, info: ValidationInfo) -> int:
        limit = _ctx(info)[1].max_images
        if v > limit:
            raise ValueError(f"at most {limit} images per request")
        return v

    @field_validator("label")
    @classmethod
    def _label_in_card(cls, v: int | None, info: ValidationInfo) -> int | None:
        card = _ctx(info)[0]
        if card is None:
            return v
        if v is None and card.null_label is None:
            raise ValueError(f"model {card.name!r} is class-conditional only: give a label")
        if v is not None and v >= len(card.labels):
            raise ValueError(f"label must be an index below {len(card.labels)} (labels: {card.labels})")
        return v

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(MAX_SEED)


class GanGenerateRequest(_GenerateBase):
    """Images from a GAN."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"n": 4, "label": 7, "seed": 42}]})

    truncation: float | None = Field(
        None, ge=MIN_TRUNCATION, le=4, description="Resample latent entries beyond +-truncation."
    )

    def to_job(self) -> LatentJob:
        return LatentJob(self.resolved_seed(), self.n, self.label, truncation=self.truncation)


class VaeGenerateRequest(_GenerateBase):
    """Images decoded from a VAE's prior."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"n": 4, "label": 2, "seed": 7}]})

    temperature: float = Field(1.0, ge=0, le=2, description="Scale of the prior's standard deviation.")

    def to_job(self) -> LatentJob:
        return LatentJob(self.resolved_seed(), self.n, self.label, temperature=self.temperature)


class DiffusionGenerateRequest(_GenerateBase):
    """Images from a diffusion model."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [{"n": 8, "label": 3, "steps": 20, "sampler": "dpmpp_2m", "guidance": 2.0, "seed": 42}]
        },
    )

    steps: int = Field(
        20,
        ge=1,
        description="Sampling steps; bounded by the model's T and the server. A model that lists its step counts "
        "(`steps` in GET /v1/models/{name}, a distilled model) takes only those, and defaults to its own.",
    )
    sampler: SamplerName = Field(
        "dpmpp_2m",
        description="ddpm (ancestral), ddim, or dpmpp_2m (DPM-Solver++ 2M); a distilled model supports only the "
        "samplers its entry lists, and defaults to the first.",
    )
    guidance: float = Field(1.0, ge=0, description="Classifier-free guidance scale; 1 is plain conditional sampling.")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM only: 0 deterministic, 1 DDPM-like noise.")

    @model_validator(mode="before")
    @classmethod
    def _card_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """A model that supports only some samplers and step counts (a distilled one) has its own defaults."""
        card = _ctx(info)[0]
        if isinstance(data, dict) and card is not None and card.sampling is not None:
            return {"steps": card.sampling.default_steps, "sampler": card.sampling.samplers[0], **data}
        return data

    @field_validator("steps")
    @classmethod
    def _steps_within(cls, v: int, info: ValidationInfo) -> int:
        card, limits = _ctx(info)
        cap = limits.max_steps
        if card is not None and card.schedule is not None:
            cap = min(cap, card.schedule.num_train_timesteps)
        if v > cap:
            raise ValueError(f"at most {cap} steps")
        if card is not None and card.sampling is not None and v not in card.sampling.steps:
            raise ValueError(f"model {card.name!r} samples in {_listed(card.sampling.steps)} steps only")
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler_supported(cls, v: SamplerName, info: ValidationInfo) -> SamplerName:
        card = _ctx(info)[0]
        if card is not None and card.sampling is not None and v not in card.sampling.samplers:
            raise ValueError(f"model {card.name!r} supports the sampler(s) {_listed(card.sampling.samplers)} only")
        return v

    @field_validator("guidance")
    @classmethod
    def _guidance_within(cls, v: float, info: ValidationInfo) -> float:
        cap = _ctx(info)[1].max_guidance
        if v > cap:
            raise ValueError(f"guidance scale at most {cap}")
        return v

    @model_validator(mode="after")
    def _cost_within(self, info: ValidationInfo) -> DiffusionGenerateRequest:
        limits = _ctx(info)[1]
        rows = network_rows(self.label, self.guidance)
        cost = self.n * self.steps * rows
        if cost > limits.max_cost:
            raise ValueError(
                f"request cost n x steps x rows = {self.n} x {self.steps} x {rows} = {cost} exceeds the limit "
                f"{limits.max_cost}; ask for fewer images or steps"
            )
        return self

    def to_job(self, deadline: float | None = None) -> DiffusionJob:
        return DiffusionJob(
            seed=self.resolved_seed(),
            n=self.n,
            steps=self.steps,
            sampler=self.sampler,
            label=self.label,
            guidance=self.guidance,
            eta=self.eta,
            deadline=deadline,
        )


REQUEST_SCHEMAS: dict[str, type[_GenerateBase]] = {
    "gan": GanGenerateRequest,
    "vae": VaeGenerateRequest,
    "diffusion": DiffusionGenerateRequest,
}


class GeneratedImage(BaseModel):
    """One image: PNG bytes in base64, the request seed and the image's index under it."""

    png_base64: str
    seed: int
    index: int


class Timings(BaseModel):
    queue_seconds: float = Field(description="Waiting before the first network call.")
    compute_seconds: float = Field(description="From the first network call to the images.")
    total_seconds: float


class GenerateResponse(BaseModel):
    model: str
    images: list[GeneratedImage]
    grid_png_base64: str | None = Field(
        None, description="The images tiled into one PNG, when the request asked for `grid`."
    )
    timings: Timings


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. invalid_request, overloaded.")
    message: str
    field: str | None = Field(None, description="The offending request field, where there is one.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    """What a client needs to call a model."""

    name: str
    family: Literal["gan", "vae", "diffusion"]
    description: str
    image_shape: tuple[int, int, int]
    labels: list[str]
    unconditional: bool
    samplers: list[str]
    max_steps: int | None
    steps: list[int] | None = Field(
        None, description="The only step counts the model supports (a distilled model); null: any up to max_steps."
    )
    max_images: int
    quality: dict[str, dict[str, float]]

    @classmethod
    def from_card(cls, card: ModelCard, limits: Limits) -> ModelInfo:
        diffusion = card.schedule is not None
        return cls(
            name=card.name,
            family=card.family,
            description=card.description,
            image_shape=card.image_shape,
            labels=card.labels,
            unconditional=card.null_label is not None,
            samplers=(list(card.sampling.samplers) if card.sampling else list(SAMPLERS)) if diffusion else [],
            max_steps=min(limits.max_steps, card.schedule.num_train_timesteps) if card.schedule else None,
            steps=list(card.sampling.steps) if card.sampling else None,
            max_images=limits.max_images,
            quality=card.quality,
        )
