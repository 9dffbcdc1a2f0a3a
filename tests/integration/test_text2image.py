"""A Stable-Diffusion-layout pipeline folder served by real Ray Serve: its own application, its
replica its HTTP edge behind HAProxy, requests with different prompts sharing UNet calls, and
the same pixels over HTTP as the library gives in-process (which the parity test ties to
diffusers' own pipeline). The folder is the tiny random-weight reference, built here in seconds,
in a model directory of its own beside the shipped models' server."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from service.images import decode_png, encode_pngs
from service.jobs import DiffusionJob
from service.registry import load_model
from service.text2image import TextToImage
from tests.integration.conftest import Server
from training.sd_layout import tiny_reference

pytestmark = pytest.mark.integration
NAME = "tiny-sd"


@pytest.fixture(scope="module")
def model_dir(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ray import serve

    from deployments.app import model_app_name, model_application, model_route_prefix
    from deployments.local import replica_ready
    from service.cards import load_card
    from service.settings import Settings

    root = tmp_path_factory.mktemp("pipelines")
    tiny_reference(root / NAME)
    app = model_application(load_card(root / NAME), Settings(model_dir=root))
    serve.run(app, name=model_app_name(NAME), route_prefix=model_route_prefix(NAME), blocking=False)
    replica_ready(NAME, timeout_s=120)
    yield root
    serve.delete(model_app_name(NAME))


def generate(server: Server, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{NAME}/generate", json=body, timeout=120)


def pixels(resp: requests.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.stack([decode_png(base64.b64decode(im["image_base64"])) for im in resp.json()["images"]])


def in_process(model_dir: Path, jobs: list[DiffusionJob]) -> list[np.ndarray]:
    """The library's images for `jobs`, as the replica encodes them (PNG, decoded back)."""
    model = load_model(model_dir / NAME, device="cpu")
    assert model.pipeline is not None

    async def go() -> list[np.ndarray]:
        service = TextToImage(model.pipeline)
        try:
            return [r.images for r in await asyncio.gather(*(service.generate(j) for j in jobs))]
        finally:
            await service.close()

    out = []
    for images in asyncio.run(go()):
        pngs, _ = encode_pngs(images, (0.0, 1.0))
        out.append(np.stack([decode_png(p) for p in pngs]))
    return out


BODIES = [
    {"prompt": "a red apple on a table", "n": 2, "seed": 5, "steps": 8, "sampler": "ddim"},
    {"prompt": "dog face", "negative_prompt": "green heart", "n": 1, "seed": 6, "steps": 12, "guidance": 3.0},
    {"prompt": "sun behind large cloud", "n": 3, "seed": 7, "steps": 4, "guidance": 1.0, "height": 32, "width": 48},
]


def job_of(body: dict[str, Any]) -> DiffusionJob:
    size = (body["height"], body["width"]) if "height" in body else None
    return DiffusionJob(seed=body["seed"], n=body["n"], steps=body["steps"], sampler=body.get("sampler", "dpmpp_2m"),
                        guidance=body.get("guidance", 7.5), prompt=body["prompt"],
                        negative_prompt=body.get("negative_prompt", ""), size=size)  # fmt: skip


def test_the_model_describes_itself(server: Server, model_dir: Path) -> None:
    info = requests.get(f"{server.url}/v1/models/{NAME}", timeout=30).json()
    assert info["family"] == "text2image" and info["routes"] == ["/generate"]
    assert info["image_shape"] == [3, 64, 64] and info["provider"] == "CPUExecutionProvider"


def test_concurrent_prompts_over_http_equal_the_library(server: Server, model_dir: Path) -> None:
    with ThreadPoolExecutor(len(BODIES)) as pool:
        got = [pixels(r) for r in pool.map(lambda b: generate(server, b), BODIES)]
    want = in_process(model_dir, [job_of(b) for b in BODIES])
    for body, g, w in zip(BODIES, got, want, strict=True):
        assert g.shape == w.shape, body
        assert np.array_equal(g, w), body
    assert got[0].shape == (2, 64, 64, 3) and got[2].shape == (3, 32, 48, 3)
    alone = pixels(generate(server, BODIES[1]))
    assert np.array_equal(alone, got[1]), "the same seed gives the same pixels alone or batched"


def test_the_python_client_sends_prompts(server: Server, model_dir: Path) -> None:
    from genserve_client import Client

    with Client(server.url) as client:
        result = client.generate(NAME, prompt="dog face", negative_prompt="green heart", n=2, seed=6, steps=12,
                                 guidance=3.0, height=32, width=32)  # fmt: skip
    arrays = result.arrays()
    assert arrays.shape == (2, 32, 32, 3) and result.seed == 6


def test_a_stream_previews_decoded_images_then_the_plain_requests_pngs(server: Server, model_dir: Path) -> None:
    from tests.integration.test_streaming import events

    body = {"prompt": "dog face", "n": 2, "seed": 9, "steps": 12, "guidance": 3.0, "height": 32, "width": 48}
    with requests.post(
        f"{server.url}/v1/models/{NAME}/generate", json=body | {"preview_every": 4},
        headers={"Accept": "text/event-stream"}, stream=True, timeout=120,
    ) as resp:  # fmt: skip
        assert resp.status_code == 200, resp.text
        seen = list(events(resp))
    assert [d["step"] for k, d in seen if k == "progress"] == list(range(1, 13))
    previews = [d for k, d in seen if k == "preview"]
    assert [p["step"] for p in previews] == [4, 8]
    for p in previews:  # through the VAE decoder, as the final images: pixels, not 4-channel latents
        shown = np.stack([decode_png(base64.b64decode(im)) for im in p["images"]])
        assert shown.shape == (2, 32, 48, 3)
    streamed = [d["image_base64"] for k, d in seen if k == "image"]
    assert streamed == [im["image_base64"] for im in generate(server, body).json()["images"]]


def test_the_cli_draws_a_prompt_into_files_with_a_progress_bar(server: Server, model_dir: Path, tmp_path: Path) -> None:
    from genserve_client.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(["generate", NAME, "--prompt", "dog face", "--negative-prompt", "green heart", "-n", "2",
                 "--seed", "6", "--steps", "12", "--guidance", "3", "--height", "32", "--width", "48",
                 "--out", str(tmp_path), "--url", server.url], out, err)  # fmt: skip
    assert code == 0, err.getvalue()
    files = sorted(tmp_path.glob(f"{NAME}-6-*.png"))
    assert out.getvalue().splitlines()[:2] == [str(f) for f in files] and len(files) == 2
    assert err.getvalue().strip().endswith("step 12/12"), "streamed, with progress"
    body = {"prompt": "dog face", "negative_prompt": "green heart", "n": 2, "seed": 6, "steps": 12, "guidance": 3.0,
            "height": 32, "width": 48}  # fmt: skip
    want = pixels(generate(server, body))
    got = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert got.shape == (2, 32, 48, 3) and np.array_equal(got, want)
    listed = io.StringIO()
    assert main(["models", "--url", server.url], listed, err) == 0
    # The catalog lists the shipped models (this test's pipeline is deployed beside them)
    assert "emoji-text (text2image, 32x32x3, prompts, sides multiple of 8 up to 64" in listed.getvalue()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"n": 1}, "prompt"),
        ({"prompt": "x", "height": 40}, "height"),
        ({"prompt": "x", "label": 3}, "label"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": 7}, "prompt"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(server: Server, model_dir: Path, body: dict[str, Any], field: str) -> None:
    resp = generate(server, body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field
