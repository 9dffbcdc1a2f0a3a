"""A colour model on the label path, served by real Ray Serve: the shipped `emoji-category`
(3 channels, 32x32, nine labels; a plain `diffusion` folder in `exported/`), on the session's
server. Its answers are RGB PNGs equal to the library's, and image-to-image takes RGB uploads.
(tests/training/test_emoji_eval.py trains, exports and measures the recipe on synthetic drawings.)"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest
import requests

from service.images import encode_pngs, png_bytes
from service.jobs import DiffusionJob
from service.registry import load_model
from service.scheduler import StepScheduler
from tests.integration.conftest import Server
from tests.integration.test_serve import generate, images_of
from training.emoji_data import CATEGORIES

pytestmark = pytest.mark.integration
NAME = "emoji-category"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "exported"


def test_the_model_describes_itself_in_colour(server: Server, model_dir: Path) -> None:
    info = requests.get(f"{server.url}/v1/models/{NAME}", timeout=30).json()
    assert info["family"] == "diffusion" and info["image_shape"] == [3, 32, 32]
    assert info["labels"] == [c.lower() for c in CATEGORIES]


def test_rgb_pngs_equal_the_librarys(server: Server, model_dir: Path) -> None:
    body = {"n": 3, "label": CATEGORIES.index("Food & Drink"), "seed": 11, "steps": 6, "guidance": 2.0}
    resp = generate(server, NAME, body)
    got = images_of(resp)
    assert got.shape == (3, 32, 32, 3)

    async def library() -> np.ndarray:
        scheduler = StepScheduler(load_model(model_dir / NAME, device="cpu"))
        try:
            job = DiffusionJob(seed=11, n=3, steps=6, sampler="dpmpp_2m", label=body["label"], guidance=2.0)
            return (await scheduler.submit(job)).images
        finally:
            await scheduler.close()

    pngs, _ = encode_pngs(asyncio.run(library()), (-1.0, 1.0))
    served = [im["image_base64"] for im in resp.json()["images"]]
    assert [base64.b64encode(p).decode() for p in pngs] == served, "the same PNG bytes"
    assert not np.array_equal(got[..., 0], got[..., 2]), "three channels, not grey copied"


def test_image_to_image_takes_an_rgb_upload(server: Server, model_dir: Path) -> None:
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[..., 0] = 255  # red
    upload = base64.b64encode(png_bytes(picture)).decode("ascii")
    body = {"image": upload, "strength": 0.2, "n": 2, "seed": 3, "steps": 10, "label": 0}
    resp = requests.post(f"{server.url}/v1/models/{NAME}/img2img", json=body, timeout=120)
    edited = images_of(resp)
    assert edited.shape == (2, 32, 32, 3)
    assert edited[..., 0].mean() > edited[..., 2].mean() + 50, "a light edit keeps the red"
