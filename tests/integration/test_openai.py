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
