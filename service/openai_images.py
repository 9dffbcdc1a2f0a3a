"""The OpenAI Images API's `POST /v1/images/generations`, mapped onto genserve's own requests.

A request names a served model and a prompt. A text-to-image model takes the prompt as it is
(and `size` as "WxH"); for a label-conditioned model the prompt picks one of the card's labels
by its name or, for digit labels, its number word ("3", "three", "a handwritten seven"); an
empty prompt asks for an unconditional image where the model has one. genserve's own sampling fields
(`seed`, `steps`, `sampler`, `guidance`, `eta`, `truncation`, `temperature`) ride along as extra
body fields (the SDK's `extra_body`) and are validated exactly as on `/generate`.

Errors on this route use OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.cards import ModelCard
from service.errors import InvalidRequest
from service.settings import Limits

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GENSERVE_FIELDS = ("seed", "steps", "sampler", "guidance", "eta", "truncation", "temperature")


class ImagesGenerationRequest(BaseModel):
    """OpenAI's image generation body, plus genserve's sampling fields."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "diffusion", "prompt": "a handwritten seven", "n": 2, "steps": 20, "seed": 42}]
        },
    )

    model: str = Field(description="A served model's name (GET /v1/models).")
    prompt: str = Field(
        "", max_length=1000, description="Names a label ('7', 'seven', 'a handwritten seven'); empty: unconditional."
    )
    n: int = Field(1, ge=1, description="Number of images (at most the server's max_images).")
    size: str | None = Field(None, description="'auto' or the model's own size, e.g. '28x28'.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json only: genserve keeps no files to link to."
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of the images.")
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality, 0-100.")
    user: str | None = Field(None, max_length=256, description="Accepted; not used.")
    quality: str | None = Field(None, description="Accepted; genserve's models have one quality.")
    style: str | None = Field(None, description="Accepted; not used.")
    background: str | None = Field(None, description="Accepted; not used.")
    moderation: str | None = Field(None, description="Accepted; not used.")
    stream: bool = Field(False, description="Server-sent events: partial images (diffusion), then each image.")
    partial_images: int | None = Field(
        None, ge=0, le=3, description="With stream: previews per image on its way (the clean-image estimate)."
    )
    safety_identifier: str | None = Field(None, max_length=256, description="Accepted; not used.")
    # genserve's own fields (the SDK's extra_body); validated by the model's /generate schema.
    seed: Any = None
    steps: Any = None
    sampler: Any = None
    guidance: Any = None
    eta: Any = None
    truncation: Any = None
    temperature: Any = None


def label_from_prompt(prompt: str, card: ModelCard) -> int | None:
    """The card label a prompt names, or None for an empty prompt; InvalidRequest otherwise."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    if not words:
        return None
    found: set[int] = set()
    for i, name in enumerate(card.labels):
        names = {name.lower()}
        if name.isdigit() and int(name) < len(NUMBER_WORDS):
            names.add(NUMBER_WORDS[int(name)])
        if names & set(words) or (" " in name and name.lower() in prompt.lower()):
            found.add(i)
    listed = ", ".join(repr(n) for n in card.labels)
    if not found:
        raise InvalidRequest(
            f"the prompt names none of model {card.name!r}'s labels ({listed}); name one, or send an empty prompt "
            "for an unconditional image",
            field="prompt",
        )
    if len(found) > 1:
        named = ", ".join(repr(card.labels[i]) for i in sorted(found))
        raise InvalidRequest(f"the prompt names several labels ({named}); name one", field="prompt")
    return found.pop()


def generate_body(req: ImagesGenerationRequest, card: ModelCard, limits: Limits) -> dict[str, Any]:
    """The equivalent body of the model's own `/generate` request."""
    if req.response_format == "url":
        raise InvalidRequest(
            "response_format 'url' is not supported: genserve keeps no files; use b64_json", field="response_format"
        )
    if req.n > limits.max_images:
        raise InvalidRequest(f"at most {limits.max_images} images per request", field="n")
    if card.family == "text2image":
        return _text_body(req)
    own = f"{card.image.width}x{card.image.height}"
    if req.size not in (None, "auto", own):
        raise InvalidRequest(f"model {card.name!r} makes {own} images; size must be {own!r} or 'auto'", field="size")
    body: dict[str, Any] = {"n": req.n, "label": label_from_prompt(req.prompt, card)}
    for name in GENSERVE_FIELDS:
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    return body


def _text_body(req: ImagesGenerationRequest) -> dict[str, Any]:
    """A text-to-image model's `/generate` body: the prompt as it is, `size` "WxH" as width and height."""
    body: dict[str, Any] = {"n": req.n, "prompt": req.prompt}
    if req.size not in (None, "auto"):
        match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", req.size)
        if match is None:
            raise InvalidRequest("size must be 'WIDTHxHEIGHT' (e.g. '512x512') or 'auto'", field="size")
        body["width"], body["height"] = int(match[1]), int(match[2])
    for name in ("seed", "steps", "sampler", "guidance", "eta"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    return body


def parse(raw: bytes) -> ImagesGenerationRequest:
    """JSON bytes -> request, or InvalidRequest naming the first bad parameter."""
    try:
        return ImagesGenerationRequest.model_validate_json(raw or b"{}")
    except ValidationError as e:
        err = e.errors(include_url=False, include_context=False, include_input=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        message = "unrecognized request argument supplied" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidRequest(f"{field}: {message}" if field else message, field=field) from None


class ImagesEditRequest(BaseModel):
    """OpenAI's image edit form fields (multipart; the files travel beside them), plus genserve's."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str = Field("", max_length=1000)
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    user: str | None = Field(None, max_length=256)
    quality: str | None = None
    background: str | None = None
    input_fidelity: str | None = None
    safety_identifier: str | None = Field(None, max_length=256)
    stream: bool = False
    # genserve's own: how far to move from the image (image-to-image), and how to sample
    strength: float | None = Field(None, gt=0, le=1, description="Default 0.6 without a mask, 1 with one.")
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    eta: float | None = None


def edit_form_schema() -> dict[str, Any]:
    """The edit route's multipart form for OpenAPI: the fields above, and the two files."""
    schema = ImagesEditRequest.model_json_schema()
    schema["properties"] = {
        "image": {"type": "string", "format": "binary", "description": "PNG or JPEG of the model's size."},
        "mask": {"type": "string", "format": "binary", "description": "PNG with alpha: alpha 0 is regenerated."},
        **schema["properties"],
    }
    schema["required"] = ["image", *schema.get("required", [])]
    return schema


def parse_edit(fields: dict[str, str]) -> ImagesEditRequest:
    """Form fields (strings) -> request, or InvalidRequest naming the first bad one."""
    try:
        return ImagesEditRequest.model_validate(fields)
    except ValidationError as e:
        err = e.errors(include_url=False, include_context=False, include_input=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        message = "unrecognized request argument supplied" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidRequest(f"{field}: {message}" if field else message, field=field) from None


def edit_body(req: ImagesEditRequest, card: ModelCard, limits: Limits) -> dict[str, Any]:
    """The diffusion `/generate` body an edit runs with (its image and mask go on the job)."""
    if card.family != "diffusion" or "/img2img" not in card.routes():
        raise InvalidRequest(f"model {card.name!r} cannot edit images; a diffusion model can", field="model")
    if req.stream:
        raise InvalidRequest("stream is not supported for edits; send stream: false", field="stream")
    as_generation = ImagesGenerationRequest(
        model=req.model, prompt=req.prompt, n=req.n, size=req.size, response_format=req.response_format,
        seed=req.seed, steps=req.steps, sampler=req.sampler, guidance=req.guidance, eta=req.eta,
    )  # fmt: skip
    return generate_body(as_generation, card, limits)


def mask_from_alpha(image: Any, card: ModelCard, field: str = "mask") -> Any:
    """OpenAI's mask rule: fully transparent pixels (alpha 0) are edited. -> (C, H, W) float32,
    1 where the image is regenerated. `image` is an opened PIL image of the card's size."""
    import numpy as np

    if "A" not in image.getbands() and "transparency" not in image.info:
        raise InvalidRequest(
            f"{field}: needs an alpha channel: its fully transparent pixels are the ones edited", field=field
        )
    alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    regenerate = (alpha == 0).astype(np.float32)
    return np.broadcast_to(regenerate[None], card.image_shape).copy()
