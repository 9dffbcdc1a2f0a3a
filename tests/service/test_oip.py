"""Open Inference Protocol parsing: JSON and binary tensors to a genserve request, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service import oip
from service.errors import InvalidRequest


def binary_request(values: dict[str, int], **extra: object) -> tuple[bytes, str]:
    inputs = [{"name": k, "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}} for k in values]
    header = json.dumps({"inputs": inputs, **extra}).encode()
    tail = b"".join(np.array([v], np.int64).tobytes() for v in values.values())
    return header + tail, str(len(header))


def test_json_and_binary_inputs_give_the_same_request() -> None:
    as_json = {"inputs": [{"name": "seed", "datatype": "INT32", "shape": [1], "data": [7]},
                          {"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [[3]]}],
               "parameters": {"steps": 10, "sampler": "ddim", "binary_data_output": True}}  # fmt: skip
    body, tail = oip.split_body(json.dumps(as_json).encode(), None)
    got = oip.generate_body(body, oip.input_tensors(body, tail))
    assert got == {"seed": 7, "label": 3, "steps": 10, "sampler": "ddim"} and oip.wants_binary(body)
    raw, length = binary_request({"seed": 7, "label": 3}, parameters={"steps": 10, "sampler": "ddim"})
    body, tail = oip.split_body(raw, length)
    assert oip.generate_body(body, oip.input_tensors(body, tail)) == got
    assert not oip.wants_binary(body)


def test_label_minus_one_means_unconditional() -> None:
    body = {"inputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [-1]}]}
    assert oip.generate_body(body, oip.input_tensors(body, b"")) == {}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{"name": "seed", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [2], "data": [1]}]},
        {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [100000], "data": []}]},
        {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [2], "data": [1, 2]}]},
        {"inputs": [{"name": "prompt", "datatype": "INT64", "shape": [1], "data": [1]}]},
        {"inputs": "seed"},
        {"inputs": [{"datatype": "INT64", "shape": [1], "data": [1]}]},
    ],
)
def test_malformed_tensors_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        parsed, tail = oip.split_body(json.dumps(body).encode(), None)
        oip.generate_body(parsed, oip.input_tensors(parsed, tail))


def test_a_binary_size_or_header_length_that_does_not_fit_is_refused() -> None:
    raw, length = binary_request({"seed": 7})
    with pytest.raises(InvalidRequest, match="binary_data_size"):
        body, tail = oip.split_body(raw[:-1], length)
        oip.input_tensors(body, tail)
    with pytest.raises(InvalidRequest, match="inference-header-content-length"):
        oip.split_body(raw, str(len(raw) + 1))
    with pytest.raises(InvalidRequest, match="does not parse"):
        oip.split_body(b"[" * 60000, None)
