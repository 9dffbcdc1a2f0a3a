"""The routes: a model's own (`/v1/models/{name}` and its `/generate`) and the catalog's.

Each model replica serves its model's routes itself, so a generate request crosses HAProxy and
that one Python process. The catalog serves the model list, health, readiness and the one
OpenAPI document that covers every route (the model routes appear there under `{name}`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from deployments.http import (
    ERROR_CODE_HEADER,
    ErrorRecorder,
    direct_post,
    error_body,
    make_app,
    parse_request,
    sse,
)
from deployments.image_routes import Check, add_image_routes, body_limits, routes_for
from deployments.oip_routes import add_oip_routes
from deployments.openai_routes import (
    Forward,
    StreamForward,
    add_openai_edit_route,
    add_openai_routes,
    refuse_without_forward,
    refuse_without_stream,
)
from service import latents
from service.cards import ModelCard
from service.errors import GenserveError, ModelNotFound, Overloaded
from service.images import ImageFormat, base64_as, base64_text
from service.inputs import decode_image, to_network
from service.jobs import Edit, Job
from service.registry import LoadedModel
from service.schemas import (
    REQUEST_SCHEMAS,
    ClassifyRequest,
    ClassifyResponse,
    DiffusionInterpolateRequest,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    GeneratedImage,
    GenerateResponse,
    ImagesResponse,
    Img2ImgRequest,
    InpaintRequest,
    InterpolateRequest,
    ModelInfo,
    ModelList,
    ReconstructRequest,
    ScoreRequest,
    ScoreResponse,
    Timings,
)
from service.settings import Limits

GENERATE_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 404, 413, 422, 431, 503, 504)
}


@dataclass(frozen=True)
class Images:
    """What a model answers: PNG bytes per image, the optional grid, and timings."""

    pngs: list[bytes]
    grid: bytes | None
    queue_seconds: float
    total_seconds: float


T = TypeVar("T")


class ModelBackend(Protocol):
    """A model replica as its routes see it."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def model(self) -> LoadedModel: ...

    async def generate(self, job: Job, deadline: float, grid: bool) -> Images:
        """Images for `job` by `deadline` (Unix time), or a GenserveError."""
        ...

    def generate_stream(
        self, job: Job, deadline: float, previews: int = 0, every: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """`job` as events: accepted, progress, previews, images, done (`_Replica.generate_stream`)."""
        ...

    async def compute(self, fn: Callable[[Check], T], deadline: float, route: str) -> T:
        """`fn(check)` in a worker thread; `check` raises once the deadline passes or the client
        has left, so the work stops at its next chunk."""
        ...


def generate_response(name: str, seed: int, out: Images, req: Any) -> GenerateResponse:
    """The JSON answer to `req` (anything with `output_format` and `quality`): the replica's PNGs
    in the format asked for."""
    fmt, quality = req.output_format, req.quality
    images = [
        GeneratedImage(image_base64=base64_as(p, fmt, quality), seed=seed, index=i) for i, p in enumerate(out.pngs)
    ]
    timings = Timings(
        queue_seconds=out.queue_seconds,
        compute_seconds=out.total_seconds - out.queue_seconds,
        total_seconds=out.total_seconds,
    )
    grid = base64_as(out.grid, fmt, quality) if out.grid is not None else None
    return GenerateResponse(model=name, output_format=fmt, images=images, grid_base64=grid, timings=timings)


async def stream_events(
    first: dict[str, Any], events: AsyncIterator[dict[str, Any]], fmt: ImageFormat = "png", quality: int | None = None
) -> AsyncIterator[bytes]:
    """A replica's `generate_stream` events as genserve's server-sent events: `accepted`,
    `progress` {step, total}, `preview` {step, images} (always PNG), `image` {index, image_base64,
    seed} (in `fmt`), then `done` {timings}; an error after the stream began is an `error` event
    with the usual body."""
    seed = first.get("seed")
    accepted = {"seed": seed, "label": first.get("label"), "total": first.get("total"), "output_format": fmt}
    yield sse("accepted", accepted)
    try:
        async for e in events:
            if e["type"] == "progress":
                yield sse("progress", {"step": e["step"], "total": e["total"]})
            elif e["type"] == "preview":
                yield sse("preview", {"step": e["step"], "images": [base64_text(p) for p in e["pngs"]]})
            elif e["type"] == "image":
                data = base64_as(e["png"], fmt, quality)
                yield sse("image", {"index": e["index"], "image_base64": data, "seed": seed})
            elif e["type"] == "done":
                total, queue = e["seconds"], e["queue_seconds"]
                timings = {"queue_seconds": queue, "compute_seconds": total - queue, "total_seconds": total}
                yield sse("done", {"timings": timings})
    except GenserveError as err:
        yield sse("error", error_body(err.reason, err.message, err.field))


def openapi_body() -> dict[str, Any]:
    schemas = {fam: cls.model_json_schema() for fam, cls in REQUEST_SCHEMAS.items()}
    examples = {fam: {"summary": f"a {fam} request", "value": s.get("examples", [{}])[0]} for fam, s in schemas.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": list(schemas.values())}, "examples": examples}},
        }
    }


def model_app(backend: ModelBackend, timeout_s: float, record: ErrorRecorder) -> FastAPI:
    """The HTTP app of one model replica, mounted by Serve at `/v1/models/{name}`."""
    card = backend.card
    schema = REQUEST_SCHEMAS[card.family]
    limits = Limits()
    app = make_app(f"genserve model {card.name}", record, body_limits=body_limits(card, limits))

    @app.get("/")
    async def info() -> ModelInfo:
        onnx = backend.model.onnx  # this replica's own session
        return ModelInfo.from_card(card, limits).model_copy(
            update={"provider": onnx.provider, "provider_fallback": onnx.fallback}
        )

    async def answer(request: Request, req: Any, job: Job, deadline: float) -> GenerateResponse | StreamingResponse:
        """Images as JSON, or as server-sent events when the client asked for a stream."""
        if req.stream or "text/event-stream" in request.headers.get("accept", ""):
            events = backend.generate_stream(job, deadline, 0, getattr(req, "preview_every", 0))
            first = await anext(events)  # admission: a refusal is still an HTTP error
            body = stream_events(first, events, req.output_format, req.quality)
            return StreamingResponse(body, media_type="text/event-stream")
        out = await backend.generate(job, deadline, req.grid)
        return generate_response(card.name, job.seed, out, req)

    async def generate(request: Request) -> GenerateResponse | StreamingResponse:
        deadline = time.time() + timeout_s  # Unix time: the deadline may cross processes
        req = parse_request(await request.body(), schema, card, limits)
        return await answer(request, req, req.to_job(), deadline)

    direct_post(app, "/generate", generate, GenerateResponse)  # the hot route: past FastAPI's router

    if "/img2img" in card.routes():

        async def edited(request: Request, schema: type[Img2ImgRequest]) -> GenerateResponse | StreamingResponse:
            deadline = time.time() + timeout_s
            req = parse_request(await request.body(), schema, card, limits)
            image = to_network(decode_image(req.image, card, "image")[None], card)[0]
            mask = None
            if isinstance(req, InpaintRequest):
                mask = (decode_image(req.mask, card, "mask") >= 128).transpose(2, 0, 1).astype(np.float32)
            job = dataclasses.replace(req.to_job(), edit=Edit(image, req.strength, mask))
            return await answer(request, req, job, deadline)

        @app.post("/img2img", response_model=GenerateResponse)
        async def img2img(request: Request) -> GenerateResponse | StreamingResponse:
            return await edited(request, Img2ImgRequest)

        @app.post("/inpaint", response_model=GenerateResponse)
        async def inpaint(request: Request) -> GenerateResponse | StreamingResponse:
            return await edited(request, InpaintRequest)

    if card.family == "diffusion":

        @app.post("/interpolate", response_model=ImagesResponse)
        async def interpolate(request: Request) -> ImagesResponse:
            deadline = time.time() + timeout_s
            req = parse_request(await request.body(), DiffusionInterpolateRequest, card, limits)
            shape = card.image_shape
            a, b = latents.seed_noise(shape, req.from_seed), latents.seed_noise(shape, req.to_seed)
            initial = latents.slerp(a, b, req.frames).reshape(req.frames, *shape).astype(np.float32)
            out = await backend.generate(req.to_job(initial), deadline, req.grid)
            frames = generate_response(card.name, req.from_seed, out, req)
            return ImagesResponse(
                model=card.name,
                output_format=frames.output_format,
                images=[im.image_base64 for im in frames.images],
                grid_base64=frames.grid_base64,
                timings=frames.timings,
            )

    add_image_routes(app, backend, timeout_s, limits)
    return app


ReadyProbe = Callable[[str], Awaitable[dict[str, str]]]
PLAYGROUND = Path(__file__).with_name("playground.html")
PROBE_TIMEOUT_S = 5.0


def catalog_app(
    cards: dict[str, ModelCard],
    broken: dict[str, str],
    probe: ReadyProbe,
    record: ErrorRecorder,
    forward: Forward = refuse_without_forward,
    timeout_s: float = 120.0,
    stream: StreamForward = refuse_without_stream,
) -> FastAPI:
    """The catalog: model list, health, readiness, OpenAI's image generation (handed to the
    model's replicas by `forward`), and OpenAPI for every route."""
    limits = Limits()
    app = make_app(
        "genserve",
        record,
        docs=True,
        description="Images from GAN, VAE and diffusion models. `GET /v1/models` lists what is served.",
    )

    def card_of(name: str) -> ModelCard:
        card = cards.get(name)
        if card is None:
            raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
        return card

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    playground = PLAYGROUND.read_text()

    @app.get("/playground", include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        """The playground: one page of plain HTML and JavaScript calling the routes above."""
        return HTMLResponse(playground, headers={"Cache-Control": "no-cache"})

    seen: dict[str, dict[str, str]] = {}  # each model's last readiness answer: provider, fallback

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        status: dict[str, str] = {name: f"broken: {msg}" for name, msg in broken.items()}

        async def ping(name: str) -> None:
            try:
                seen[name] = answer = await asyncio.wait_for(probe(name), timeout=PROBE_TIMEOUT_S)
                fallback = answer.get("fallback")
                status[name] = f"ready, degraded: {fallback}" if fallback else "ready"
            except TimeoutError:
                status[name] = f"not ready: no answer to a 1-image request within {PROBE_TIMEOUT_S:.0f}s"
            except Exception as e:
                status[name] = f"not ready: {type(e).__name__}: {e}"[:300]

        await asyncio.gather(*(ping(n) for n in cards))
        ok = all(v.startswith("ready") for v in status.values())  # a degraded model still answers
        headers = None if ok else {ERROR_CODE_HEADER: "not_ready"}
        providers = {name: seen[name].get("provider") for name in cards if name in seen}
        body = {"ready": ok, "models": status, "providers": providers}
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    def listed(card: ModelCard) -> ModelInfo:
        last = seen.get(card.name, {})
        update = {"provider": last.get("provider"), "provider_fallback": last.get("fallback")}
        return ModelInfo.from_card(card, limits).model_copy(update=update)

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[listed(c) for c in cards.values()])

    @app.get("/v1/models/{name}", responses={404: {"model": ErrorResponse}})
    async def get_model(name: str) -> ModelInfo:
        return listed(card_of(name))

    @app.post(
        "/v1/models/{name}/generate",
        response_model=GenerateResponse,
        responses=GENERATE_ERRORS,
        openapi_extra=openapi_body(),
        description="Served by the model's own replicas; the catalog answers only for names it does not serve.",
    )
    async def generate(name: str) -> JSONResponse:
        card_of(name)
        # A served model's requests go to its own replicas; one arrives here only while it has none.
        raise Overloaded(f"model {name!r} has no running replica; retry", retry_after=2.0)

    for route, (request_schema, response_schema, families) in IMAGE_ROUTE_DOCS.items():
        _document_image_route(app, route, request_schema, response_schema, families, card_of)
    add_openai_routes(app, cards, forward, stream, timeout_s)
    add_openai_edit_route(app, cards, forward, timeout_s)
    add_oip_routes(app, cards, forward, probe, timeout_s)

    return app


# The routes beyond sampling, for the catalog's OpenAPI: request, response, which models have it.
IMAGE_ROUTE_DOCS: dict[str, tuple[tuple[type[BaseModel], ...], type[BaseModel], str]] = {
    "/score": ((ScoreRequest,), ScoreResponse, "VAE models with a `density` card block"),
    "/classify": ((ClassifyRequest,), ClassifyResponse, "VAE models with a `density` card block"),
    "/encode": ((EncodeRequest,), EncodeResponse, "VAE models"),
    "/reconstruct": ((ReconstructRequest,), ImagesResponse, "VAE models"),
    "/interpolate": (
        (InterpolateRequest, DiffusionInterpolateRequest),
        ImagesResponse,
        "Every model: GAN and VAE take the first body, diffusion models the second",
    ),
    "/img2img": ((Img2ImgRequest,), GenerateResponse, "Diffusion models (not step-conditioned distilled ones)"),
    "/inpaint": ((InpaintRequest,), GenerateResponse, "Diffusion models (not step-conditioned distilled ones)"),
}


def _document_image_route(
    app: FastAPI,
    route: str,
    request_schemas: tuple[type[BaseModel], ...],
    response_schema: type[BaseModel],
    families: str,
    card_of: Callable[[str], ModelCard],
) -> None:
    schemas = {cls.__name__: cls.model_json_schema() for cls in request_schemas}
    examples = {name: {"summary": name, "value": sch["examples"][0]} for name, sch in schemas.items()}
    one = list(schemas.values())
    body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": one[0] if len(one) == 1 else {"oneOf": one}, "examples": examples}
            },
        }
    }

    async def handler(name: str) -> JSONResponse:
        card = card_of(name)
        if route not in routes_for(card):
            raise ModelNotFound(f"model {name!r} has no {route} route ({families} have it)")
        raise Overloaded(f"model {name!r} has no running replica; retry", retry_after=2.0)

    app.post(
        f"/v1/models/{{name}}{route}",
        response_model=response_schema,
        responses=GENERATE_ERRORS,
        openapi_extra=body,
        summary=(request_schemas[0].__doc__ or route).strip().splitlines()[0],
        description=f"{families}. Served by the model's own replicas.",
        name=route.strip("/"),
    )(handler)
