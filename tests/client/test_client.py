"""The client package over a mock transport: retries after 503 as the server asks, errors
typed with the server's code and field, the token from the environment, streams parsed into
events, and nothing of the server's stack imported."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from genserve_client import AsyncClient, Client, Done, GenserveError, ImageReady, Preview, Progress, RequestTimeout
from genserve_client._api import Accepted, EventReader, encode_image
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def png(value: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


TIMINGS = {"queue_seconds": 0.1, "compute_seconds": 0.2, "total_seconds": 0.3}
ANSWER = {
    "model": "gan",
    "output_format": "png",
    "images": [{"image_base64": png(10 * i), "seed": 5, "index": i} for i in range(2)],
    "grid_base64": None,
    "timings": TIMINGS,
}


def overloaded(retry_after: str) -> httpx.Response:
    body = {"error": {"code": "overloaded", "message": "queue full", "field": None}}
    return httpx.Response(503, json=body, headers={"Retry-After": retry_after})


def test_a_503_is_retried_after_the_servers_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([overloaded("2"), overloaded("120"), httpx.Response(200, json=ANSWER)])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    slept: list[float] = []
    monkeypatch.setattr("genserve_client.client.time.sleep", slept.append)
    with Client("http://genserve.test", transport=httpx.MockTransport(handler), max_retry_wait=30) as client:
        result = client.generate("gan", n=2, seed=5, label=3)
    assert slept == [2.0, 30.0]  # the server's wait, capped at max_retry_wait
    assert [r.url.path for r in seen] == ["/v1/models/gan/generate"] * 3
    assert json.loads(seen[0].content) == {"n": 2, "seed": 5, "label": 3}
    assert result.seed == 5 and result.timings.total_seconds == 0.3
    arrays = result.arrays()
    assert arrays.shape == (2, 28, 28, 1) and arrays[1].max() == 10


def test_retries_run_out_and_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("genserve_client.client.time.sleep", lambda s: None)
    calls = [0]

    def busy(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        return overloaded("1")

    with pytest.raises(GenserveError) as err, Client("http://t", transport=httpx.MockTransport(busy), retries=2) as c:
        c.generate("gan")
    assert err.value.status == 503 and err.value.retry_after == 1.0 and calls[0] == 3

    def invalid(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        body = {"error": {"code": "invalid_request", "message": "steps: at most 1000 steps", "field": "steps"}}
        return httpx.Response(422, json=body)

    calls[0] = 0
    with pytest.raises(GenserveError) as err, Client("http://t", transport=httpx.MockTransport(invalid)) as c:
        c.generate("diffusion", steps=5000)
    assert (err.value.status, err.value.code, err.value.field, calls[0]) == (422, "invalid_request", "steps", 1)
    assert "at most 1000 steps" in str(err.value)


def test_a_timeout_is_a_typed_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with (
        pytest.raises(RequestTimeout, match="within 2 s"),
        Client("http://t", timeout=2, transport=httpx.MockTransport(slow)) as c,
    ):
        c.models()


def test_the_token_comes_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"object": "list", "data": []})

    monkeypatch.setenv("GENSERVE_API_KEY", "from-env")
    monkeypatch.setenv("GENSERVE_URL", "http://from-env:9000")
    with Client(transport=httpx.MockTransport(handler)) as c:
        assert c.settings.url == "http://from-env:9000" and c.models() == []
    with Client("http://t", token="from-arg", transport=httpx.MockTransport(handler)) as c:
        c.models()
    monkeypatch.delenv("GENSERVE_API_KEY")
    with Client("http://t", transport=httpx.MockTransport(handler)) as c:
        c.models()
    assert headers == ["Bearer from-env", "Bearer from-arg", None]


STREAM = (
    'event: accepted\ndata: {"seed": 4, "label": 1, "total": 3, "output_format": "png"}\n\n'
    + "".join(f'event: progress\ndata: {{"step": {s}, "total": 3}}\n\n' for s in (1, 2, 3))
    + f'event: preview\ndata: {{"step": 2, "images": ["{png(7)}"]}}\n\n'
    + f'event: image\ndata: {{"index": 0, "image_base64": "{png(9)}", "seed": 4}}\n\n'
    + f"event: done\ndata: {json.dumps({'timings': TIMINGS})}\n\n"
)


def test_a_stream_becomes_typed_events_sync_and_async() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        assert request.headers["accept"] == "text/event-stream"
        return httpx.Response(200, text=STREAM, headers={"content-type": "text/event-stream"})

    with Client("http://t", transport=httpx.MockTransport(handler)) as c:
        events = list(c.generate_stream("diffusion", n=1, steps=3, preview_every=2))

    async def collect() -> list[Any]:
        async with AsyncClient("http://t", transport=httpx.MockTransport(handler)) as ac:
            return [e async for e in ac.generate_stream("diffusion", n=1, steps=3, preview_every=2)]

    assert asyncio.run(collect()) == events
    assert bodies[0] == {"n": 1, "steps": 3, "preview_every": 2, "stream": True}
    assert events[0] == Accepted(4, 1, 3)
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3]
    preview = next(e for e in events if isinstance(e, Preview))
    assert np.asarray(preview.images[0]).max() == 7
    image = next(e for e in events if isinstance(e, ImageReady))
    assert (image.index, image.seed, np.asarray(image.image).max()) == (0, 4, 9)
    assert isinstance(events[-1], Done) and events[-1].timings.queue_seconds == 0.1


def test_an_error_event_mid_stream_raises() -> None:
    reader = EventReader()
    for line in ["event: error", 'data: {"error": {"code": "deadline_exceeded", "message": "too slow"}}']:
        assert reader.feed(line) is None
    with pytest.raises(GenserveError, match="deadline_exceeded: too slow"):
        reader.feed("")


def test_images_go_up_as_png_from_pil_arrays_bytes_or_paths(tmp_path: Path) -> None:
    pixels = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28).astype(np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(pixels).save(path)
    for given in (Image.fromarray(pixels), pixels, pixels[:, :, None], path, str(path), path.read_bytes()):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encode_image(given)))))
        assert np.array_equal(decoded, pixels), type(given)


def test_the_client_installs_and_imports_without_the_servers_stack() -> None:
    deps = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    assert names == {"httpx", "pillow", "numpy"}
    blocked = ["torch", "ray", "onnxruntime", "service", "deployments", "training", "pydantic", "fastapi"]
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import genserve_client, genserve_client.cli\n"
        "genserve_client.cli.parser()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
