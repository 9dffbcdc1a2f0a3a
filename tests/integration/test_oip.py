"""Triton's own HTTP client (tritonclient) against genserve's Open Inference Protocol routes on
real Ray Serve: metadata, health, and infer in JSON and with binary tensor data."""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server
from tests.integration.test_serve import generate, images_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=urlsplit(server.url).netloc, network_timeout=120.0)


def scalars(binary: bool, **values: int) -> list[triton.InferInput]:
    out = []
    for name, value in values.items():
        tensor = triton.InferInput(name, [1], "INT64")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int64), binary_data=binary)
        out.append(tensor)
    return out


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("diffusion") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("diffusion")
    assert meta["outputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_gives_the_images_generate_gives(
    client: triton.InferenceServerClient, server: Server, binary: bool
) -> None:
    result = client.infer(
        "diffusion",
        scalars(binary, n=3, seed=11, label=4),
        outputs=[triton.InferRequestedOutput("images", binary_data=binary)],
        parameters={"steps": 10, "sampler": "ddim"},
    )
    images = result.as_numpy("images")
    assert images is not None and images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    want = images_of(generate(server, "diffusion", {"n": 3, "seed": 11, "label": 4, "steps": 10, "sampler": "ddim"}))
    assert np.array_equal(images, want)
    gan = client.infer("gan", scalars(binary, seed=2, label=-1)).as_numpy("images")
    assert gan is not None and gan.shape == (1, 28, 28, 1)


def test_bad_requests_are_errors_the_client_reports(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="steps"):
        client.infer("diffusion", scalars(True, seed=1), parameters={"steps": 5000})
    with pytest.raises(InferenceServerException, match="no model named"):
        client.infer("nope", scalars(True, seed=1))
