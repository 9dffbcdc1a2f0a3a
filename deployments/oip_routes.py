"""The Open Inference Protocol (KServe v2) on the catalog: server and model metadata, liveness
and readiness, and `POST /v2/models/{name}/infer` (JSON and the binary tensor data extension).

As with OpenAI's route, the catalog validates an infer request against the model's own schema
and hands the job to the model's replicas through a deployment handle (`Forward`). Errors are
the protocol's `{"error": "message"}`, with genserve's code in X-Error-Code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from deployments.http import ERROR_CODE_HEADER, parse_request
from deployments.openai_routes import Forward
from service import oip
from service.cards import ModelCard
from service.errors import GenserveError, ModelNotFound, Overloaded
from service.images import decode_png
from service.schemas import REQUEST_SCHEMAS
from service.settings import Limits

VERSION = "0.2.0"
ReadyProbe = Callable[[str], Awaitable[dict[str, str]]]


def oip_error(e: GenserveError) -> JSONResponse:
    status = 400 if e.status == 422 else e.status
    headers = {ERROR_CODE_HEADER: e.reason}
    if isinstance(e, Overloaded):
        headers["Retry-After"] = str(max(1, round(e.retry_after)))
    return JSONResponse({"error": e.message}, status_code=status, headers=headers)


def model_metadata(card: ModelCard) -> dict[str, Any]:
    c, h, w = card.image_shape
    scalar = [{"name": n, "datatype": "INT64", "shape": [1]} for n in oip.SCALAR_INPUTS]
    return {
        "name": card.name,
        "versions": ["1"],
        "platform": f"genserve-{card.family}",
        "inputs": scalar,
        "outputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, h, w, c]}],
        "parameters": {"labels": card.labels, "family": card.family, "accepts": list(oip.PARAMETERS)},
    }


def add_oip_routes(
    app: FastAPI, cards: dict[str, ModelCard], forward: Forward, probe: ReadyProbe, timeout_s: float
) -> None:
    limits = Limits()

    def card_of(name: str) -> ModelCard:
        card = cards.get(name)
        if card is None:
            raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
        return card

    async def ready(name: str) -> bool:
        try:
            await asyncio.wait_for(probe(name), timeout=5.0)
            return True
        except Exception:
            return False

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "genserve", "version": VERSION, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready() -> JSONResponse:
        ok = all(await asyncio.gather(*(ready(n) for n in cards)))
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> JSONResponse:
        try:
            return JSONResponse(model_metadata(card_of(name)))
        except GenserveError as e:
            return oip_error(e)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        try:
            card_of(name)
        except GenserveError as e:
            return oip_error(e)
        ok = await ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(name: str, request: Request) -> Response:
        deadline = time.time() + timeout_s
        try:
            card = card_of(name)
            body, binary = oip.split_body(await request.body(), request.headers.get(oip.HEADER))
            generate = oip.generate_body(body, oip.input_tensors(body, binary))
            job = parse_request(json.dumps(generate).encode(), REQUEST_SCHEMAS[card.family], card, limits).to_job()
            pngs, _ = await forward(card.name, job, deadline)
        except GenserveError as e:
            return oip_error(e)
        images = np.stack([decode_png(p) for p in pngs])
        output: dict[str, Any] = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
        head: dict[str, Any] = {"model_name": card.name, "model_version": "1", "outputs": [output]}
        if isinstance(body.get("id"), str):
            head["id"] = body["id"]
        if not oip.wants_binary(body):
            output["data"] = images.reshape(-1).tolist()
            return JSONResponse(head)
        blob = images.tobytes()
        output["parameters"] = {"binary_data_size": len(blob)}
        header = json.dumps(head).encode()
        return Response(
            header + blob,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    app.post("/v2/models/{name}/infer")(infer)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(name: str, version: str, request: Request) -> Response:
        if version != "1":
            return oip_error(ModelNotFound(f"model {name!r} has version 1 only"))
        return await infer(name, request)
