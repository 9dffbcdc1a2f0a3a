"""genserve's own streaming on generate, through real Ray Serve and HAProxy: progress and
previews from the diffusion lanes, the images, and lanes freed when the client leaves early."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.conftest import Server
from tests.integration.test_serve import generate, images_of

pytestmark = pytest.mark.integration


def events(resp: requests.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = ""
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def test_a_50_step_stream_shows_monotone_progress_previews_and_the_plain_requests_images(server: Server) -> None:
    body = {"n": 2, "steps": 50, "seed": 13, "label": 6, "preview_every": 10}
    with requests.post(
        f"{server.url}/v1/models/diffusion/generate", json=body, headers={"Accept": "text/event-stream"},
        stream=True, timeout=120,
    ) as resp:  # fmt: skip
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        seen = list(events(resp))
    kinds = [k for k, _ in seen]
    assert kinds[0] == "accepted" and kinds[-1] == "done" and kinds.count("image") == 2
    steps = [d["step"] for k, d in seen if k == "progress"]
    assert steps == list(range(1, 51))  # every step, in order
    previews = [d for k, d in seen if k == "preview"]
    assert [p["step"] for p in previews] == [10, 20, 30, 40] and all(len(p["images"]) == 2 for p in previews)
    streamed = [d["image_base64"] for k, d in seen if k == "image"]
    plain = generate(server, "diffusion", {"n": 2, "steps": 50, "seed": 13, "label": 6}).json()
    assert streamed == [im["image_base64"] for im in plain["images"]]  # the same bytes as without streaming


def queue_depth(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    return max(
        [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
         if line.startswith("ray_genserve_queue_depth_images{") and 'model="diffusion"' in line] or [0.0]
    )  # fmt: skip


def test_closing_the_stream_early_frees_the_lanes(server: Server) -> None:
    body = {"n": 16, "steps": 800, "seed": 2, "stream": True}
    resp = requests.post(f"{server.url}/v1/models/diffusion/generate", json=body, stream=True, timeout=120)
    assert resp.status_code == 200, resp.text[:400]
    progress = 0
    grown_at = time.monotonic() + 30
    for kind, data in events(resp):
        if kind == "progress":
            progress = data["step"]
        if progress >= 20 and queue_depth(server.metrics_url) >= 16:
            break
        assert time.monotonic() < grown_at, "the gauge never showed the request's lanes"
    resp.close()  # the client goes away mid-trajectory
    gone = time.monotonic()
    while queue_depth(server.metrics_url) >= 16 and time.monotonic() - gone < 10:
        time.sleep(0.1)
    freed_after = time.monotonic() - gone
    # the lanes leave at once; the gauge is exported every second (RAY_metrics_report_interval_ms)
    assert freed_after <= 2.5, freed_after
    assert images_of(generate(server, "diffusion", {"n": 1, "steps": 5, "seed": 1})).shape == (1, 28, 28, 1)
