"""The HTTP edge (limits, auth, errors, error metrics) and the model routes, without Ray: a model
app over a fake model backend, driven by Starlette's test client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.testclient import TestClient

from deployments.http import direct_post, make_app
from deployments.image_routes import Check
from deployments.routes import Images, catalog_app, model_app
from service.cards import ModelCard, load_card
from service.errors import GenserveError, InvalidRequest
from service.jobs import Job
from service.registry import LoadedModel, load_model
from service.schemas import Timings

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


class FakeModel:
    """Answers with one empty PNG per image; `fail` makes it raise."""

    def __init__(self, card: ModelCard, fail: Exception | None = None) -> None:
        self._card = card
        self.fail = fail
        self.jobs: list[Job] = []

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def model(self) -> LoadedModel:
        """The shipped model itself, for the routes beyond generate (loaded when first used)."""
        if not hasattr(self, "_model"):
            self._model = load_model(SHIPPED / self._card.name, device="cpu")
        return self._model

    async def generate(self, job: Job, deadline: float, grid: bool) -> Images:
        if self.fail is not None:
            raise self.fail
        self.jobs.append(job)
        return Images([b"png"] * job.n, None, 0.0, 0.01)

    async def compute(self, fn: Any, deadline: float, route: str) -> Any:
        if self.fail is not None:
            raise self.fail
        check: Check = lambda: None  # noqa: E731
        return fn(check)


def client(
    monkeypatch: pytest.MonkeyPatch, family: str = "gan", keys: str = "", fail: Exception | None = None
) -> tuple[TestClient, list[str], FakeModel]:
    monkeypatch.setenv("GENSERVE_API_KEYS", keys)
    recorded: list[str] = []
    model = FakeModel(load_card(SHIPPED / family), fail)
    app = model_app(model, 120.0, recorded.append)
    return TestClient(app, root_path=f"/v1/models/{family}", raise_server_exceptions=False), recorded, model


def post(c: TestClient, body: Any, **kw: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post("/v1/models/gan/generate", content=data, **kw)


def test_a_valid_request_reaches_the_model_and_answers_pngs(monkeypatch: pytest.MonkeyPatch) -> None:
    c, recorded, model = client(monkeypatch)
    resp = post(c, {"n": 3, "label": 2, "seed": 5})
    assert resp.status_code == 200, resp.text
    assert [im["index"] for im in resp.json()["images"]] == [0, 1, 2] and model.jobs[0].seed == 5
    assert c.get("/v1/models/gan").json()["name"] == "gan"  # the bare prefix is the model's info
    assert recorded == []


def test_a_direct_route_answers_without_the_app_router_and_is_still_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSERVE_API_KEYS", "")
    recorded: list[str] = []
    app = make_app("direct", recorded.append)

    async def echo(request: Request) -> BaseModel | Response:
        body = json.loads(await request.body())
        if body.get("refuse"):
            raise InvalidRequest("refused", field="refuse")
        if body.get("plain"):
            return PlainTextResponse("as is")
        return Timings(queue_seconds=body["q"], compute_seconds=0.5, total_seconds=body["q"] + 0.5)

    direct_post(app, "/echo", echo, Timings)
    routed: list[str] = []
    router = app.router

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await router(scope, receive, send)

    app.router = spy  # type: ignore[assignment]  # the innermost app of the middleware stack
    c = TestClient(app, raise_server_exceptions=False)
    resp = c.post("/echo", content=b'{"q": 0.25}')
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert Timings.model_validate_json(resp.content) == Timings(
        queue_seconds=0.25, compute_seconds=0.5, total_seconds=0.75
    )
    assert c.post("/echo", content=b'{"plain": 1}').text == "as is"
    refused = c.post("/echo", content=b'{"refuse": 1}')
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "refuse"
    assert c.post("/echo", content=b"{").status_code == 500  # a fault: the app's 500 handler
    assert routed == [] and recorded == ["invalid_request", "internal"]
    assert c.get("/echo").status_code == 405 and routed == ["/echo"]  # other methods: FastAPI's router
    app.router = router
    ok = app.openapi()["paths"]["/echo"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Timings"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": True}, "label"),
        ({"n": "1"}, "n"),
        ({"n": 1.5}, "n"),
        ({"truncation": 1e-300}, "truncation"),
        ({"truncation": 0.0}, "truncation"),
    ],
)
def test_wrong_json_types_and_unbounded_work_are_a_422_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], field: str
) -> None:
    c, recorded, model = client(monkeypatch)
    resp = post(c, body)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text
    assert recorded == ["invalid_request"] and model.jobs == []


@pytest.mark.parametrize("raw", [b"[" * 60_000, b'{"seed": ' + b"9" * 4301 + b"}", b"{not json", b"[1]", b'"x"'])
def test_no_body_within_the_limit_makes_a_5xx(monkeypatch: pytest.MonkeyPatch, raw: bytes) -> None:
    c, recorded, _ = client(monkeypatch)
    resp = post(c, raw)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request" and recorded == ["invalid_request"]


def test_thousands_of_errors_give_a_small_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, _ = client(monkeypatch)
    body = json.dumps({f"k{i}": 0 for i in range(6000)}, separators=(",", ":")).encode()
    assert len(body) < 64 * 1024
    resp = post(c, body)
    assert resp.status_code == 422 and len(resp.content) < 1000, len(resp.content)
    assert "and 5995 more errors" in resp.json()["error"]["message"]


def test_every_error_response_is_counted_a_500_too(monkeypatch: pytest.MonkeyPatch) -> None:
    c, recorded, _ = client(monkeypatch, fail=RuntimeError("boom"))
    resp = post(c, {"n": 1})
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal"
    assert resp.headers["x-error-code"] == "internal"
    c2, recorded2, _ = client(monkeypatch, fail=GenserveError("network call failed"))
    assert post(c2, {"n": 1}).status_code == 500
    assert c2.get("/v1/models/gan/nowhere").status_code == 404
    assert recorded == ["internal"] and recorded2 == ["internal", "not_found"]


def test_bodies_over_the_limit_get_413_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    c, recorded, _ = client(monkeypatch)
    resp = post(c, b"x" * (64 * 1024 + 1))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(70):
            yield b"y" * 1024

    streamed = c.post("/v1/models/gan/generate", content=chunks())  # no Content-Length: counted while read
    assert streamed.status_code == 413 and recorded == ["body_too_large", "body_too_large"]


def test_oversized_headers_get_431(monkeypatch: pytest.MonkeyPatch) -> None:
    c, recorded, model = client(monkeypatch)
    resp = post(c, {"n": 1}, headers={"x-padding": "a" * 9000})
    assert resp.status_code == 431 and resp.json()["error"]["code"] == "headers_too_large"
    assert model.jobs == [] and recorded == ["headers_too_large"]


def test_a_trailing_slash_never_redirects(monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, _ = client(monkeypatch)
    resp = c.post("/v1/models/gan/generate/", content=b"{}", headers={"host": "evil.example"}, follow_redirects=False)
    assert resp.status_code == 404 and "location" not in resp.headers


def test_auth_refuses_without_detail_and_takes_the_scheme_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    c, recorded, _ = client(monkeypatch, keys="k1,k2")
    denied = post(c, {"n": 1})
    assert denied.status_code == 401 and denied.json()["error"]["message"] == "unauthorized"
    assert denied.headers["www-authenticate"] == "Bearer"
    assert post(c, {"n": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(c, {"n": 1}, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert post(c, {"n": 1}, headers={"Authorization": "bearer k1"}).status_code == 200
    assert recorded == ["unauthorized", "unauthorized"]


def test_catalog_health_stays_open_with_auth_and_unknown_models_are_404(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSERVE_API_KEYS", "k1")
    cards = {"gan": load_card(SHIPPED / "gan")}

    async def probe(name: str) -> dict[str, str]:
        return {"model": name}

    recorded: list[str] = []
    c = TestClient(catalog_app(cards, {"vae": "vae/model.onnx: not an ONNX file"}, probe, recorded.append))
    assert c.get("/healthz").status_code == 200
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.json()["models"] == {
        "gan": "ready",
        "vae": "broken: vae/model.onnx: not an ONNX file",
    }
    assert c.get("/v1/models").status_code == 401
    auth = {"Authorization": "Bearer k1"}
    assert [m["name"] for m in c.get("/v1/models", headers=auth).json()["data"]] == ["gan"]
    missing = c.post("/v1/models/nope/generate", content=b"{}", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert c.get("/v1/models/", headers=auth, follow_redirects=False).status_code == 404
    assert recorded == ["not_ready", "unauthorized", "model_not_found", "not_found"]


def test_openapi_has_a_bearer_scheme_every_data_route_asks_for_and_documents_401(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSERVE_API_KEYS", "k1")

    async def probe(name: str) -> dict[str, str]:
        return {}

    c = TestClient(catalog_app({"gan": load_card(SHIPPED / "gan")}, {}, probe, lambda _: None))
    assert c.get("/docs").status_code == 200  # the page and its schema are open; Authorize sends the token
    schema = c.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the server's keys (GENSERVE_API_KEYS); not needed when it has none.",
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
                assert "security" not in operation and "401" not in operation["responses"], path
            else:
                assert operation["security"] == [{"bearerAuth": []}, {}], path
                assert operation["responses"]["401"]["content"]["application/json"]["example"]["error"]["code"] == (
                    "unauthorized"
                )
    generate = schema["paths"]["/v1/models/{name}/generate"]["post"]["responses"]["200"]["content"]
    example = schema["components"]["schemas"]["GenerateResponse"]["examples"][0]
    assert "$ref" in generate["application/json"]["schema"] and example["images"][0]["image_base64"].startswith("iVBOR")


def test_readiness_and_the_model_list_show_each_models_provider_and_a_fallback_loudly() -> None:
    note = "asked for CUDAExecutionProvider but runs on CPUExecutionProvider (...)"

    async def probe(name: str) -> dict[str, str]:
        answer = {"model": name, "provider": "CPUExecutionProvider"}
        return {**answer, "fallback": note} if name == "gan" else answer

    cards = {n: load_card(SHIPPED / n) for n in ("gan", "vae")}
    c = TestClient(catalog_app(cards, {}, probe, lambda _: None))
    assert c.get("/v1/models").json()["data"][0]["provider"] is None  # not probed yet
    ready = c.get("/readyz")
    assert ready.status_code == 200  # a degraded model still answers
    assert ready.json()["models"] == {"gan": f"ready, degraded: {note}", "vae": "ready"}
    assert ready.json()["providers"] == {"gan": "CPUExecutionProvider", "vae": "CPUExecutionProvider"}
    listed = {m["name"]: m for m in c.get("/v1/models").json()["data"]}
    assert listed["gan"]["provider_fallback"] == note and listed["vae"]["provider_fallback"] is None
    assert listed["vae"]["provider"] == "CPUExecutionProvider"
