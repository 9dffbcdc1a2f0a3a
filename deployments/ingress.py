"""The HTTP front: FastAPI routes, pydantic validation, error mapping, one handle per model.

Every error is a JSON `ErrorResponse`: 422 naming the field, 404 for an unknown model, 413 for
an oversized body, 503 with Retry-After when a model is overloaded, 504 past the deadline.
"""

import asyncio
import base64
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.metrics import IngressMetrics
from deployments.replicas import ReplicaResult
from service.auth import authorized, load_api_keys
from service.cards import ModelCard
from service.errors import DeadlineExceeded, GenserveError, InvalidRequest, ModelNotFound, Overloaded
from service.schemas import (
    REQUEST_SCHEMAS,
    ErrorDetail,
    ErrorResponse,
    GeneratedImage,
    GenerateResponse,
    ModelInfo,
    Timings,
)
from service.settings import Limits

log = logging.getLogger("genserve.ingress")
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def from_error(e: GenserveError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(e.retry_after)))} if isinstance(e, Overloaded) else None
    return error_response(e.status, e.reason, e.message, e.field, headers)


class BodyLimit:
    """Refuses bodies over `max_bytes` (by Content-Length, or while streaming) before they are parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(413, "body_too_large", f"request body over {self.max_bytes} bytes")
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


OPEN_PATHS = ("/healthz", "/readyz")


class BearerAuth:
    """401 with no detail for requests without a valid bearer token; health checks stay open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.keys = load_api_keys()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"] not in OPEN_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1") or None
            if not authorized(header, self.keys):
                resp = error_response(401, "unauthorized", "unauthorized", headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def json_depth(value: Any, depth: int = 0) -> int:
    if depth > MAX_JSON_DEPTH:
        return depth
    if isinstance(value, dict):
        return max((json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def parse_body(raw: bytes, schema: type[Any], card: ModelCard, limits: Limits) -> Any:
    """JSON bytes -> validated request, or InvalidRequest naming the first bad field."""
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"body is not valid JSON: {e}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object", field="body")
    if json_depth(data) > 2:
        raise InvalidRequest("body is nested too deeply: fields take plain values", field="body")
    try:
        return schema.model_validate(data, context={"card": card, "limits": limits})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        messages = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidRequest(messages, field=field) from None


def _openapi_body() -> dict[str, Any]:
    schemas = {fam: cls.model_json_schema() for fam, cls in REQUEST_SCHEMAS.items()}
    examples = {fam: {"summary": f"a {fam} request", "value": s.get("examples", [{}])[0]} for fam, s in schemas.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": list(schemas.values())}, "examples": examples}},
        }
    }


app = FastAPI(
    title="genserve",
    description="Images from GAN, VAE and diffusion models. `GET /v1/models` lists what is served.",
    version="0.1.0",
)
app.add_middleware(BodyLimit)
app.add_middleware(BearerAuth)  # added last, so it runs first


@app.exception_handler(RequestValidationError)
async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"][1:]) or None
    return error_response(422, "invalid_request", str(err["msg"]), field)


@app.exception_handler(StarletteHTTPException)
async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return error_response(500, "internal", "internal error; see the server log")


@serve.ingress(app)
class Ingress:
    """Routes requests to one deployment handle per model; validation happens here."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle[Any]],
        cards: dict[str, ModelCard],
        broken: dict[str, str],
        timeout_s: float,
    ) -> None:
        self.handles = handles
        self.cards = cards
        self.broken = broken
        self.timeout_s = timeout_s
        self.limits = Limits()
        self.metrics = IngressMetrics()

    def _card(self, name: str) -> ModelCard:
        card = self.cards.get(name)
        if card is None:
            raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
        return card

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> JSONResponse:
        status: dict[str, str] = {name: f"broken: {msg}" for name, msg in self.broken.items()}

        async def ping(name: str, handle: DeploymentHandle[Any]) -> None:
            try:
                await asyncio.wait_for(handle.ready.remote(), timeout=5)
                status[name] = "ready"
            except Exception as e:
                status[name] = f"not ready: {type(e).__name__}"

        await asyncio.gather(*(ping(n, h) for n, h in self.handles.items()))
        ok = all(v == "ready" for v in status.values())
        return JSONResponse({"ready": ok, "models": status}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo.from_card(c, self.limits) for c in self.cards.values()]

    @app.get("/v1/models/{name}", responses={404: {"model": ErrorResponse}})
    async def get_model(self, name: str) -> Any:
        try:
            return ModelInfo.from_card(self._card(name), self.limits)
        except GenserveError as e:
            return from_error(e)

    @app.post(
        "/v1/models/{name}/generate",
        response_model=GenerateResponse,
        responses={s: {"model": ErrorResponse} for s in (404, 413, 422, 503, 504)},
        openapi_extra=_openapi_body(),
    )
    async def generate(self, name: str, request: Request) -> Any:
        try:
            card = self._card(name)
            req = parse_body(await request.body(), REQUEST_SCHEMAS[card.family], card, self.limits)
            job = req.to_job()
            result = await self._call(name, job, req.grid)
        except GenserveError as e:
            # Only served model names become label values, so the label set stays bounded.
            self.metrics.error(name if name in self.cards else "unknown", e.reason)
            return from_error(e)
        failure = result.error()
        if failure is not None:
            return from_error(failure)
        images = [
            GeneratedImage(png_base64=base64.b64encode(p).decode("ascii"), seed=job.seed, index=i)
            for i, p in enumerate(result.pngs)
        ]
        timings = Timings(
            queue_seconds=result.queue_seconds,
            compute_seconds=result.total_seconds - result.queue_seconds,
            total_seconds=result.total_seconds,
        )
        tiled = base64.b64encode(result.grid).decode("ascii") if result.grid is not None else None
        return GenerateResponse(model=name, images=images, grid_png_base64=tiled, timings=timings)

    async def _call(self, name: str, job: Any, grid: bool) -> ReplicaResult:
        """One replica call, bounded by the request timeout; Ray's back-pressure and a replica
        that died under the request become a 503 with Retry-After."""
        deadline = time.time() + self.timeout_s
        call = self.handles[name].generate.remote(job, deadline, grid)
        try:
            # The replica answers by the deadline; the margin covers a replica that cannot.
            result: ReplicaResult = await asyncio.wait_for(call, timeout=self.timeout_s + 5)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer from model {name!r} within {self.timeout_s:.0f}s") from None
        except BackPressureError:
            raise Overloaded(f"model {name!r} has too many queued requests", retry_after=1.0) from None
        except RayActorError:
            # The replica died with this request on it (Ray restarts it); the work is lost, so the
            # client retries, as after any 503.
            raise Overloaded(f"model {name!r} replica became unavailable; retry", retry_after=2.0) from None
        return result
