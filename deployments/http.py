"""The HTTP edge every genserve app shares: limits, auth, JSON errors and error metrics.

A request meets, in order: error counting (every 4xx and 5xx, whoever answers it), the header
limit (431), bearer auth (401), the body limit (413, also before `100 Continue`), then the
routes: a direct route (`direct_post`, a model's generate) straight from ASGI, every other one
through FastAPI's router. Errors are always a JSON `ErrorResponse` whose code is also in `X-Error-Code`.
This module knows request schemas, job types and errors; never replicas, Ray or ONNX Runtime.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, authorized
from service.cards import ModelCard
from service.errors import GenserveError, InvalidRequest, Overloaded
from service.schemas import ErrorDetail, ErrorResponse
from service.settings import Limits

log = logging.getLogger("genserve.http")
MAX_BODY_BYTES = 64 * 1024
# Request line and headers together; HAProxy in front refuses (400) beyond its 16 KiB buffer.
MAX_HEADER_BYTES = 8 * 1024
MAX_ERRORS_SHOWN = 5
# Answered without a token even when auth is on: health checks, and the API's description and
# playground page (which hold no data; the requests they make carry the token).
OPEN_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/playground")
ERROR_CODE_HEADER = "x-error-code"

ErrorRecorder = Callable[[str], None]
Endpoint = Callable[[Request], Awaitable[BaseModel | Response]]


def sse(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: its name and its data as JSON."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """genserve's error body (`ErrorResponse`), for a response or a stream's `error` event."""
    return ErrorResponse(error=ErrorDetail(code=code, message=message, field=field)).model_dump()


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = error_body(code, message, field)
    return JSONResponse(body, status_code=status, headers={**(headers or {}), ERROR_CODE_HEADER: code})


def from_error(e: GenserveError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(e.retry_after)))} if isinstance(e, Overloaded) else None
    return error_response(e.status, e.reason, e.message, e.field, headers)


class CountErrors:
    """Records every 4xx and 5xx response by its error code, whichever layer answered it."""

    def __init__(self, app: ASGIApp, record: ErrorRecorder) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    code = dict(message.get("headers") or []).get(ERROR_CODE_HEADER.encode(), b"")
                    self.record(code.decode("latin-1") or f"http_{message['status']}")
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            # Unexpected errors pass this layer on their way to the outermost handler, which
            # answers them with a 500 `internal`.
            if not started:
                self.record("internal")
            raise


class HeaderLimit:
    """431 for a request line and headers over `max_bytes` in all."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or [])
            if size > self.max_bytes:
                resp = error_response(431, "headers_too_large", f"request headers over {self.max_bytes} bytes")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies over the limit (by Content-Length, or while streaming) before they are
    parsed. A declared length over the limit is refused before the body is read, so a client
    that sent `Expect: 100-continue` gets the 413 and never a `100 Continue`. The limit is
    `max_bytes`, or `per_route[path]` for routes whose inputs need more (images)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, per_route: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_route = per_route or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_route.get(_route_path(scope), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        resp = error_response(413, "body_too_large", f"request body over {limit} bytes")
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


class BearerAuth:
    """401 with no detail for requests without a valid bearer token; health checks stay open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ring = KeyRing()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.ring.keys()
        if scope["type"] == "http" and keys and _route_path(scope) not in OPEN_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1") or None
            if not authorized(header, keys):
                resp = error_response(401, "unauthorized", "unauthorized", headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DirectRoutes:
    """Runs the routes in `routes` ((method, path) -> endpoint) straight from ASGI, past FastAPI's
    router, dependency solving and response-model pass: for a 1-image GAN request that machinery
    cost more CPU than the route's own parsing and answer (`make bench`, peer `fastapi-router`).
    The endpoint takes the request and returns a pydantic model (answered as its JSON) or a
    response; a `GenserveError` is answered as FastAPI's handler would, anything else raises
    to the app's 500 handler, as from a FastAPI route. `direct_post` declares the route on the
    FastAPI app too, so OpenAPI documents it as before."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get((scope["method"], _route_path(scope))) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            result = await endpoint(Request(scope, receive))
        except GenserveError as e:
            result = from_error(e)
        if isinstance(result, BaseModel):
            result = Response(result.model_dump_json(by_alias=True), media_type="application/json")
        await result(scope, receive, send)


def direct_post(app: FastAPI, path: str, endpoint: Endpoint, response_model: type[BaseModel]) -> None:
    """`POST path` served by `DirectRoutes` (the app must come from `make_app`), documented in
    the app's OpenAPI like any `@app.post(path, response_model=...)` route."""
    app.post(path, response_model=response_model)(endpoint)
    app.state.direct_routes[("POST", path)] = endpoint


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class PrefixRoot:
    """Serves the bare route prefix (`/v1/models/gan`) as the app's `/`: Serve hands an app its
    prefix as `root_path`, and the request for the prefix itself would otherwise match nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


def parse_request(raw: bytes, schema: type[BaseModel], card: ModelCard, limits: Limits) -> Any:
    """JSON bytes -> validated request, or InvalidRequest naming the first bad field.

    Parsing is pydantic's own (strict types, bounded nesting and number size), so no body within
    the size limit can make it fail other than with a validation error; the message lists at most
    MAX_ERRORS_SHOWN errors, however many the body has."""
    try:
        return schema.model_validate_json(raw or b"{}", strict=True, context={"card": card, "limits": limits})
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        shown = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in errors[:MAX_ERRORS_SHOWN]]
        more = len(errors) - len(shown)
        message = "; ".join(shown) + (f"; and {more} more errors" if more > 0 else "")
        raise InvalidRequest(message, field=field) from None


UNAUTHORIZED_DOC = {
    "description": "No valid bearer token, when the server has keys (`GENSERVE_API_KEYS`).",
    "content": {
        "application/json": {
            "example": {"error": {"code": "unauthorized", "message": "unauthorized", "field": None}},
        }
    },
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
}


def document_auth(app: FastAPI) -> None:
    """OpenAPI gains a bearer scheme (`/docs` shows Authorize) that every route outside
    OPEN_PATHS asks for, optionally, since auth is off without keys; and their 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearerAuth"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the server's keys (GENSERVE_API_KEYS); not needed when it has none.",
            }
            for path, operations in schema["paths"].items():
                if path in OPEN_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearerAuth": []}, {}]
                    operation.setdefault("responses", {})["401"] = UNAUTHORIZED_DOC
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def make_app(
    title: str,
    record: ErrorRecorder,
    *,
    docs: bool = False,
    description: str = "",
    body_limits: dict[str, int] | None = None,
) -> FastAPI:
    """A FastAPI app with genserve's edge: middleware, JSON errors, no redirects.

    Trailing-slash redirects are off: Starlette builds them from the client's Host header."""
    app = FastAPI(
        title=title,
        description=description,
        version="0.2.0",
        redirect_slashes=False,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # genserve's metrics are its own (Prometheus, through Ray); FastAPI's OpenTelemetry
        # instrumentation, on by default, would look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.direct_routes = {}
    app.add_middleware(DirectRoutes, routes=app.state.direct_routes)
    app.add_middleware(BodyLimit, per_route=body_limits)
    app.add_middleware(BearerAuth)
    app.add_middleware(HeaderLimit)
    app.add_middleware(PrefixRoot)
    app.add_middleware(CountErrors, record=record)  # added last, so it runs first

    if docs:
        document_auth(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"][1:]) or None
        return error_response(422, "invalid_request", str(err["msg"]), field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(GenserveError)
    async def _genserve(_: Request, exc: GenserveError) -> JSONResponse:
        return from_error(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "internal error; see the server log")

    return app
