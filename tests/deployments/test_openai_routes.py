"""OpenAI's `POST /v1/images/generations` on the catalog, without Ray: prompts to labels, the
parameters OpenAI defines, genserve's own fields, OpenAI's error shape, and the job handed on."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from deployments.routes import catalog_app
from service.cards import load_card
from service.errors import InvalidRequest, Overloaded
from service.images import png_bytes
from service.jobs import DiffusionJob, Job, LatentJob
from service.openai_images import label_from_prompt

SHIPPED = Path(__file__).resolve().parents[2] / "exported"
CARDS = {n: load_card(SHIPPED / n) for n in ("gan", "vae", "diffusion", "distilled")}


@pytest.mark.parametrize(
    ("prompt", "label"),
    [("3", 3), ("three", 3), ("a handwritten seven", 7), ("Draw a 0, please", 0), ("", None), ("  ", None)],
)
def test_a_prompt_names_a_label_by_name_or_number_word(prompt: str, label: int | None) -> None:
    assert label_from_prompt(prompt, CARDS["diffusion"]) == label


def test_a_prompt_naming_no_label_or_several_is_refused_listing_the_labels() -> None:
    with pytest.raises(InvalidRequest, match="'0', '1'") as info:
        label_from_prompt("a cat on a skateboard", CARDS["diffusion"])
    assert info.value.field == "prompt"
    with pytest.raises(InvalidRequest, match="several"):
        label_from_prompt("a three or a seven", CARDS["diffusion"])


class Forwarded:
    def __init__(self, fail: Exception | None = None) -> None:
        self.jobs: list[tuple[str, Job]] = []
        self.fail = fail

    async def __call__(self, name: str, job: Job, deadline: float) -> tuple[list[bytes], float]:
        if self.fail is not None:
            raise self.fail
        self.jobs.append((name, job))
        return [png_bytes(np.full((28, 28, 1), 200, np.uint8))] * job.n, 0.05


async def no_probe(_: str) -> dict[str, str]:
    return {}


def client(forward: Forwarded) -> TestClient:
    return TestClient(catalog_app(CARDS, {}, no_probe, lambda _: None, forward))


def test_streaming_sends_partial_images_then_each_image_as_openai_events() -> None:
    png = png_bytes(np.full((28, 28, 1), 90, np.uint8))
    asked: list[tuple[str, int]] = []

    async def stream(name: str, job: Job, deadline: float, previews: int) -> Any:
        asked.append((name, previews))
        yield {"type": "accepted", "seed": job.seed, "label": job.label}
        for i in range(job.n):
            for nth in range(previews):
                yield {"type": "partial", "index": i, "step": 5 * (nth + 1), "partial_image_index": nth, "png": png}
        for i in range(job.n):
            yield {"type": "image", "index": i, "png": png}
        yield {"type": "done", "seconds": 0.1}

    app = catalog_app(CARDS, {}, no_probe, lambda _: None, Forwarded(), 120.0, stream)
    body = {"model": "diffusion", "prompt": "4", "n": 2, "stream": True, "partial_images": 2, "seed": 1}
    with TestClient(app).stream("POST", "/v1/images/generations", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds == ["image_generation.partial_image"] * 4 + ["image_generation.completed"] * 2
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1] and events[-1]["image_index"] == 1
    assert base64.b64decode(events[0]["b64_json"])[:4] == b"\x89PNG" and asked == [("diffusion", 2)]


def test_a_stream_the_model_refuses_is_an_http_error_not_an_event() -> None:
    r = TestClient(catalog_app(CARDS, {}, no_probe, lambda _: None, Forwarded())).post(
        "/v1/images/generations", json={"model": "diffusion", "prompt": "4", "stream": True}
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"


def test_generation_hands_the_model_its_own_job_and_answers_in_openai_shape() -> None:
    fwd = Forwarded()
    body = {"model": "diffusion", "prompt": "a handwritten seven", "n": 2, "steps": 10, "seed": 5, "user": "u1"}
    r = client(fwd).post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["created"] > 0 and out["size"] == "28x28" and out["output_format"] == "png" and len(out["data"]) == 2
    assert base64.b64decode(out["data"][0]["b64_json"])[:4] == b"\x89PNG"
    name, job = fwd.jobs[-1]
    assert name == "diffusion" and isinstance(job, DiffusionJob)
    assert (job.label, job.n, job.steps, job.seed, job.sampler) == (7, 2, 10, 5, "dpmpp_2m")
    r = client(fwd).post("/v1/images/generations", json={"model": "gan", "prompt": "", "truncation": 1.5})
    name, latent = fwd.jobs[-1]
    assert r.status_code == 200 and isinstance(latent, LatentJob) and latent.label is None and latent.truncation == 1.5


def test_jpeg_and_webp_are_transcoded() -> None:
    for fmt, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        body = {"model": "vae", "prompt": "2", "output_format": fmt, "output_compression": 80}
        r = client(Forwarded()).post("/v1/images/generations", json=body)
        data = base64.b64decode(r.json()["data"][0]["b64_json"])
        assert data.startswith(magic) and Image.open(io.BytesIO(data)).size == (28, 28)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "3"}, 404, "model"),
        ({"model": "diffusion", "prompt": "a cat"}, 400, "prompt"),
        ({"model": "diffusion", "prompt": "3", "response_format": "url"}, 400, "response_format"),
        ({"model": "diffusion", "prompt": "3", "size": "1024x1024"}, 400, "size"),
        ({"model": "diffusion", "prompt": "3", "n": 65}, 400, "n"),
        ({"model": "diffusion", "prompt": "3", "stream": True, "partial_images": 4}, 400, "partial_images"),
        ({"model": "diffusion", "prompt": "3", "steps": 5000}, 400, "steps"),
        ({"model": "gan", "prompt": "3", "steps": 20}, 400, "steps"),  # a GAN takes no steps
        ({"model": "distilled", "prompt": "3", "steps": 3}, 400, "steps"),
        ({"model": "diffusion", "prompt": "3", "colour": "red"}, 400, "colour"),
        ({"prompt": "3"}, 400, "model"),
    ],
)
def test_errors_use_openais_shape_and_name_the_parameter(body: dict[str, Any], status: int, param: str) -> None:
    fwd = Forwarded()
    r = client(fwd).post("/v1/images/generations", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"], err
    assert fwd.jobs == []


def test_a_full_model_is_a_503_with_retry_after_which_openai_clients_retry() -> None:
    r = client(Forwarded(fail=Overloaded("queue full", retry_after=3))).post(
        "/v1/images/generations", json={"model": "diffusion", "prompt": "3"}
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "overloaded"


def test_the_model_list_is_openais_list_with_genserves_fields() -> None:
    listing = client(Forwarded()).get("/v1/models").json()
    assert listing["object"] == "list"
    first = listing["data"][0]
    assert first["object"] == "model" and first["id"] == first["name"] and first["owned_by"] == "genserve"
    assert first["created"] > 0 and "labels" in first and "quality" in first


def png_file(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_edits_map_to_image_to_image_and_to_inpainting_with_openais_mask_rule() -> None:
    fwd = Forwarded()
    c = client(fwd)
    digit = png_file(np.full((28, 28), 255, np.uint8))
    r = c.post("/v1/images/edits", data={"model": "diffusion", "prompt": "eight", "strength": "0.5", "seed": "3"},
               files={"image": ("d.png", digit, "image/png")})  # fmt: skip
    assert r.status_code == 200, r.text
    _, job = fwd.jobs[-1]
    assert isinstance(job, DiffusionJob) and job.edit is not None and job.label == 8 and job.seed == 3
    assert job.edit.strength == 0.5 and job.edit.mask is None and job.edit.image.min() == 1.0
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:14, :, 3] = 0  # transparent top half: edit it
    r = c.post("/v1/images/edits", data={"model": "diffusion", "prompt": "8"},
               files={"image": ("d.png", digit, "image/png"), "mask": ("m.png", png_file(rgba, "RGBA"), "image/png")})  # fmt: skip
    assert r.status_code == 200, r.text
    _, job = fwd.jobs[-1]
    assert isinstance(job, DiffusionJob) and job.edit is not None and job.edit.strength == 1.0
    assert job.edit.mask is not None and job.edit.mask[0, :14].min() == 1 and job.edit.mask[0, 14:].max() == 0


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"model": "gan", "prompt": "8"}, "image", "model"),
        ({"model": "diffusion", "prompt": "8"}, None, "image"),
        ({"model": "diffusion", "prompt": "8", "strength": "0"}, "image", "strength"),
        ({"model": "diffusion", "prompt": "8"}, "opaque-mask", "mask"),
        ({"model": "distilled", "prompt": "8"}, "image", "model"),
    ],
)
def test_edit_errors_name_the_parameter(data: dict[str, str], files: str | None, param: str) -> None:
    digit = png_file(np.full((28, 28), 255, np.uint8))
    parts: dict[str, Any] = {"image": ("d.png", digit, "image/png")} if files else {}
    if files == "opaque-mask":
        parts["mask"] = ("m.png", png_file(np.full((28, 28), 255, np.uint8)), "image/png")
    r = client(Forwarded()).post("/v1/images/edits", data=data, files=parts or None)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
