"""The ingress's ASGI middleware (body limit, bearer auth) on a plain Starlette app, without Ray."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deployments.ingress import BearerAuth, BodyLimit


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def client(monkeypatch: pytest.MonkeyPatch, keys: str = "") -> TestClient:
    monkeypatch.setenv("GENSERVE_API_KEYS", keys)
    app = Starlette(routes=[Route("/v1/echo", echo, methods=["POST"]), Route("/healthz", echo, methods=["POST"])])
    app.add_middleware(BodyLimit, max_bytes=1000)
    app.add_middleware(BearerAuth)
    return TestClient(app)


def test_bodies_over_the_limit_get_413_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    c = client(monkeypatch)
    assert c.post("/v1/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    resp = c.post("/v1/echo", content=b"x" * 1001)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"y" * 400

    streamed = c.post("/v1/echo", content=chunks())  # no Content-Length: counted while streaming
    assert streamed.status_code == 413


def test_auth_refuses_without_detail_and_leaves_health_open(monkeypatch: pytest.MonkeyPatch) -> None:
    c = client(monkeypatch, keys="k1,k2")
    denied = c.post("/v1/echo", content=b"{}")
    assert denied.status_code == 401 and denied.json()["error"]["message"] == "unauthorized"
    assert denied.headers["www-authenticate"] == "Bearer"
    assert c.post("/v1/echo", content=b"{}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/v1/echo", content=b"{}", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert c.post("/healthz", content=b"").status_code == 200


def test_auth_is_off_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client(monkeypatch).post("/v1/echo", content=b"{}").status_code == 200
