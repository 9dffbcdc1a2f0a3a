"""OpenAI's Images API on the catalog: `POST /v1/images/generations`.

The model is named in the body, not the path, so HAProxy cannot send the request straight to the
model's replica: the catalog validates it (`service.openai_images`, then the model's own
`/generate` schema), hands the job to one of the model's replicas through a Serve deployment
handle (a second hop, which the model routes do not take), and re-encodes the PNGs if asked
for JPEG or WebP. Errors here use OpenAI's error shape, which OpenAI's clients parse.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from deployments.http import ERROR_CODE_HEADER, parse_request
from service import openai_images
from service.cards import ModelCard
from service.errors import GenserveError, ModelNotFound, Overloaded
from service.jobs import Job
from service.schemas import REQUEST_SCHEMAS
from service.settings import Limits

# (model name, job, deadline as Unix time) -> (PNG bytes per image, seconds taken)
Forward = Callable[[str, Job, float], Awaitable[tuple[list[bytes], float]]]
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


def transcode(png: bytes, fmt: str, quality: int | None) -> bytes:
    if fmt == "png":
        return png
    out = io.BytesIO()
    image = Image.open(io.BytesIO(png))
    image.save(out, format=fmt.upper(), quality=quality if quality is not None else 90)
    return out.getvalue()


def add_openai_routes(app: FastAPI, cards: dict[str, ModelCard], forward: Forward, timeout_s: float) -> None:
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
            pngs, seconds = await forward(card.name, job, deadline)
        except GenserveError as e:
            return from_genserve(e)
        data: list[dict[str, Any]] = [
            {"b64_json": base64.b64encode(transcode(p, req.output_format, req.output_compression)).decode("ascii"),
             "seed": job.seed, "index": i}
            for i, p in enumerate(pngs)
        ]  # fmt: skip
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "output_format": req.output_format,
                "size": f"{card.image.width}x{card.image.height}",
                "model": card.name,
                "label": job.label,
                "seconds": round(seconds, 4),
            }
        )


async def refuse_without_forward(name: str, job: Job, deadline: float) -> tuple[list[bytes], float]:
    """A catalog built without replicas (unit tests of its other routes): every model is down."""
    raise Overloaded(f"model {name!r} has no running replica; retry", retry_after=2.0)
