"""Every endpoint fuzzed from the served OpenAPI schema with schemathesis: no 5xx, no hang, and
every error answer a JSON body.

The schema is the catalog's own OpenAPI document, which covers every route, the model replicas'
ones included (a test checks that the server serves
the same one); loading it at collection keeps to schemathesis' plain `parametrize`, whose
fixture-based loader does not run on pytest 9. Valid but expensive values are scaled down so that
the run fits in CI (n <= 2, steps <= 10: a valid 64-image 1000-step request would hold the 2-core
machine for minutes; the cost cap has its own tests); values outside the schema's bounds are
sent unchanged and must be refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from deployments.routes import catalog_app
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

CHEAP = {"n": 2, "steps": 10}


async def _no_probe(name: str) -> dict[str, str]:
    return {}


app = catalog_app({}, {}, _no_probe, lambda reason: None)
schema = schemathesis.openapi.from_dict(app.openapi())


def test_the_server_serves_this_schema(server: Server) -> None:
    assert requests.get(f"{server.url}/openapi.json", timeout=30).json()["paths"] == app.openapi()["paths"]


def cheapen(body: Any) -> Any:
    if isinstance(body, dict):
        for key, cap in CHEAP.items():
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and cap < value <= 1000:
                body[key] = cap
    return body


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_json_errors(case: Any, server: Server) -> None:
    case.body = cheapen(case.body)
    response = case.call(base_url=server.url, timeout=60)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or [""]  # schemathesis keeps every value
        assert str(content_type[0]).startswith("application/json"), response.text[:300]
        assert isinstance(response.json(), dict)
