"""The Open Inference Protocol (KServe v2, what Triton and MLServer speak): request tensors to a
genserve request, images to a UINT8 tensor; JSON and the binary tensor data extension.

An infer request carries optional one-element tensors `n`, `seed` and `label` (`label` -1: no
label) and genserve's sampling fields as request `parameters` (`steps`, `sampler`, `guidance`,
`eta`, `truncation`, `temperature`). The answer is one output, `images`, UINT8 [n, H, W, C].
With the binary extension (the `Inference-Header-Content-Length` header), tensor bytes follow
the JSON header, inputs and outputs alike (`binary_data_size` in each one's parameters).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.errors import InvalidRequest

HEADER = "inference-header-content-length"
DTYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
SCALAR_INPUTS = ("n", "seed", "label")
PARAMETERS = ("steps", "sampler", "guidance", "eta", "truncation", "temperature")
MAX_ELEMENTS = 16


def split_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON part of a request and the binary bytes after it (empty without the extension)."""
    if header_length is None:
        size = len(raw)
    elif header_length.isdigit() and int(header_length) <= len(raw):
        size = int(header_length)
    else:
        raise InvalidRequest(f"{HEADER} {header_length!r} is not a length within the body", field=HEADER)
    try:
        body = json.loads(raw[:size] or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"the request's JSON does not parse ({type(e).__name__})") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request must be a JSON object")
    return body, raw[size:]


def input_tensors(body: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    """Every input as a numpy array, JSON `data` or binary bytes in input order."""
    inputs = body.get("inputs", [])
    if not isinstance(inputs, list):
        raise InvalidRequest("inputs must be a list", field="inputs")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        where = f"inputs.{i}"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest(f"{where}: each input needs a name", field=where)
        name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
        if datatype not in DTYPES:
            raise InvalidRequest(f"{where}: datatype {datatype!r} is not a numeric tensor type", field=where)
        if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d <= MAX_ELEMENTS for d in shape):
            raise InvalidRequest(f"{where}: shape must be a list of small non-negative integers", field=where)
        count = int(np.prod(shape)) if shape else 1
        if count > MAX_ELEMENTS:
            raise InvalidRequest(f"{where}: at most {MAX_ELEMENTS} elements", field=where)
        dtype = np.dtype(DTYPES[datatype])
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise InvalidRequest(f"{where}: binary_data_size does not match its shape and the body", field=where)
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            data = spec.get("data")
            try:
                array = np.asarray(data, dtype=dtype).reshape(shape)
            except (TypeError, ValueError, OverflowError):
                raise InvalidRequest(
                    f"{where}: data does not fit datatype {datatype} and shape {shape}", field=where
                ) from None
        out[name] = array
    return out


def generate_body(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The equivalent body of the model's own `/generate` request."""
    unknown = set(tensors) - set(SCALAR_INPUTS)
    if unknown:
        raise InvalidRequest(
            f"unknown input(s) {sorted(unknown)}; inputs are {', '.join(SCALAR_INPUTS)}", field="inputs"
        )
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("parameters must be an object", field="parameters")
    out: dict[str, Any] = {}
    for name, array in tensors.items():
        if array.size != 1:
            raise InvalidRequest(f"input {name!r} must hold one value", field=name)
        value = array.reshape(-1)[0].item()
        if name == "label" and value == -1:
            continue  # -1: no label (unconditional)
        out[name] = int(value) if isinstance(value, int | bool) or float(value).is_integer() else value
    for name in PARAMETERS:
        if name in params:
            out[name] = params[name]
    return out


def wants_binary(body: dict[str, Any]) -> bool:
    """Whether the client asked for the images as binary data (request or output parameters)."""
    if (body.get("parameters") or {}).get("binary_data_output"):
        return True
    outputs = body.get("outputs") or []
    return any(isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs)
