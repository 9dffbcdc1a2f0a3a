"""The Ray Serve app over real HTTP, serving the shipped ONNX models from `exported/`."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from service import metrics as names
from service.images import decode_png
from service.metrics import exported_name
from service.runtime import OnnxModel
from service.settings import Settings
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration


def generate(server: Server, model: str, body: dict[str, Any], timeout: float = 120) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/generate", json=body, timeout=timeout)


def images_of(resp: requests.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.stack([decode_png(base64.b64decode(im["image_base64"])) for im in resp.json()["images"]])


def classify(server: Server, images: np.ndarray) -> np.ndarray:
    clf = OnnxModel(server.model_dir / "_evaluation" / "classifier.onnx", device="cpu")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    logits = clf.session.run(["logits"], {"image": x})[0]
    return np.asarray(logits).argmax(1)


def test_health_readiness_and_model_listing(server: Server) -> None:
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{server.url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["providers"].values()) == {"CPUExecutionProvider"}  # no GPU here, none asked for
    listing = requests.get(f"{server.url}/v1/models", timeout=10).json()
    assert listing["object"] == "list"  # OpenAI's list shape, genserve's fields in each entry
    models = {m["name"]: m for m in listing["data"]}
    assert all(m["id"] == m["name"] and m["object"] == "model" and m["created"] > 0 for m in models.values())
    assert {"gan", "vae", "diffusion"} <= set(models)
    assert models["diffusion"]["samplers"] == ["ddpm", "ddim", "dpmpp_2m"] and models["diffusion"]["max_steps"] == 1000
    assert all(m["provider"] == "CPUExecutionProvider" for m in models.values())  # as of the readiness probe
    one = requests.get(f"{server.url}/v1/models/gan", timeout=10).json()  # answered by a gan replica itself
    assert one["image_shape"] == [1, 28, 28] and one["labels"][3] == "3"
    assert (one["provider"], one["provider_fallback"]) == ("CPUExecutionProvider", None)


@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("gan", {"n": 8, "label": 3, "seed": 1}),
        ("vae", {"n": 8, "label": 5, "seed": 2}),
        ("diffusion", {"n": 8, "label": 7, "seed": 3, "steps": 20, "sampler": "dpmpp_2m", "guidance": 2.0}),
        ("distilled", {"n": 8, "label": 4, "seed": 4, "steps": 2}),
    ],
)
def test_each_family_returns_pngs_of_the_requested_digit(server: Server, model: str, body: dict[str, Any]) -> None:
    resp = generate(server, model, body)
    images = images_of(resp)
    assert images.shape == (8, 28, 28, 1) and images.dtype == np.uint8
    payload = resp.json()
    assert payload["model"] == model and [im["seed"] for im in payload["images"]] == [body["seed"]] * 8
    assert [im["index"] for im in payload["images"]] == list(range(8))
    t = payload["timings"]
    assert t["total_seconds"] >= t["compute_seconds"] >= 0 and t["queue_seconds"] >= 0
    agree = (classify(server, images) == body["label"]).mean()
    assert agree >= 0.75, f"classifier agreed with the label on {agree:.0%} of {model} images"


def test_the_distilled_model_takes_its_own_step_counts_only(server: Server) -> None:
    info = requests.get(f"{server.url}/v1/models/distilled", timeout=10).json()
    assert info["samplers"] == ["ddim"] and info["steps"] == [1, 2, 4]
    default = generate(server, "distilled", {"n": 1, "label": 2, "seed": 9})
    assert np.array_equal(
        images_of(default), images_of(generate(server, "distilled", {"n": 1, "label": 2, "seed": 9, "steps": 4}))
    )
    refused = generate(server, "distilled", {"n": 1, "steps": 10})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "steps"


def test_a_grid_png_comes_back_when_asked_for(server: Server) -> None:
    resp = generate(server, "vae", {"n": 4, "seed": 5, "grid": True})
    tiled = decode_png(base64.b64decode(resp.json()["grid_base64"]))
    assert tiled.shape == (2 + 30, 2 + 4 * 30, 1)
    assert generate(server, "vae", {"n": 1}).json()["grid_base64"] is None


def test_jpeg_and_webp_carry_the_same_samples_as_png(server: Server) -> None:
    body = {"n": 2, "label": 5, "seed": 21, "steps": 10, "grid": True}
    png = generate(server, "diffusion", body).json()
    for fmt, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        resp = generate(server, "diffusion", {**body, "output_format": fmt, "quality": 95})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["output_format"] == fmt
        files = [base64.b64decode(im["image_base64"]) for im in out["images"]] + [base64.b64decode(out["grid_base64"])]
        lossless = [base64.b64decode(im["image_base64"]) for im in png["images"]] + [
            base64.b64decode(png["grid_base64"])
        ]
        for f, p in zip(files, lossless, strict=True):
            assert f.startswith(magic)
            assert np.abs(decode_png(f)[:, :, :1].astype(int) - decode_png(p).astype(int)).mean() < 6


def test_a_seeded_request_gives_the_same_images_alone_and_amid_mixed_traffic(server: Server) -> None:
    probe = {"n": 3, "label": 2, "seed": 77, "steps": 15, "sampler": "ddim", "guidance": 1.5}
    alone = images_of(generate(server, "diffusion", probe))
    gan_probe = {"n": 3, "label": 4, "seed": 78}
    gan_alone = images_of(generate(server, "gan", gan_probe))
    traffic = [
        ("diffusion", {"n": 2, "seed": i, "steps": s, "sampler": sm})
        for i, (s, sm) in enumerate([(10, "dpmpp_2m"), (30, "ddpm"), (25, "ddim")] * 2)
    ]
    traffic += [("gan", {"n": 5, "seed": 100 + i}) for i in range(6)]
    with ThreadPoolExecutor(16) as pool:
        others = [pool.submit(generate, server, m, b) for m, b in traffic]
        time.sleep(0.05)
        busy = pool.submit(generate, server, "diffusion", probe)
        gan_busy = pool.submit(generate, server, "gan", gan_probe)
        np.testing.assert_array_equal(images_of(busy.result()), alone)
        np.testing.assert_array_equal(images_of(gan_busy.result()), gan_alone)
        assert all(f.result().status_code == 200 for f in others)


def scrape(server: Server) -> str:
    return requests.get(server.metrics_url, timeout=10).text


def histogram_counts_above_one(text: str, metric: str, model: str) -> float:
    """Observations > 1 of a size histogram for one model: count minus the `le=1` bucket."""
    count = bucket1 = 0.0
    for line in text.splitlines():
        if not line.startswith(metric) or f'model="{model}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{metric}_count"):
            count += value
        elif line.startswith(f"{metric}_bucket") and re.search(r'le="1(\.0)?"', line):
            bucket1 += value
    return count - bucket1


def wait_for_metric(server: Server, predicate: Any, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = scrape(server)
        if predicate(text):
            return text
        time.sleep(1)
    raise AssertionError(f"metric condition not met in {timeout}s; last scrape:\n{text[-3000:]}")


def test_concurrent_requests_share_network_calls(server: Server) -> None:
    with ThreadPoolExecutor(12) as pool:
        diff = [
            pool.submit(generate, server, "diffusion", {"n": 2, "seed": i, "steps": s})
            for i, s in enumerate([10, 40, 10, 40, 25, 25])
        ]
        gan = [pool.submit(generate, server, "gan", {"n": 2, "seed": i}) for i in range(12)]
        assert all(f.result().status_code == 200 for f in diff + gan)
    # Diffusion requests with different step counts advanced in the same network calls;
    # GAN requests were batched together.
    shared = exported_name(names.BATCH_REQUESTS)
    wait_for_metric(server, lambda t: histogram_counts_above_one(t, shared, "diffusion") > 0)
    wait_for_metric(server, lambda t: histogram_counts_above_one(t, exported_name(names.BATCH_IMAGES), "gan") > 0)


BAD = [
    ("diffusion", {"steps": "many"}, 422, "steps"),
    ("diffusion", {"steps": 5000}, 422, "steps"),
    ("diffusion", {"n": 1000}, 422, "n"),
    ("diffusion", {"sampler": "euler"}, 422, "sampler"),
    ("gan", {"label": 12}, 422, "label"),
    ("vae", {"temperature": -1}, 422, "temperature"),
    ("gan", {"unknown_field": 1}, 422, "unknown_field"),
    ("gan", {"n": {"a": {"b": {"c": 1}}}}, 422, "n"),  # nesting where a number belongs names the field
    ("no-such-model", {"n": 1}, 404, None),
    ("..%2F..%2Fetc", {"n": 1}, 404, None),
]


@pytest.mark.parametrize(("model", "body", "status", "field"), BAD)
def test_bad_input_gets_a_json_4xx_naming_the_field(
    server: Server, model: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    resp = generate(server, model, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] and err["message"]
    if field is not None:
        assert err["field"] == field


def test_malformed_and_oversized_bodies_are_refused(server: Server) -> None:
    url = f"{server.url}/v1/models/gan/generate"
    bad_json = requests.post(url, data=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert bad_json.status_code == 422 and bad_json.json()["error"]["field"] == "body"
    huge = requests.post(url, data=json.dumps({"n": 1, "pad": "x" * 200_000}), timeout=10)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


def test_openapi_has_an_example_per_family(server: Server) -> None:
    spec = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/models/{name}/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"gan", "vae", "diffusion", "text2image"}
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200


EXPECTED_METRICS = {
    exported_name(names.REQUEST_LATENCY) + "_bucket": {"model", "family", "steps_band"},
    exported_name(names.STEP_LATENCY) + "_bucket": {"model", "family"},
    exported_name(names.BATCH_IMAGES) + "_bucket": {"model", "family"},
    exported_name(names.BATCH_LANES) + "_bucket": {"model", "family"},
    exported_name(names.BATCH_REQUESTS) + "_bucket": {"model", "family"},
    exported_name(names.QUEUE_WAIT) + "_bucket": {"model", "family"},
    exported_name(names.QUEUE_DEPTH): {"model", "family"},
    exported_name(names.QUEUE_LIMIT): {"model", "family"},
    exported_name(names.PROVIDER): {"model", "family", "provider"},
    exported_name(names.REPLICA_MEMORY): {"model", "family"},
    exported_name(names.IMAGES): {"model", "family"},
    exported_name(names.REQUESTS): {"model", "family", "outcome"},
    exported_name(names.ERRORS): {"model", "reason"},
}


def test_metrics_appear_on_the_export_port_with_their_labels(server: Server) -> None:
    for model, body in [
        ("gan", {"n": 1}),
        ("vae", {"n": 1}),
        ("diffusion", {"n": 1, "steps": 10}),
        ("diffusion", {"n": 1, "steps": 20}),
    ]:
        assert generate(server, model, body).status_code == 200

    refused = generate(server, "gan", {"n": "one"})  # counted by the model's own edge
    assert refused.status_code == 422
    gan_invalid = exported_name(names.ERRORS) + r'\{[^}]*model="gan"[^}]*reason="invalid_request"'
    expected = Settings().max_queued_images  # what build_apps gives each replica
    limit = exported_name(names.QUEUE_LIMIT) + rf'\{{[^}}]*model="diffusion"[^}}]*\}} {expected}(\.0)?$'

    def all_present(text: str) -> bool:
        # every series is exported on Ray's interval, each replica's on its own: wait for each one
        # asserted below (the limit's name alone can be there from another model's replica)
        named = all(re.search(rf"^{name}\{{", text, re.M) for name in EXPECTED_METRICS)
        per_model = re.search(gan_invalid, text) is not None and re.search(limit, text, re.M) is not None
        return named and 'steps_band="10-49"' in text and per_model

    text = wait_for_metric(server, all_present)
    for name, labels in EXPECTED_METRICS.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
        found = set(re.findall(r'(\w+)="', line))
        assert labels <= found, f"{name} has labels {found}, expected {labels}"
    latency = exported_name(names.REQUEST_LATENCY)
    assert re.search(latency + r'_count\{[^}]*model="diffusion"[^}]*steps_band="10-49"', text)
    assert re.search(latency + r'_count\{[^}]*model="gan"[^}]*steps_band="none"', text)
    assert re.search(limit, text, re.M)
    assert re.search(gan_invalid, text)


def test_http_dashboard_and_metrics_ports_listen_on_loopback_only(server: Server) -> None:
    import psutil

    ports = {urlsplit(server.url).port, urlsplit(server.metrics_url).port}
    listening = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    found = {c.laddr.port: c.laddr.ip for c in listening if c.laddr.port in ports}
    assert set(found) == ports
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in found.values()), found
    # and every port that this session's Ray processes (children of this test process) opened
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    ray_ports = {(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in listening if c.pid in ours}
    assert len(ray_ports) > 3
    # HAProxy (the HTTP port, its stats and Prometheus listeners) is among them, on loopback too.
    assert len([p for p in ray_ports if p[2] == "haproxy"]) >= 3, ray_ports
    # The one exception, documented in docs/security.md: Ray Serve's inter-replica gRPC server,
    # bound to [::] in Ray's own code and guarded by Ray's cluster token.
    elsewhere = [p for p in ray_ports if p[0] not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert [p for p in elsewhere if not (p[0] == "::" and p[2].startswith("ray::ServeReplica"))] == []


def test_haproxy_runs_no_more_threads_than_the_machine_has_cores(server: Server) -> None:
    import psutil

    from deployments.local import haproxy_threads

    ours = [p for p in psutil.Process().children(recursive=True) if p.name() == "haproxy"]
    assert ours, "no HAProxy among this session's processes"
    assert {p.num_threads() for p in ours} == {haproxy_threads()}
    assert haproxy_threads() <= (os.cpu_count() or 1)


# Hostile and clumsy clients, over the real path (HAProxy, then the model replica).


def test_deep_nesting_and_huge_integers_are_a_422_not_a_500(server: Server) -> None:
    url = f"{server.url}/v1/models/gan/generate"
    for raw in (b"[" * 60_000, b'{"seed": ' + b"9" * 4301 + b"}"):
        resp = requests.post(url, data=raw, timeout=30)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "body", resp.text[:200]


def test_wrong_types_are_a_422_naming_the_field_and_many_errors_stay_small(server: Server) -> None:
    for body, field in (({"label": True}, "label"), ({"n": "1"}, "n"), ({"truncation": 1e-300}, "truncation")):
        resp = generate(server, "gan", body)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text
    many = json.dumps({f"k{i}": 0 for i in range(6000)}, separators=(",", ":"))
    resp = requests.post(f"{server.url}/v1/models/gan/generate", data=many, timeout=30)
    assert resp.status_code == 422 and len(resp.content) < 1000


def test_large_headers_are_refused_without_reaching_the_model(server: Server) -> None:
    url = f"{server.url}/v1/models/gan/generate"
    resp = requests.post(url, json={"n": 1}, headers={"x-padding": "a" * 10_000}, timeout=30)
    assert resp.status_code == 431 and resp.json()["error"]["code"] == "headers_too_large"
    # Beyond HAProxy's 16 KiB buffer HAProxy itself refuses: the header is never buffered whole.
    huge = requests.post(url, json={"n": 1}, headers={"x-padding": "a" * 1_000_000}, timeout=30)
    assert huge.status_code in (400, 431)


def test_expect_100_continue_over_the_limit_gets_413_and_no_continue(server: Server) -> None:
    import socket

    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /v1/models/gan/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
        )
        first = s.recv(4096).split(b"\r\n", 1)[0]
    assert first.startswith(b"HTTP/1.1 413"), first


def test_a_trailing_slash_never_redirects_to_the_clients_host(server: Server) -> None:
    for path in ("/v1/models/", "/v1/models/gan/generate/", "/readyz/"):
        resp = requests.get(f"{server.url}{path}", headers={"Host": "evil.example"}, allow_redirects=False, timeout=10)
        assert not 300 <= resp.status_code < 400 and "location" not in resp.headers, (path, resp.status_code)


def test_a_request_no_idle_replica_could_finish_in_time_gets_a_definitive_answer(server: Server) -> None:
    """Never a 503 that a well-behaved client would retry forever: images, or a 422 that says
    the request's cost and what the replica takes."""
    assert generate(server, "diffusion", {"n": 2, "steps": 10}).status_code == 200  # the pace is measured
    resp = generate(server, "diffusion", {"n": 64, "steps": 1000, "seed": 1}, timeout=200)
    assert resp.status_code in (200, 422), resp.text[:300]
    if resp.status_code == 422:
        err = resp.json()["error"]
        assert err["code"] == "too_costly" and "64000 network rows" in err["message"]


def test_haproxy_waits_longer_than_the_request_deadline(server: Server) -> None:
    """The live HAProxy in front of this server: its server timeout exceeds genserve's request deadline,
    so a request still inside its deadline is never cut by the proxy (a 64-image, 1000-step request is
    refused as too costly on this machine, so the bound is shown on the configuration HAProxy runs)."""
    import re
    from pathlib import Path
    from urllib.parse import urlparse

    from service.settings import Settings

    port = urlparse(server.url).port
    configs = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if args and args[0].endswith(b"haproxy") and b"-f" in args:
            configs.add(Path(args[args.index(b"-f") + 1].decode()))
    live = [c.read_text() for c in configs if c.exists() and f":{port}" in c.read_text()]
    assert live, f"no running HAProxy configuration binds port {port}"
    (timeout,) = {int(t) for cfg in live for t in re.findall(r"timeout server (\d+)s", cfg)}
    assert timeout > Settings().request_timeout_s
