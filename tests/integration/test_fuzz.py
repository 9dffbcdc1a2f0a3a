"""Every endpoint fuzzed from the served OpenAPI schema with schemathesis: no 5xx, no hang, and
every error answer a JSON body; then the multipart edge cases of OpenAI's image edits, which a
schema-driven fuzzer does not reach (broken forms, files that are not what they claim).

The schema is the catalog's own OpenAPI document, which covers every route, the model replicas'
ones included (a test checks that the server serves
the same one); loading it at collection keeps to schemathesis' plain `parametrize`, whose
fixture-based loader does not run on pytest 9. Valid but expensive values are scaled down so that
the run fits in CI (n <= 2, steps <= 10: a valid 64-image 1000-step request would hold the 2-core
machine for minutes; the cost cap has its own tests); values outside the schema's bounds are
sent unchanged and must be refused.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image

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


def _png(size: int = 28, mode: str = "L", alpha: int | None = None) -> bytes:
    image = Image.new(mode, (size, size), 0 if mode == "L" else (0, 0, 0, 255 if alpha is None else alpha))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_header() -> bytes:
    """A PNG signature and IHDR claiming 100,000 x 100,000 pixels, and nothing after it."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


FORM = {"model": "diffusion", "prompt": "3", "steps": "2", "n": "1"}
Files = list[tuple[str, tuple[str, bytes, str]]]
# (what, form fields, files, raw body with its content type or None): each must be a 4xx
MULTIPART_CASES: list[tuple[str, dict[str, str], Files, tuple[bytes, str] | None]] = [
    ("json body, not a form", {}, [], (b'{"model": "diffusion", "prompt": "3"}', "application/json")),
    ("no image file", FORM, [], None),
    ("image sent as a text field", {**FORM, "image": "iVBORw0KGgo="}, [], None),
    ("two image files", FORM, [("image", ("a.png", _png(), "image/png"))] * 2, None),
    ("empty image file", FORM, [("image", ("a.png", b"", "image/png"))], None),
    ("text posing as an image", FORM, [("image", ("a.png", b"hello, not a picture", "image/png"))], None),
    ("truncated png", FORM, [("image", ("a.png", _png()[:40], "image/png"))], None),
    ("image of the wrong size", FORM, [("image", ("a.png", _png(64), "image/png"))], None),
    ("decompression-bomb header", FORM, [("image", ("a.png", _bomb_header(), "image/png"))], None),
    (
        "mask without alpha",
        FORM,
        [("image", ("a.png", _png(), "image/png")), ("mask", ("m.png", _png(), "image/png"))],
        None,
    ),
    (
        "truncated mask",
        FORM,
        [("image", ("a.png", _png(), "image/png")), ("mask", ("m.png", _png(mode="RGBA", alpha=0)[:60], "image/png"))],
        None,
    ),
    (
        "mask of the wrong size",
        FORM,
        [("image", ("a.png", _png(), "image/png")), ("mask", ("m.png", _png(32, "RGBA", 0), "image/png"))],
        None,
    ),
    (
        "two masks",
        FORM,
        [("image", ("a.png", _png(), "image/png"))] + [("mask", ("m.png", _png(mode="RGBA"), "image/png"))] * 2,
        None,
    ),
    ("more files than the form allows", FORM, [("x", ("x.png", _png(), "image/png"))] * 6, None),
    ("n is not a number", {**FORM, "n": "three"}, [("image", ("a.png", _png(), "image/png"))], None),
    ("a model that cannot edit", {**FORM, "model": "gan"}, [("image", ("a.png", _png(), "image/png"))], None),
    ("an unknown field", {**FORM, "colour": "red"}, [("image", ("a.png", _png(), "image/png"))], None),
    (
        "no boundary",
        {},
        [],
        (b"--x\r\ncontent-disposition: form-data; name=a\r\n\r\n1\r\n--x--", "multipart/form-data"),
    ),
    ("garbage under a boundary", {}, [], (b"\x00\xff" * 500, "multipart/form-data; boundary=zzz")),
    (
        "unterminated part",
        {},
        [],
        (
            b'--b\r\ncontent-disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + _png(),
            "multipart/form-data; boundary=b",
        ),
    ),
    (
        "non-utf8 field",
        {},
        [],
        (
            b'--b\r\ncontent-disposition: form-data; name="prompt"\r\n\r\n\xff\xfe\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ),
    ("a body over the limit", FORM, [("image", ("a.png", os.urandom(4 * 1024 * 1024), "image/png"))], None),
]


@pytest.mark.parametrize(
    ("form", "files", "raw"), [c[1:] for c in MULTIPART_CASES], ids=[c[0] for c in MULTIPART_CASES]
)
def test_multipart_edge_cases_on_image_edits_are_refused_in_openai_shape(
    server: Server, form: dict[str, str], files: Files, raw: tuple[bytes, str] | None
) -> None:
    url = f"{server.url}/v1/images/edits"
    if raw is not None:
        resp = requests.post(url, data=raw[0], headers={"content-type": raw[1]}, timeout=60)
    else:
        resp = requests.post(url, data=form, files=files or None, timeout=60)
    assert 400 <= resp.status_code < 500, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:300]
    error = resp.json()["error"]
    assert error["message"] and error["code"], error
