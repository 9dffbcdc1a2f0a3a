"""The Triton peer: the same ONNX models behind Triton's dynamic batcher, through PyTriton.

Runs in its own environment (`make bench` builds `.venv-pytriton` from Debian's python3:
PyTriton's Python-backend stub links the system libpython, so the interpreter must match it).
Each request row is one image (seed, label, and for diffusion the step count); Triton's dynamic
batcher stacks rows from concurrent requests up to 64 and the bound function runs them with
genserve's own library (diffusion: rows grouped by step count, each group run to its last
step: request-level batching). Answers carry base64 PNGs, as genserve's do.

    PYTHONPATH=. .venv-pytriton/bin/python -m loadtests.triton_server --http-port 8200
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import threading
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from service.generators import generate_latent
from service.images import encode_pngs
from service.jobs import DiffusionJob, LatentJob
from service.registry import LoadedModel, load_model
from service.scheduler import StepScheduler

MAX_BATCH = 64


def _b64(pngs: list[bytes]) -> np.ndarray:
    return np.array([[base64.b64encode(p)] for p in pngs], dtype=object)


def latent_fn(model: LoadedModel):  # type: ignore[no-untyped-def]
    @batch  # type: ignore[untyped-decorator]
    def infer(seed: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
        jobs = [LatentJob(seed=int(s), n=1, label=int(lb)) for s, lb in zip(seed[:, 0], label[:, 0], strict=True)]
        images = np.concatenate(generate_latent(model, jobs))
        pngs, _ = encode_pngs(images, model.card.image.value_range)
        return {"png": _b64(pngs)}

    return infer


def diffusion_fn(model: LoadedModel):  # type: ignore[no-untyped-def]
    # PyTriton calls `infer` from inside its own event loop; the sampling loop gets its own.
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def run(jobs: list[DiffusionJob]) -> np.ndarray:
        groups: dict[int, list[int]] = {}
        for k, job in enumerate(jobs):
            groups.setdefault(job.steps, []).append(k)
        out = np.zeros((len(jobs), *model.card.image_shape), np.float32)
        for members in groups.values():
            scheduler = StepScheduler(model, max_batch=10**6)
            results = await asyncio.gather(*(scheduler.submit(jobs[k]) for k in members))
            await scheduler.close()
            for k, res in zip(members, results, strict=True):
                out[k] = res.images[0]
        return out

    @batch  # type: ignore[untyped-decorator]
    def infer(seed: np.ndarray, label: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
        jobs = [
            DiffusionJob(seed=int(s), n=1, steps=int(st), label=int(lb))
            for s, lb, st in zip(seed[:, 0], label[:, 0], steps[:, 0], strict=True)
        ]
        images = asyncio.run_coroutine_threadsafe(run(jobs), loop).result()
        pngs, _ = encode_pngs(images, model.card.image.value_range)
        return {"png": _b64(pngs)}

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("exported"))
    parser.add_argument("--http-port", type=int, default=8200)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.http_port + 1,
        metrics_address="127.0.0.1",
        metrics_port=args.http_port + 2,
    )
    ints = [Tensor(name="seed", dtype=np.int64, shape=(1,)), Tensor(name="label", dtype=np.int64, shape=(1,))]
    out = [Tensor(name="png", dtype=bytes, shape=(1,))]
    batching = ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=5000))
    with Triton(config=config) as triton:
        for name in ("gan", "diffusion"):
            model = load_model(args.model_dir / name, device="cpu", intra_op_threads=args.threads)
            if model.card.family == "diffusion":
                inputs = [*ints, Tensor(name="steps", dtype=np.int64, shape=(1,))]
                triton.bind(name, diffusion_fn(model), inputs=inputs, outputs=out, config=batching)
            else:
                triton.bind(name, latent_fn(model), inputs=ints, outputs=out, config=batching)
        triton.serve()


if __name__ == "__main__":
    main()
