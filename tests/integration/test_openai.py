"""OpenAI's own Python SDK against genserve on real Ray Serve: only the base URL changes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from service.images import decode_png
from tests.integration.conftest import Server
from tests.integration.test_serve import classify

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-without-GENSERVE_API_KEYS", max_retries=0)


def test_models_list_and_retrieve(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"gan", "vae", "diffusion", "distilled"} <= set(ids)
    assert client.models.retrieve("diffusion").id == "diffusion"


def test_images_generate_draws_the_digit_the_prompt_names(client: OpenAI, server: Server) -> None:
    resp = client.images.generate(
        model="diffusion", prompt="a handwritten seven", n=4, extra_body={"steps": 10, "seed": 3}
    )
    assert resp.data is not None and len(resp.data) == 4 and resp.size == "28x28"
    images = np.stack([decode_png(base64.b64decode(im.b64_json or "")) for im in resp.data])
    assert (classify(server, images) == 7).mean() >= 0.75
    again = client.images.generate(model="diffusion", prompt="7", n=4, extra_body={"steps": 10, "seed": 3})
    assert [im.b64_json for im in again.data or []] == [im.b64_json for im in resp.data]  # same seed, same bytes
    gan = client.images.generate(model="gan", prompt="two", output_format="jpeg")
    assert base64.b64decode((gan.data or [])[0].b64_json or "")[:3] == b"\xff\xd8\xff"


def test_errors_reach_the_sdk_as_its_own_exceptions(client: OpenAI) -> None:
    with pytest.raises(BadRequestError, match="names none of"):
        client.images.generate(model="diffusion", prompt="a cat on a skateboard")
    with pytest.raises(BadRequestError, match="b64_json"):
        client.images.generate(model="diffusion", prompt="3", response_format="url")
    with pytest.raises(NotFoundError):
        client.images.generate(model="dall-e-3", prompt="3")


def test_streaming_gives_partial_images_then_the_image_a_plain_request_gives(client: OpenAI) -> None:
    extra = {"steps": 12, "seed": 9}
    events = list(
        client.images.generate(model="diffusion", prompt="five", stream=True, partial_images=2, extra_body=extra)
    )
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    plain = client.images.generate(model="diffusion", prompt="five", extra_body=extra)
    assert events[-1].b64_json == (plain.data or [])[0].b64_json
    assert events[0].b64_json != events[-1].b64_json  # a preview, not the image


def test_edits_through_the_sdk(client: OpenAI, server: Server) -> None:
    plain = client.images.generate(model="diffusion", prompt="8", n=1, extra_body={"steps": 10, "seed": 21})
    digit = base64.b64decode((plain.data or [])[0].b64_json or "")
    same = client.images.edit(
        model="diffusion", image=("d.png", digit, "image/png"), prompt="8",
        extra_body={"strength": 1.0, "steps": 10, "seed": 21},
    )  # fmt: skip
    assert (same.data or [])[0].b64_json == (plain.data or [])[0].b64_json  # strength 1: the plain sample
    edited = client.images.edit(
        model="diffusion",
        image=("d.png", digit, "image/png"),
        prompt="3",
        extra_body={"strength": 0.8, "guidance": 3.0},
    )
    assert classify(server, np.stack([decode_png(base64.b64decode((edited.data or [])[0].b64_json or ""))]))[0] == 3
