"""OpenAI's Images API on the catalog: `POST /v1/images/generations` (streamed with
`stream: true`: the replica's `generate_stream` through a streaming handle) and
`POST /v1/images/edits` (multipart: image-to-image, or inpainting under OpenAI's mask rule).

The model is named in the body, not the path, so HAProxy cannot send the request straight to the
model's replica: the catalog validates it (`service.openai_images`, then the model's own
`/generate` schema), hands the job to one of the model's replicas through a Serve deployment
handle (a second hop, which the model routes do not take), and re-encodes the PNGs if asked
for JPEG or WebP. Errors here use OpenAI's error shape, which OpenAI's clients parse.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from deployments.http import ERROR_CODE_HEADER, parse_request, sse
from service import openai_images
from service.cards import ModelCard
from service.errors import GenserveError, InvalidRequest, ModelNotFound, Overloaded
from service.images import ImageFormat, base64_as
from service.inputs import decode_file, load_file, to_network
from service.jobs import Edit, Job
from service.schemas import REQUEST_SCHEMAS
from service.settings import Limits

# (model name, job, deadline as Unix time) -> (PNG bytes per image, seconds taken)
Forward = Callable[[str, Job, float], Awaitable[tuple[list[bytes], float]]]
# (model name, job, deadline, previews per image) -> the replica's events (`generate_stream`)
StreamForward = Callable[[str, Job, float, int], AsyncIterator[dict[str, Any]]]
OPENAI_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error", 504: "server_error"}


def openai_error(
    status: int, message: str, param: str | None, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """OpenAI's error body; `code` is genserve's error code, also in X-Error-Code."""
    body = {"error": {"message": message, "type": OPENAI_TYPES.get(status, "api_error"), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), ERROR_CODE_HEADER: code})


def from_genserve(e: GenserveError) -> JSONResponse:
    status = 400 if e.status == 422 else e.status  # OpenAI answers a bad parameter with 400
    headers = {"Retry-After": str(max(1, round(e.retry_after)))} if isinstance(e, Overloaded) else None
    return openai_error(status, e.message, e.field, e.reason, headers)


async def openai_events(
    first: dict[str, Any], events: AsyncIterator[dict[str, Any]], card: ModelCard, fmt: ImageFormat, quality: int | None
) -> AsyncIterator[bytes]:
    """The replica's events as OpenAI's image generation stream: partial images, then one
    completed event per image; an error mid-stream becomes an `error` event."""
    common = {"size": f"{card.image.width}x{card.image.height}", "quality": "auto", "background": "opaque",
              "output_format": fmt}  # fmt: skip
    usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
             "total_tokens": 0}  # fmt: skip

    def event(kind: str, **data: Any) -> bytes:  # OpenAI repeats the event's name as its `type`
        return sse(kind, {"type": kind, "created_at": int(time.time()), **data})

    try:
        async for e in events:
            b64 = base64_as(e["png"], fmt, quality) if "png" in e else None
            if e["type"] == "partial":
                yield event("image_generation.partial_image", b64_json=b64, image_index=e["index"],
                            partial_image_index=e["partial_image_index"], **common)  # fmt: skip
            elif e["type"] == "image":
                yield event("image_generation.completed", b64_json=b64, image_index=e["index"], usage=usage,
                            seed=first.get("seed"), **common)  # fmt: skip
    except GenserveError as err:
        yield sse(
            "error", {"type": "error", "error": {"message": err.message, "type": "server_error", "code": err.reason}}
        )


def images_response(
    pngs: list[bytes], seconds: float, job: Job, card: ModelCard, fmt: ImageFormat, quality: int | None
) -> JSONResponse:
    """OpenAI's images response (`created`, `data` of `b64_json`), genserve's fields beside it."""
    data = [{"b64_json": base64_as(p, fmt, quality), "seed": job.seed, "index": i} for i, p in enumerate(pngs)]
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": data,
            "output_format": fmt,
            "size": f"{card.image.width}x{card.image.height}",
            "model": card.name,
            "label": job.label,
            "seconds": round(seconds, 4),
        }
    )


def add_openai_routes(
    app: FastAPI, cards: dict[str, ModelCard], forward: Forward, stream: StreamForward, timeout_s: float
) -> None:
    limits = Limits()

    @app.post(
        "/v1/images/generations",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": openai_images.ImagesGenerationRequest.model_json_schema()}},
            }
        },
        description="OpenAI's Images API: `model` names a served model, `prompt` one of its labels. genserve's own "
        "fields (seed, steps, sampler, guidance, ...) may be added, as the OpenAI SDK's `extra_body`.",
    )
    async def generations(request: Request) -> JSONResponse:
        deadline = time.time() + timeout_s
        try:
            req = openai_images.parse(await request.body())
            card = cards.get(req.model)
            if card is None:
                raise ModelNotFound(f"no model named {req.model!r}; GET /v1/models lists them", field="model")
            body = openai_images.generate_body(req, card, limits)
            validated = parse_request(json.dumps(body).encode(), REQUEST_SCHEMAS[card.family], card, limits)
            job = validated.to_job()
            if req.stream:
                events = stream(card.name, job, deadline, req.partial_images or 0)
                first = await anext(events)  # admission: a refusal is still an HTTP error
                body_iter = openai_events(first, events, card, req.output_format, req.output_compression)
                return StreamingResponse(body_iter, media_type="text/event-stream")  # type: ignore[return-value]
            pngs, seconds = await forward(card.name, job, deadline)
        except GenserveError as e:
            return from_genserve(e)
        return images_response(pngs, seconds, job, card, req.output_format, req.output_compression)


def add_openai_edit_route(app: FastAPI, cards: dict[str, ModelCard], forward: Forward, timeout_s: float) -> None:
    """`POST /v1/images/edits` (multipart): without a mask, image-to-image at `strength`; with
    one, inpainting where the mask is fully transparent (OpenAI's rule)."""
    limits = Limits()

    @app.post(
        "/v1/images/edits",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": openai_images.edit_form_schema()}},
            }
        },
        description="OpenAI's image edits (multipart): `image`, optional `mask` (transparent = edit), `prompt` "
        "(a label), `model` (a diffusion model); genserve's `strength`, `seed`, `steps`, `sampler`, `guidance`.",
    )
    async def edits(request: Request) -> JSONResponse:
        deadline = time.time() + timeout_s
        try:
            try:
                form = await request.form(max_files=4, max_fields=40)
            except Exception as e:  # a body that is not a multipart form, or over the form limits
                raise InvalidRequest(f"the body must be multipart/form-data with the image as a file ({e})") from None
            fields: dict[str, str] = {}
            files: dict[str, list[UploadFile]] = {}
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields[key] = value
                else:
                    files.setdefault(key.removesuffix("[]"), []).append(value)
            req = openai_images.parse_edit(fields)
            card = cards.get(req.model)
            if card is None:
                raise ModelNotFound(f"no model named {req.model!r}; GET /v1/models lists them", field="model")
            body = openai_images.edit_body(req, card, limits)
            images, masks = files.get("image", []), files.get("mask", [])
            if len(images) != 1 or len(masks) > 1:
                raise InvalidRequest("send one `image` file (and at most one `mask`)", field="image")
            image = to_network(decode_file(await images[0].read(), card, "image")[None], card)[0]
            mask = None
            if masks:
                opened = load_file(await masks[0].read(), card, "mask")
                mask = openai_images.mask_from_alpha(opened, card)
            strength = req.strength if req.strength is not None else (1.0 if mask is not None else 0.6)
            validated = parse_request(json.dumps(body).encode(), REQUEST_SCHEMAS[card.family], card, limits)
            job = dataclasses.replace(validated.to_job(), edit=Edit(image, strength, mask))
            pngs, seconds = await forward(card.name, job, deadline)
        except GenserveError as e:
            return from_genserve(e)
        return images_response(pngs, seconds, job, card, req.output_format, req.output_compression)


async def refuse_without_forward(name: str, job: Job, deadline: float) -> tuple[list[bytes], float]:
    """A catalog built without replicas (unit tests of its other routes): every model is down."""
    raise Overloaded(f"model {name!r} has no running replica; retry", retry_after=2.0)


async def refuse_without_stream(name: str, job: Job, deadline: float, previews: int) -> AsyncIterator[dict[str, Any]]:
    """As `refuse_without_forward`, for streaming requests."""
    raise Overloaded(f"model {name!r} has no running replica; retry", retry_after=2.0)
    yield {}  # an async generator, as the real one
