"""The routes beyond sampling over the shipped GAN and VAE, without Ray: validation (422 naming
the field), per-route body limits (413), routes a model lacks (404), and the answers' shape."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from deployments.routes import Images, catalog_app, model_app, stream_events
from service.cards import ModelCard
from service.errors import DeadlineExceeded
from service.images import decode_png, png_bytes
from service.inputs import MAX_IMAGE_BASE64_CHARS
from service.jobs import Job
from service.noise import image_rng
from service.registry import LoadedModel, load_model

SHIPPED = Path(__file__).resolve().parents[2] / "exported"
T = TypeVar("T")


class Backend:
    """A model replica's compute, in-process: the shipped model in a worker thread."""

    def __init__(self, name: str) -> None:
        self.model: LoadedModel = load_model(SHIPPED / name, device="cpu")

    @property
    def card(self) -> ModelCard:
        return self.model.card

    async def generate(self, job: Job, deadline: float, grid: bool) -> Images:
        raise AssertionError("not used here")

    async def compute(self, fn: Callable[[Callable[[], None]], T], deadline: float, route: str) -> T:
        def check() -> None:
            if time.time() > deadline:
                raise DeadlineExceeded("request passed its deadline")

        return await asyncio.to_thread(fn, check)


@pytest.fixture(scope="module")
def vae() -> TestClient:
    return TestClient(model_app(Backend("vae"), 120.0, lambda _: None), root_path="/v1/models/vae")


@pytest.fixture(scope="module")
def gan() -> TestClient:
    return TestClient(model_app(Backend("gan"), 120.0, lambda _: None), root_path="/v1/models/gan")


def digit_png(seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28, 1), dtype=np.uint8)
    img[6:22, 12:16] = 255  # a "1"
    img[rng.integers(0, 28, 5), rng.integers(0, 28, 5)] = 128
    return base64.b64encode(png_bytes(img)).decode("ascii")


def error(resp: Any, status: int, field: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    if field is not None:
        assert body["field"] == field, body
    return str(body["message"])


def test_score_gives_bounds_in_nats_and_bits_per_dim_the_same_for_the_same_seed(vae: TestClient) -> None:
    body = {"images": [digit_png(0), digit_png(1)], "k": 16, "seed": 3}
    r = vae.post("/v1/models/vae/score", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dims"] == 784 and out["label"] is None and [s["index"] for s in out["scores"]] == [0, 1]
    for s in out["scores"]:
        assert s["iwae"] < 0 and s["iwae_bits_per_dim"] == pytest.approx(-s["iwae"] / (784 * np.log(2)))
    assert vae.post("/v1/models/vae/score", json=body).json()["scores"] == out["scores"]
    labelled = vae.post("/v1/models/vae/score", json={**body, "label": 1}).json()
    assert labelled["label"] == 1 and labelled["scores"] != out["scores"]


def test_classify_answers_a_distribution_over_the_cards_labels(vae: TestClient) -> None:
    r = vae.post("/v1/models/vae/classify", json={"images": [digit_png()], "k": 8})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["labels"] == [str(i) for i in range(10)] and len(out["probabilities"][0]) == 10
    assert sum(out["probabilities"][0]) == pytest.approx(1.0)
    assert out["predicted"] == [int(np.argmax(out["probabilities"][0]))] and out["predicted"] == [1]


def test_encode_reconstruct_and_interpolate(vae: TestClient, gan: TestClient) -> None:
    enc = vae.post("/v1/models/vae/encode", json={"images": [digit_png()] * 3, "label": 1}).json()
    assert len(enc["mean"]) == 3 and len(enc["std"][0]) == 16 and min(enc["std"][0]) > 0
    rec = vae.post("/v1/models/vae/reconstruct", json={"images": [digit_png()], "grid": True}).json()
    assert decode_png(base64.b64decode(rec["images"][0])).shape == (28, 28, 1) and rec["grid_base64"]
    frames = vae.post(
        "/v1/models/vae/interpolate", json={"from_image": digit_png(0), "to_image": digit_png(1), "frames": 4}
    ).json()
    assert len(frames["images"]) == 4
    seeds = gan.post("/v1/models/gan/interpolate", json={"from_seed": 1, "to_seed": 2, "frames": 6, "label": 3})
    assert seeds.status_code == 200 and len(seeds.json()["images"]) == 6


def test_image_answers_come_in_the_format_asked_for(vae: TestClient, gan: TestClient) -> None:
    body = {"images": [digit_png(0), digit_png(1)], "label": 1, "grid": True}
    png = vae.post("/v1/models/vae/reconstruct", json=body).json()
    webp = vae.post("/v1/models/vae/reconstruct", json={**body, "output_format": "webp", "quality": 95}).json()
    assert (png["output_format"], webp["output_format"]) == ("png", "webp")
    for a, b in zip(png["images"] + [png["grid_base64"]], webp["images"] + [webp["grid_base64"]], strict=True):
        lossless, lossy = base64.b64decode(a), base64.b64decode(b)
        assert lossy[:4] == b"RIFF" and lossy[8:12] == b"WEBP"
        diff = decode_png(lossy)[:, :, :1].astype(int) - decode_png(lossless).astype(int)  # same pixels, near
        assert np.abs(diff).mean() < 6
    frames = gan.post("/v1/models/gan/interpolate", json={"from_seed": 1, "to_seed": 2, "frames": 3,
                                                          "output_format": "jpeg"}).json()  # fmt: skip
    assert frames["output_format"] == "jpeg" and all(
        base64.b64decode(f)[:3] == b"\xff\xd8\xff" for f in frames["images"]
    )
    refused = gan.post("/v1/models/gan/interpolate", json={"from_seed": 1, "to_seed": 2, "quality": 50})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "quality"


def test_a_stream_sends_previews_as_png_and_the_images_in_the_format_asked_for() -> None:
    png = png_bytes(np.full((28, 28, 1), 120, np.uint8))

    async def replica_events() -> Any:
        yield {"type": "preview", "step": 5, "pngs": [png]}
        yield {"type": "image", "index": 0, "png": png}
        yield {"type": "done", "seconds": 0.2, "queue_seconds": 0.05}

    async def collect() -> list[bytes]:
        return [e async for e in stream_events({"seed": 3, "total": 10}, replica_events(), "jpeg", 80)]

    events = [json.loads(e.split(b"data: ", 1)[1]) for e in asyncio.run(collect())]
    assert events[0]["output_format"] == "jpeg"
    assert base64.b64decode(events[1]["images"][0]) == png
    assert base64.b64decode(events[2]["image_base64"])[:3] == b"\xff\xd8\xff" and events[2]["seed"] == 3
    assert events[3]["timings"]["compute_seconds"] == pytest.approx(0.15)


def test_the_gan_has_no_encoder_routes_and_refuses_image_endpoints(gan: TestClient) -> None:
    assert gan.post("/v1/models/gan/score", json={"images": [digit_png()]}).status_code == 404
    r = gan.post("/v1/models/gan/interpolate", json={"from_image": digit_png(), "to_image": digit_png()})
    assert "no encoder" in error(r, 422)


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("score", {"images": []}, "images"),
        ("score", {"images": ["x" * (MAX_IMAGE_BASE64_CHARS + 1)]}, "images.0"),
        ("score", {"images": ["iVBORw0K"] * 65}, "images"),
        ("score", {"images": ["@@@"]}, "images.0"),
        ("score", {"images": ["aGVsbG8="]}, "images.0"),  # "hello": not an image
        ("score", {"images": [digit_png()], "k": 1025}, "k"),
        ("score", {"images": [digit_png()], "k": 0}, "k"),
        ("score", {"images": [digit_png()], "label": 10}, "label"),
        ("classify", {"images": [digit_png()], "seed": -1}, "seed"),
        ("encode", {"images": [digit_png()], "extra": 1}, "extra"),
        ("interpolate", {"from_seed": 1, "frames": 4}, "body"),
        ("interpolate", {"from_seed": 1, "to_seed": 2, "frames": 65}, "frames"),
    ],
)
def test_bad_inputs_are_a_422_naming_the_field(vae: TestClient, route: str, body: Any, field: str) -> None:
    error(vae.post(f"/v1/models/vae/{route}", json=body), 422, field)


def test_a_wrong_size_image_is_named_by_its_index(vae: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, format="PNG")
    small = base64.b64encode(buf.getvalue()).decode()
    message = error(vae.post("/v1/models/vae/score", json={"images": [digit_png(), small]}), 422, "images.1")
    assert "32x32" in message and "28x28" in message


def test_image_routes_take_the_bodies_their_inputs_need_and_no_more(vae: TestClient) -> None:
    rng = np.random.default_rng(0)
    noise = [base64.b64encode(png_bytes(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))).decode() for _ in range(64)]
    big = json.dumps({"images": noise, "k": 1}).encode()
    assert len(big) > 64 * 1024  # over the generate route's limit
    r = vae.post("/v1/models/vae/score", content=big)
    assert r.status_code == 200 and len(r.json()["scores"]) == 64
    huge = b'{"images": ["' + b"A" * (3 * 1024 * 1024) + b'"]}'
    error(vae.post("/v1/models/vae/score", content=huge), 413)
    generate_limit = b'{"n": 1, "pad": "' + b"A" * 70_000 + b'"}'
    error(vae.post("/v1/models/vae/generate", content=generate_limit), 413)  # generate keeps its 64 KiB


def test_the_catalog_documents_every_route_and_answers_for_models_without_one() -> None:
    cards = {n: Backend(n).card for n in ("gan", "vae")}

    async def probe(_: str) -> dict[str, str]:
        return {}

    c = TestClient(catalog_app(cards, {}, probe, lambda _: None))
    paths = c.get("/openapi.json").json()["paths"]
    for route in ("score", "classify", "encode", "reconstruct", "interpolate"):
        op = paths[f"/v1/models/{{name}}/{route}"]["post"]
        assert op["requestBody"]["content"]["application/json"]["examples"], route
    assert c.post("/v1/models/gan/score", json={}).status_code == 404
    assert c.post("/v1/models/vae/score", json={}).status_code == 503  # served, but no replica yet
    assert c.get("/v1/models/vae").json()["routes"] == [
        "/generate", "/interpolate", "/encode", "/reconstruct", "/score", "/classify",
    ]  # fmt: skip


class DiffusionBackend(Backend):
    """Records the jobs that image-to-image and inpainting hand to the scheduler."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.jobs: list[Job] = []

    async def generate(self, job: Job, deadline: float, grid: bool) -> Images:
        self.jobs.append(job)
        return Images([png_bytes(np.zeros((28, 28, 1), np.uint8))] * job.n, None, 0.0, 0.01)


def test_img2img_and_inpaint_hand_the_decoded_image_and_mask_to_the_scheduler() -> None:
    backend = DiffusionBackend("diffusion")
    c = TestClient(model_app(backend, 120.0, lambda _: None), root_path="/v1/models/diffusion")
    r = c.post("/v1/models/diffusion/img2img", json={"image": digit_png(), "strength": 0.5, "steps": 20, "n": 2})
    assert r.status_code == 200, r.text
    job = backend.jobs[-1]
    assert job.edit is not None and job.edit.strength == 0.5 and job.edit.mask is None and job.cost == 2 * 10
    assert job.edit.image.shape == (1, 28, 28) and job.edit.image.max() == 1.0  # the white stroke of the "1"
    mask = np.zeros((28, 28, 1), np.uint8)
    mask[:14] = 255
    mask_png = base64.b64encode(png_bytes(mask)).decode()
    r = c.post("/v1/models/diffusion/inpaint", json={"image": digit_png(), "mask": mask_png, "label": 1})
    assert r.status_code == 200, r.text
    job = backend.jobs[-1]
    assert job.edit is not None and job.edit.strength == 1.0 and job.edit.mask is not None
    assert job.edit.mask[0, :14].min() == 1.0 and job.edit.mask[0, 14:].max() == 0.0
    bad = {"image": digit_png(), "mask": base64.b64encode(png_bytes(np.zeros((8, 8, 1), np.uint8))).decode()}
    error(c.post("/v1/models/diffusion/inpaint", json=bad), 422, "mask")
    error(c.post("/v1/models/diffusion/img2img", json={"image": digit_png(), "strength": 0}), 422, "strength")
    error(c.post("/v1/models/diffusion/img2img", json={"strength": 0.5}), 422, "image")
    assert c.get("/v1/models/diffusion").json()["routes"] == ["/generate", "/interpolate", "/img2img", "/inpaint"]


def test_diffusion_interpolation_starts_each_frame_from_noise_between_the_two_seeds() -> None:
    backend = DiffusionBackend("diffusion")
    c = TestClient(model_app(backend, 120.0, lambda _: None), root_path="/v1/models/diffusion")
    body = {"from_seed": 3, "to_seed": 4, "frames": 5, "steps": 10, "label": 2}
    r = c.post("/v1/models/diffusion/interpolate", json=body)
    assert r.status_code == 200 and len(r.json()["images"]) == 5, r.text
    job = backend.jobs[-1]
    assert job.n == 5 and job.seed == 3 and job.initial is not None and job.initial.shape == (5, 1, 28, 28)
    first = image_rng(3, 0).standard_normal((1, 28, 28)).astype(np.float32)
    last = image_rng(4, 0).standard_normal((1, 28, 28)).astype(np.float32)
    assert np.array_equal(job.initial[0], first) and np.array_equal(job.initial[-1], last)
    error(
        c.post("/v1/models/diffusion/interpolate", json={**body, "frames": 64, "steps": 1000, "guidance": 2.0}),
        422,
        "body",
    )
    error(c.post("/v1/models/diffusion/interpolate", json={"to_seed": 4}), 422, "from_seed")


def test_a_step_conditioned_model_has_no_edit_routes() -> None:
    c = TestClient(model_app(DiffusionBackend("distilled"), 120.0, lambda _: None), root_path="/v1/models/distilled")
    assert c.post("/v1/models/distilled/img2img", json={"image": digit_png()}).status_code == 404
    assert c.post("/v1/models/distilled/interpolate", json={"from_seed": 1, "to_seed": 2}).status_code == 200
