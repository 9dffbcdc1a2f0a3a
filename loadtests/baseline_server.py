"""The peer a user would write alone: FastAPI + ONNX Runtime, one network call per request.

No batching across requests, no scheduler: each request runs its own images through the
session (a diffusion request loops over its steps at batch n), encodes PNGs and answers with
genserve's route and JSON shape, so the same load driver measures both. ONNX Runtime keeps its
defaults (threads = cores), as a user's would. `--empty` answers without model work: the
plain-uvicorn ceiling for this route shape.

    python -m loadtests.baseline_server --model-dir exported --port 8100 [--empty]
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from service.cards import ModelCard, load_card
from service.generators import job_latents
from service.images import encode_pngs, png_bytes
from service.jobs import LatentJob
from service.samplers import make_plan, x0_from_output
from service.schedules import alphas_cumprod_for, betas_for


class Body(BaseModel):
    n: int = 1
    seed: int = 0
    label: int | None = None
    steps: int = 20
    sampler: str = "dpmpp_2m"


class PlainModel:
    def __init__(self, folder: Path) -> None:
        self.card: ModelCard = load_card(folder)
        self.session = ort.InferenceSession(str(folder / self.card.onnx.file), providers=["CPUExecutionProvider"])
        self.abar: np.ndarray | None = None
        if self.card.schedule is not None:
            s = self.card.schedule
            self.abar = alphas_cumprod_for(betas_for(s.beta_schedule, s.num_train_timesteps, s.beta_start, s.beta_end))

    def generate(self, b: Body) -> np.ndarray:
        roles, card = self.card.onnx.inputs, self.card
        label = b.label if b.label is not None else (card.null_label or 0)
        labels = np.full(b.n, label, np.int64)
        if self.abar is None:
            assert card.latent_dim is not None
            z = job_latents(LatentJob(seed=b.seed, n=b.n, label=b.label), card.latent_dim)
            return np.asarray(self.session.run([card.onnx.output], {roles["latent"]: z, roles["label"]: labels})[0])
        assert card.schedule is not None
        plan = make_plan(b.sampler, b.steps, self.abar)  # type: ignore[arg-type]
        rng = np.random.default_rng(b.seed)
        x = rng.standard_normal((b.n, *card.image_shape)).astype(np.float32)
        x0_prev = np.zeros_like(x)
        for i in range(plan.num_steps):
            t = np.full(b.n, plan.timesteps[i], np.float32)
            feeds = {roles["sample"]: x, roles["timestep"]: t, roles["label"]: labels}
            out = self.session.run([card.onnx.output], feeds)[0]
            x0 = x0_from_output(out, x, plan.alpha[i], plan.sigma[i], card.schedule.prediction_type)
            z = rng.standard_normal(x.shape).astype(np.float32) if plan.d[i] else np.zeros_like(x)
            x, x0_prev = (plan.a[i] * x + plan.b[i] * x0 + plan.c[i] * x0_prev + plan.d[i] * z).astype(np.float32), x0
        return x


def make_app(model_dir: Path, empty: bool = False) -> FastAPI:
    app = FastAPI()
    models = (
        {} if empty else {p.name: PlainModel(p) for p in sorted(model_dir.iterdir()) if (p / "model.json").exists()}
    )
    blank = base64.b64encode(png_bytes(np.zeros((28, 28, 1), np.uint8))).decode("ascii")

    @app.post("/v1/models/{name}/generate")
    def generate(name: str, body: Body) -> dict[str, Any]:  # sync: FastAPI runs it in its thread pool
        if empty:
            return {
                "model": name,
                "images": [{"image_base64": blank, "seed": body.seed, "index": i} for i in range(body.n)],
            }
        model = models.get(name)
        if model is None:
            raise HTTPException(404, f"no model {name!r}")
        pngs, _ = encode_pngs(model.generate(body), model.card.image.value_range)
        images = [
            {"image_base64": base64.b64encode(p).decode("ascii"), "seed": body.seed, "index": i}
            for i, p in enumerate(pngs)
        ]
        return {"model": name, "images": images}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("exported"))
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--empty", action="store_true", help="answer without model work")
    args = parser.parse_args()
    uvicorn.run(make_app(args.model_dir, args.empty), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
