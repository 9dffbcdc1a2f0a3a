"""Scoring, classifying, encoding and interpolating through real Ray Serve and HAProxy, with the
shipped GAN and VAE: each route, its bad inputs, and the same bytes alone and amid other traffic."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from service.images import decode_png, png_bytes
from tests.integration.conftest import Server
from tests.integration.test_serve import classify, generate, images_of

pytestmark = pytest.mark.integration


DIGIT = base64.b64encode(png_bytes(np.full((28, 28, 1), 255, np.uint8))).decode("ascii")
SMALL = base64.b64encode(png_bytes(np.full((8, 8, 1), 255, np.uint8))).decode("ascii")  # not the model's size


def post(server: Server, model: str, route: str, body: Any, timeout: float = 120) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/{route}", json=body, timeout=timeout)


def pngs(images: np.ndarray) -> list[str]:
    return [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]


@pytest.fixture(scope="module")
def digits(server: Server) -> tuple[list[str], np.ndarray]:
    """Sixteen diffusion digits, labels 0-9 then 0-5, as PNG uploads (a model scores another's images)."""
    labels = [i % 10 for i in range(16)]
    images = np.concatenate(
        [
            images_of(generate(server, "diffusion", {"n": 1, "label": y, "seed": 40 + i, "steps": 10}))
            for i, y in enumerate(labels)
        ]
    )
    return pngs(images), np.array(labels)


def test_score_and_classify_are_deterministic_alone_and_amid_other_traffic(
    server: Server, digits: tuple[list[str], np.ndarray]
) -> None:
    images, labels = digits
    body = {"images": images, "k": 32, "seed": 9}
    alone = post(server, "vae", "score", body)
    assert alone.status_code == 200, alone.text
    with ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(generate, server, "vae", {"n": 16, "seed": i}) for i in range(12)]
        busy = pool.submit(post, server, "vae", "score", body)
        assert all(f.result().status_code == 200 for f in noise)
        assert busy.result().json()["scores"] == alone.json()["scores"]  # timings aside, the same answer
    cls = post(server, "vae", "classify", {"images": images, "k": 32})
    assert cls.status_code == 200, cls.text
    assert (
        post(server, "vae", "classify", {"images": images, "k": 32}).json()["probabilities"]
        == cls.json()["probabilities"]
    )
    predicted = np.array(cls.json()["predicted"])
    assert (predicted == labels).mean() >= 0.8, (predicted, labels)  # the VAE reads the diffusion model's digits


def test_reconstruct_keeps_the_digit_and_interpolation_starts_at_the_seeds_image(
    server: Server, digits: tuple[list[str], np.ndarray]
) -> None:
    images, labels = digits
    rec = post(server, "vae", "reconstruct", {"images": images[:10], "label": None})
    assert rec.status_code == 200, rec.text
    out = np.stack([decode_png(base64.b64decode(s)) for s in rec.json()["images"]])
    assert (classify(server, out) == labels[:10]).mean() >= 0.8
    for model in ("gan", "vae", "diffusion"):
        frames = post(server, model, "interpolate", {"from_seed": 5, "to_seed": 6, "frames": 5, "label": 2})
        assert frames.status_code == 200, frames.text
        got = [decode_png(base64.b64decode(f)) for f in frames.json()["images"]]
        for seed, frame in ((5, got[0]), (6, got[-1])):
            want = images_of(generate(server, model, {"n": 1, "seed": seed, "label": 2}))[0]
            assert np.array_equal(frame, want), (model, seed)
    enc = post(server, "vae", "encode", {"images": images[:2]})
    assert enc.status_code == 200 and len(enc.json()["mean"][0]) == 16
    assert post(server, "vae", "encode", {"images": images[:2]}).json()["mean"] == enc.json()["mean"]
    again = post(server, "vae", "reconstruct", {"images": images[:10], "label": None})
    assert again.json()["images"] == rec.json()["images"]


@pytest.mark.parametrize(
    ("model", "route", "body", "status", "field"),
    [
        ("vae", "score", {"images": ["aGVsbG8="]}, 422, "images.0"),
        ("vae", "score", {"images": ["iVBORw0K"] * 65}, 422, "images"),
        ("vae", "classify", {"images": ["iVBORw0K"], "k": 5000}, 422, "k"),
        ("vae", "interpolate", {"from_seed": 1, "to_seed": 2, "frames": 1}, 422, "frames"),
        ("gan", "score", {"images": ["iVBORw0K"]}, 404, None),
        ("vae", "encode", {"images": []}, 422, "images"),
        ("vae", "reconstruct", {"images": ["@@@"]}, 422, "images.0"),
        ("gan", "interpolate", {"from_image": "aGVsbG8=", "to_image": "aGVsbG8="}, 422, "body"),
        ("diffusion", "img2img", {"image": "aGVsbG8="}, 422, "image"),
        ("diffusion", "img2img", {"image": SMALL, "strength": 0.5}, 422, "image"),
        ("diffusion", "inpaint", {"image": DIGIT, "mask": SMALL}, 422, "mask"),
        ("diffusion", "inpaint", {"image": DIGIT}, 422, "mask"),
        ("diffusion", "interpolate", {"from_seed": 1, "to_seed": 2, "frames": 65}, 422, "frames"),
        ("distilled", "img2img", {"image": DIGIT}, 404, None),
    ],
)
def test_bad_inputs_get_a_clear_4xx(
    server: Server, model: str, route: str, body: Any, status: int, field: str | None
) -> None:
    r = post(server, model, route, body)
    assert r.status_code == status, r.text
    if field is not None:
        assert r.json()["error"]["field"] == field


def test_an_image_body_over_its_routes_limit_is_a_413(server: Server) -> None:
    r = requests.post(
        f"{server.url}/v1/models/vae/score",
        data=b'{"images": ["' + b"A" * (3 * 1024 * 1024) + b'"]}',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413, r.text


def test_img2img_at_strength_one_is_the_plain_sample_and_inpainting_keeps_the_unmasked_pixels(
    server: Server, digits: tuple[list[str], np.ndarray]
) -> None:
    images, _ = digits
    plain = generate(server, "diffusion", {"n": 2, "seed": 21, "steps": 10, "label": 6})
    full = post(
        server,
        "diffusion",
        "img2img",
        {"image": images[3], "strength": 1.0, "n": 2, "seed": 21, "steps": 10, "label": 6},
    )
    assert np.array_equal(images_of(full), images_of(plain))
    mask = np.zeros((28, 28, 1), np.uint8)
    mask[:14] = 255  # regenerate the top half
    body = {"image": images[3], "mask": pngs(mask[None])[0], "n": 4, "seed": 8, "steps": 20, "label": 3}
    with ThreadPoolExecutor(6) as pool:  # amid other diffusion traffic, which shares the steps
        noise = [pool.submit(generate, server, "diffusion", {"n": 4, "seed": i, "steps": 30}) for i in range(6)]
        busy = pool.submit(post, server, "diffusion", "inpaint", body)
        assert all(f.result().status_code == 200 for f in noise)
        busy_images = images_of(busy.result())
    alone = images_of(post(server, "diffusion", "inpaint", body))
    assert np.array_equal(busy_images, alone)
    source = decode_png(base64.b64decode(images[3]))
    assert (alone[:, 14:] == source[None, 14:]).all()  # the kept half, pixel for pixel
    edited = images_of(post(server, "diffusion", "img2img", {"image": images[3], "strength": 0.3, "seed": 2}))
    assert np.abs(edited[0].astype(int) - source.astype(int)).mean() < 30
