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

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator, model_validator

from service.cards import Family, ModelCard, TextSpec
from service.images import ImageFormat
from service.inputs import MAX_IMAGE_BASE64_CHARS
from service.jobs import MIN_TRUNCATION, DiffusionJob, LatentJob, network_rows
from service.samplers import SAMPLERS, SamplerName
from service.settings import Limits

MAX_SEED = 2**63 - 1
MAX_PREVIEWS = 20  # previews one streamed request may ask for
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Seed for reproducible images; random if omitted.")]


# A 28x28 digit 3 (the VAE's, seed 3) as the examples' image.
_DIGIT = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA+UlEQVR4nGNgGFjAyMjKiCqAYLLJ2Rr/3P/t2tvfMBEmhDJRTbn/322SNFjhQixw"
    "VYIKLFeuPuaICL/5DV2SkYPp0r8/v/5//6DzHUPn/z/v/v1nYGBg9r+JkERzG+PazwmM2CUZmbM/7GbFJsfAxMxqe/KROLIIgvnvL6et4so32CUZ"
    "GL5t+3D/Py7Jv3eOenHjkvz/87m2D5IICwOK7HK531h9wsDAwMjEESaHpBPZWGZmZm5VKezGMjL8Z2EzULz5HptOVj4eNm2x35yMWHQycsR+fBnD"
    "8+LdfyySDFoOH3ie7d35GyGCnEyk2f+9+vr3Hw6vUA8AAH1+ScTb6TAcAAAAAElFTkSuQmCC"
)


# Illustrative figures for the OpenAPI examples (not measurements; docs/benchmarks.md has those).
_TIMINGS: dict[str, JsonValue] = {"queue_seconds": 0.012, "compute_seconds": 0.31, "total_seconds": 0.322}


def _ctx(info: ValidationInfo) -> tuple[ModelCard | None, Limits]:
    ctx: dict[str, Any] = info.context or {}
    return ctx.get("card"), ctx.get("limits") or Limits()


STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _listed(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _check_label(v: int | None, info: ValidationInfo, *, none_means: str = "unconditional") -> int | None:
    """A label index within the card's labels; None only where the model has a null label
    (`none_means` "marginal": None means every label, which needs no null label)."""
    card = _ctx(info)[0]
    if card is None:
        return v
    if v is None and card.null_label is None and none_means == "unconditional":
        raise ValueError(f"model {card.name!r} is class-conditional only: give a label")
    if v is not None and v >= len(card.labels):
        raise ValueError(f"label must be an index below {len(card.labels)} (labels: {card.labels})")
    return v


def _check_cost(field: str, what: str, count: int, steps: int, rows: int, limits: Limits) -> None:
    """A diffusion request's network rows, `count` x steps x rows, within the server's cap."""
    cost = count * steps * rows
    if cost > limits.max_cost:
        raise ValueError(
            f"request cost {field} x steps x rows = {count} x {steps} x {rows} = {cost} exceeds the limit "
            f"{limits.max_cost}; ask for fewer {what} or steps"
        )


class _Encoded(BaseModel):
    """How a request's images come back: the file format, its quality, and an optional grid."""

    model_config = STRICT

    grid: bool = Field(False, description="Also return all images tiled into one image (`grid_base64`).")
    output_format: ImageFormat = Field("png", description="File format of every image: png (lossless), jpeg, webp.")
    quality: int | None = Field(
        None, ge=1, le=100, description="JPEG/WebP quality, 1-100 (90 if omitted); png is lossless and takes none."
    )

    @field_validator("quality")
    @classmethod
    def _quality_is_lossy(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("output_format", "png") == "png":
            raise ValueError("quality applies to jpeg and webp; png is lossless")
        return v


class _Generate(_Encoded):
    """What every generate request has: how many images, the seed, and streaming."""

    model_config = STRICT

    n: int = Field(1, ge=1, description="Number of images.")
    seed: Seed | None = None
    stream: bool = Field(
        False,
        description="Answer with server-sent events (also with `Accept: text/event-stream`): diffusion progress "
        "(step, total) and previews, then each image, then timings.",
    )

    @field_validator("n")
    @classmethod
    def _n_within_limit(cls, v: int, info: ValidationInfo) -> int:
        limit = _ctx(info)[1].max_images
        if v > limit:
            raise ValueError(f"at most {limit} images per request")
        return v

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(MAX_SEED)


class _GenerateBase(_Generate):
    """A label-conditioned model's generate request (GAN, VAE, diffusion)."""

    label: int | None = Field(
        None, ge=0, validate_default=True, description="Index into the model's labels; omit for unconditional."
    )

    @field_validator("label")
    @classmethod
    def _label_in_card(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_label(v, info)


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


class _DiffusionSampling(BaseModel):
    """How a diffusion request samples: steps, sampler, guidance, eta (checked against the card)."""

    model_config = STRICT

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
        if isinstance(data, dict) and card is not None and card.text is not None:
            data = {"guidance": card.text.default_guidance, **data}
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

    def sampling_job(self, seed: int, n: int, deadline: float | None, **what: Any) -> DiffusionJob:
        """A job sampling as this request asks; `what` is what the images show (label, prompt, ...)."""
        return DiffusionJob(
            seed=seed, n=n, steps=self.steps, sampler=self.sampler, guidance=self.guidance, eta=self.eta,
            deadline=deadline, **what,
        )  # fmt: skip


class _Previews(BaseModel):
    """Streamed previews of a request that runs in steps (diffusion, text-to-image)."""

    preview_every: int = Field(
        0,
        ge=0,
        description=f"With stream: every image's clean-image estimate every this many steps (0: none); at most "
        f"{MAX_PREVIEWS} previews per request.",
    )

    @field_validator("preview_every")
    @classmethod
    def _previews_within(cls, v: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if v and isinstance(steps, int) and steps / v > MAX_PREVIEWS:
            raise ValueError(f"at most {MAX_PREVIEWS} previews: preview_every at least {-(-steps // MAX_PREVIEWS)}")
        return v


class DiffusionGenerateRequest(_Previews, _DiffusionSampling, _GenerateBase):
    """Images from a diffusion model."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [{"n": 8, "label": 3, "steps": 20, "sampler": "dpmpp_2m", "guidance": 2.0, "seed": 42}]
        },
    )

    @model_validator(mode="after")
    def _cost_within(self, info: ValidationInfo) -> DiffusionGenerateRequest:
        _check_cost("n", "images", self.n, self.steps, network_rows(self.label, self.guidance), _ctx(info)[1])
        return self

    def to_job(self, deadline: float | None = None) -> DiffusionJob:
        return self.sampling_job(self.resolved_seed(), self.n, deadline, label=self.label)


class TextGenerateRequest(_Previews, _DiffusionSampling, _Generate):
    """Images from a text-to-image pipeline: a prompt, and what guidance steers away from."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a red apple on a table",
                    "n": 2,
                    "steps": 20,
                    "sampler": "dpmpp_2m",
                    "guidance": 7.5,
                    "seed": 42,
                }
            ]
        },
    )

    prompt: str = Field(description="What the images should show.")
    negative_prompt: str = Field(
        "", description="What guidance steers away from (its unconditional side when empty); unused at guidance 1."
    )
    height: int | None = Field(
        None, ge=1, description="Image height in pixels: a multiple of the model's size_multiple, up to its max_side."
    )
    width: int | None = Field(
        None, ge=1, description="Image width in pixels: a multiple of the model's size_multiple, up to its max_side."
    )

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text_within(cls, v: str, info: ValidationInfo) -> str:
        card = _ctx(info)[0]
        limit = card.text.max_prompt_chars if card is not None and card.text is not None else 2000
        if len(v) > limit:
            raise ValueError(f"at most {limit} characters")
        return v

    @field_validator("height", "width")
    @classmethod
    def _side_allowed(cls, v: int | None, info: ValidationInfo) -> int | None:
        card = _ctx(info)[0]
        if v is None or card is None or card.text is None:
            return v
        m, top = card.text.size_multiple, card.text.max_side
        if v % m or v > top:
            raise ValueError(f"must be a multiple of {m} up to {top}")
        return v

    @model_validator(mode="after")
    def _cost_within(self, info: ValidationInfo) -> TextGenerateRequest:
        _check_cost("n", "images", self.n, self.steps, 1 if self.guidance == 1.0 else 2, _ctx(info)[1])
        card = _ctx(info)[0]
        if card is not None and (self.height is not None or self.width is not None):
            self._size = (self.height or card.image.height, self.width or card.image.width)
        return self

    _size: tuple[int, int] | None = None

    def to_job(self, deadline: float | None = None) -> DiffusionJob:
        return self.sampling_job(
            self.resolved_seed(),
            self.n,
            deadline,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            size=self._size,
        )


REQUEST_SCHEMAS: dict[str, type[_Generate]] = {
    "gan": GanGenerateRequest,
    "vae": VaeGenerateRequest,
    "diffusion": DiffusionGenerateRequest,
    "text2image": TextGenerateRequest,
}


class GeneratedImage(BaseModel):
    """One image: its file (the request's `output_format`) in base64, the request seed and the
    image's index under it."""

    image_base64: str
    seed: int
    index: int


class Timings(BaseModel):
    queue_seconds: float = Field(description="Waiting before the first network call.")
    compute_seconds: float = Field(description="From the first network call to the images.")
    total_seconds: float


class GenerateResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "vae",
                    "output_format": "png",
                    "images": [{"image_base64": _DIGIT, "seed": 3, "index": 0}],
                    "grid_base64": None,
                    "timings": _TIMINGS,
                }
            ]
        }
    )

    model: str
    output_format: ImageFormat = Field(description="File format of `images` and the grid.")
    images: list[GeneratedImage]
    grid_base64: str | None = Field(None, description="The images tiled into one, when the request asked for `grid`.")
    timings: Timings


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. invalid_request, overloaded.")
    message: str
    field: str | None = Field(None, description="The offending request field, where there is one.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "invalid_request", "message": "steps: at most 1000 steps", "field": "steps"}}
            ]
        }
    )

    error: ErrorDetail


class ModelInfo(BaseModel):
    """What a client needs to call a model; `id`, `object`, `created` and `owned_by` are OpenAI's
    model object, so OpenAI clients read it too."""

    id: str = Field(description="The model's name (OpenAI's model id).")
    object: Literal["model"] = "model"
    created: int = Field(description="When the model's card was written, Unix seconds.")
    owned_by: str = "genserve"
    name: str
    family: Family
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
    routes: list[str] = Field(description="The model's routes under /v1/models/{name}, e.g. /generate, /score.")
    text: TextSpec | None = Field(
        None,
        description="text2image: image sizes (multiples of size_multiple up to max_side), default guidance, prompt length.",
    )
    quality: dict[str, dict[str, float]]
    provider: str | None = Field(
        None,
        description="The ONNX Runtime provider the model's replica runs (CUDAExecutionProvider, CPUExecutionProvider); "
        "from the replica itself on GET /v1/models/{name}, in the list as of the last readiness probe (null before).",
    )
    provider_fallback: str | None = Field(
        None, description="Set when the replica runs on another provider than it was asked for, saying why."
    )

    @classmethod
    def from_card(cls, card: ModelCard, limits: Limits) -> ModelInfo:
        diffusion = card.family in ("diffusion", "text2image")
        return cls(
            id=card.name,
            created=card.created,
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
            routes=card.routes(),
            text=card.text,
            quality=card.quality,
        )


# --- Beyond sampling: scoring, encoding, interpolation (GAN and VAE) -------------------------

ImageBase64 = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_IMAGE_BASE64_CHARS,
        description="Base64 PNG or JPEG of the model's image size. A greyscale model takes the ITU-R 601-2 luma "
        "of a colour image; alpha is composited onto black first; 16-bit greyscale keeps its top 8 bits.",
    ),
]


class _ImagesIn(BaseModel):
    model_config = STRICT

    images: list[ImageBase64] = Field(min_length=1, description="The images, base64 PNG or JPEG.")

    @field_validator("images")
    @classmethod
    def _images_within_limit(cls, v: list[str], info: ValidationInfo) -> list[str]:
        limit = _ctx(info)[1].max_input_images
        if len(v) > limit:
            raise ValueError(f"at most {limit} images per request")
        return v


class _Scored(_ImagesIn):
    k: int = Field(64, ge=1, description="Importance samples per image and label (IWAE k); the bound tightens with k.")
    seed: Seed = Field(0, description="Seed of the importance samples: the same request gives the same numbers.")

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, v: int, info: ValidationInfo) -> int:
        limit = _ctx(info)[1].max_iwae_samples
        if v > limit:
            raise ValueError(f"at most {limit} importance samples")
        return v


class ScoreRequest(_Scored):
    """Log-likelihood bounds of images under a VAE."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"images": [_DIGIT], "label": 3, "k": 256}]})

    label: int | None = Field(
        None,
        ge=0,
        description="Score log p(x | label); omit for log p(x), marginalised over labels with the card's prior.",
    )

    @field_validator("label")
    @classmethod
    def _label_in_card(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_label(v, info, none_means="marginal")


class ClassifyRequest(_Scored):
    """p(y | x) over the model's labels, by Bayes' rule on the conditional likelihood bounds."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"images": [_DIGIT], "k": 64}]})


class EncodeRequest(_ImagesIn):
    """The VAE posterior q(z | x, label) of each image."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"images": [_DIGIT], "label": 0}]})

    label: int | None = Field(
        None, ge=0, validate_default=True, description="The label the encoder conditions on; omit for the null label."
    )

    @field_validator("label")
    @classmethod
    def _label_in_card(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_label(v, info)


class ReconstructRequest(EncodeRequest, _Encoded):
    """Each image decoded from its posterior mean."""

    model_config = ConfigDict(
        **STRICT, json_schema_extra={"examples": [{"images": [_DIGIT], "label": 0, "grid": True}]}
    )


class _Frames(_Encoded):
    """What every interpolation asks for: how many frames, decoded with which label, tiled or not."""

    model_config = STRICT

    frames: int = Field(8, ge=2, description="Frames, both endpoints included.")
    label: int | None = Field(
        None, ge=0, validate_default=True, description="Label the frames are made (and images encoded) with."
    )

    @field_validator("label")
    @classmethod
    def _label_in_card(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_label(v, info)

    @field_validator("frames")
    @classmethod
    def _frames_within_limit(cls, v: int, info: ValidationInfo) -> int:
        limit = _ctx(info)[1].max_frames
        if v > limit:
            raise ValueError(f"at most {limit} frames")
        return v


class InterpolateRequest(_Frames):
    """Frames along the spherical path between two latents: two seeds (the latents `generate`
    draws for image 0 of each seed and the label, so the first frame is that image), or, for a
    VAE, two images (their posterior means). The path runs through the standard-normal noise
    that the model's latent prior maps to latents (for N(0, I), the latents themselves)."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={"examples": [{"from_seed": 1, "to_seed": 2, "frames": 8, "label": 5, "grid": True}]},
    )

    from_seed: Seed | None = Field(None, description="Seed of the first endpoint.")
    to_seed: Seed | None = Field(None, description="Seed of the last endpoint.")
    from_image: ImageBase64 | None = Field(None, description="VAE only: image of the first endpoint.")
    to_image: ImageBase64 | None = Field(None, description="VAE only: image of the last endpoint.")

    @model_validator(mode="after")
    def _one_pair(self, info: ValidationInfo) -> InterpolateRequest:
        seeds = (self.from_seed is not None, self.to_seed is not None)
        images = (self.from_image is not None, self.to_image is not None)
        if any(seeds) and any(images):
            raise ValueError("give two seeds or two images, not both")
        if images == (True, True):
            card = _ctx(info)[0]
            if card is not None and card.encoder is None:
                raise ValueError(f"model {card.name!r} has no encoder: interpolate between seeds")
            return self
        if seeds != (True, True):
            raise ValueError("give both from_seed and to_seed (or, for a VAE, from_image and to_image)")
        return self


class ImageScore(BaseModel):
    """Lower bounds on log p(x) (or log p(x | label)) of one image; pixels scored as binary."""

    index: int
    elbo: float = Field(description="Evidence lower bound, nats.")
    iwae: float = Field(description="Importance-weighted bound with k samples, nats; at least as tight as elbo.")
    elbo_bits_per_dim: float = Field(description="-elbo / (H x W x C x ln 2): an upper bound on bits per dimension.")
    iwae_bits_per_dim: float = Field(description="-iwae / (H x W x C x ln 2).")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "vae", "label": 3, "k": 256, "seed": 0, "dims": 784,
                    "scores": [{"index": 0, "elbo": -80.0, "iwae": -77.0, "elbo_bits_per_dim": 0.1472,
                                "iwae_bits_per_dim": 0.1417}],
                    "timings": _TIMINGS,
                }
            ]
        }
    )  # fmt: skip

    model: str
    label: int | None = Field(description="The label scored under; null: marginalised over labels.")
    k: int
    seed: int
    dims: int = Field(description="H x W x C, the dimensions bits per dimension divide by.")
    scores: list[ImageScore]
    timings: Timings


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "vae", "labels": [str(i) for i in range(10)], "k": 64, "seed": 0,
                    "probabilities": [[0.0, 0.0, 0.002, 0.991, 0.0, 0.004, 0.0, 0.0, 0.003, 0.0]], "predicted": [3],
                    "iwae": [[-112.0, -120.4, -86.2, -80.1, -118.9, -85.6, -121.3, -101.7, -86.0, -99.2]],
                    "timings": _TIMINGS,
                }
            ]
        }
    )  # fmt: skip

    model: str
    labels: list[str]
    k: int
    seed: int
    probabilities: list[list[float]] = Field(description="p(y | x) per image, in the order of `labels`.")
    predicted: list[int] = Field(description="The most probable label index per image.")
    iwae: list[list[float]] = Field(description="IWAE bound on log p(x | y) per image and label, nats.")
    timings: Timings


class EncodeResponse(BaseModel):
    model: str
    label: int | None
    mean: list[list[float]] = Field(description="Posterior mean per image.")
    std: list[list[float]] | None = Field(description="Posterior standard deviation per image.")
    timings: Timings


class ImagesResponse(BaseModel):
    """Images a request derived (reconstructions, interpolation frames), base64 files in order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "vae", "output_format": "png", "images": [_DIGIT], "grid_base64": None,
                          "timings": _TIMINGS}]
        }
    )  # fmt: skip

    model: str
    output_format: ImageFormat = Field(description="File format of `images` and the grid.")
    images: list[str]
    grid_base64: str | None = None
    timings: Timings


class Img2ImgRequest(DiffusionGenerateRequest):
    """Image-to-image (SDEdit): the input noised to the level `strength` picks, then sampled back
    with any sampler, label and guidance; its lanes share the step-level batch with others."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [{"image": _DIGIT, "strength": 0.6, "label": 8, "steps": 20, "seed": 1, "n": 4, "grid": True}]
        },
    )

    image: ImageBase64
    strength: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Share of the steps that run, from the input noised to the first of them: near 0 keeps the "
        "input, 1 ignores it (exactly the plain sample for the same seed).",
    )


class InpaintRequest(Img2ImgRequest):
    """Inpainting: pixels where the mask is white are regenerated; the rest come back as the input's."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={"examples": [{"image": _DIGIT, "mask": _DIGIT, "label": 3, "steps": 50, "seed": 1}]},
    )

    mask: ImageBase64 = Field(description="PNG or JPEG of the image's size: white (>= 128) = regenerate, black = keep.")
    strength: float = Field(1.0, gt=0, le=1, description="As for image-to-image; inpainting usually runs all steps.")


class DiffusionInterpolateRequest(_Frames, _DiffusionSampling):
    """Frames between the starting noise of two seeds (spherical interpolation), each sampled with
    the same label, sampler and steps. Frame 0 is the plain sample of `from_seed`; with a
    deterministic sampler (ddim at eta 0, dpmpp_2m) the last frame is the plain sample of `to_seed`."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={"examples": [{"from_seed": 1, "to_seed": 2, "frames": 8, "label": 5, "steps": 20}]},
    )

    from_seed: Seed = Field(description="Seed of the first frame.")
    to_seed: Seed = Field(description="Seed of the last frame.")

    @model_validator(mode="after")
    def _cost_within(self, info: ValidationInfo) -> DiffusionInterpolateRequest:
        _check_cost("frames", "frames", self.frames, self.steps, network_rows(self.label, self.guidance), _ctx(info)[1])
        return self

    def to_job(self, initial: np.ndarray) -> DiffusionJob:
        """The frames as one job of the scheduler: image i of `from_seed`, starting from `initial[i]`."""
        return self.sampling_job(self.from_seed, self.frames, None, label=self.label, initial=initial)


class ModelList(BaseModel):
    """OpenAI's list shape: `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]
