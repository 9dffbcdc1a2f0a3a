"""`make bench-text2image`: text-to-image requests with mixed prompts, step counts and samplers,
step-level against request-level batching, side by side in one run on a shipped pipeline folder.

Open loop: at each offered rate, requests arrive as a Poisson process (seeded) for `--seconds`;
each draws a prompt from the model's training names, 10, 20 or 50 steps, DPM-Solver++ or DDIM,
guidance 1 or 3 (two UNet rows per image), 1 or 2 images. Both modes run the serving library
in-process (no HTTP: this isolates the batching policy):

- step-level: one `TextToImage`, as a replica runs it: every UNet call takes rows from every
  request in flight, and a request joins at the next step;
- request-level: the requests waiting when the engine is free form a batch, split into groups
  of equal steps and sampler, and each group runs to its last step before the next batch is
  formed (what `loadtests/variants.RequestLevelDiffusion` does behind Ray Serve's `@serve.batch`).

Reported per mode and rate: image-steps completed per second, p50/p95 latency, p50 per step
count, and the ratios step-level / request-level. The capacity (all requests at once, step-level)
sets the offered rates, as shares of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.jobs import DiffusionJob
from service.registry import load_model
from service.text2image import TextPipeline, TextToImage

STEPS = (10, 20, 50)
SAMPLERS = ("dpmpp_2m", "ddim")
GUIDANCE = (1.0, 3.0)
MAX_ROWS = 64  # UNet rows per call, both modes


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    job: DiffusionJob

    @property
    def work(self) -> int:
        """Image-steps: what the throughput counts."""
        return self.job.n * self.job.steps


def workload(prompts: list[str], rate: float, seconds: float, seed: int) -> list[Arrival]:
    rng = np.random.default_rng(seed)
    out: list[Arrival] = []
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / rate))
        if t >= seconds:
            return out
        job = DiffusionJob(
            seed=int(rng.integers(0, 2**31)),
            n=int(rng.choice((1, 2))),
            steps=int(rng.choice(STEPS)),
            sampler=str(rng.choice(SAMPLERS)),  # type: ignore[arg-type]
            guidance=float(rng.choice(GUIDANCE)),
            prompt=str(rng.choice(prompts)),
        )
        out.append(Arrival(t, job))


async def _replay(arrivals: list[Arrival], submit: Any) -> tuple[list[float], float]:
    """Submits each arrival at its time; per-request latencies and the time the last one ended."""
    t0 = time.perf_counter()

    async def one(a: Arrival) -> float:
        await asyncio.sleep(max(0.0, t0 + a.at - time.perf_counter()))
        start = time.perf_counter()
        await submit(a.job)
        return time.perf_counter() - start

    latencies = await asyncio.gather(*(one(a) for a in arrivals))
    return list(latencies), time.perf_counter() - t0


async def step_level(pipeline: TextPipeline, arrivals: list[Arrival]) -> tuple[list[float], float]:
    service = TextToImage(pipeline, max_batch=MAX_ROWS, max_queued_lanes=10**6)
    try:
        return await _replay(arrivals, service.generate)
    finally:
        await service.close()


async def request_level(pipeline: TextPipeline, arrivals: list[Arrival]) -> tuple[list[float], float]:
    waiting: asyncio.Queue[tuple[DiffusionJob, asyncio.Future[None]]] = asyncio.Queue()

    async def engine() -> None:
        while True:
            batch = [await waiting.get()]
            while not waiting.empty() and sum(j.n for j, _ in batch) < MAX_ROWS:
                batch.append(waiting.get_nowait())
            groups: dict[tuple[int, str], list[tuple[DiffusionJob, asyncio.Future[None]]]] = {}
            for job, done in batch:
                groups.setdefault((job.steps, job.sampler), []).append((job, done))
            for members in groups.values():  # one group after the other, each to its last step
                service = TextToImage(pipeline, max_batch=MAX_ROWS, max_queued_lanes=10**6)
                await asyncio.gather(*(service.generate(job) for job, _ in members))
                await service.close()
                for _, done in members:
                    done.set_result(None)

    async def submit(job: DiffusionJob) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await waiting.put((job, done))
        await done

    task = asyncio.create_task(engine())
    try:
        return await _replay(arrivals, submit)
    finally:
        task.cancel()


def summary(arrivals: list[Arrival], latencies: list[float], elapsed: float) -> dict[str, Any]:
    lat = np.array(latencies)
    by_steps = {
        str(s): round(float(np.median(lat[[a.job.steps == s for a in arrivals]])), 3)
        for s in STEPS
        if any(a.job.steps == s for a in arrivals)
    }
    return {
        "requests": len(arrivals),
        "image_steps_per_s": round(sum(a.work for a in arrivals) / elapsed, 1),
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p95_s": round(float(np.percentile(lat, 95)), 3),
        "p50_s_by_steps": by_steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="exported")
    ap.add_argument("--model", default="emoji-text")
    ap.add_argument("--seconds", type=float, default=40.0, help="arrivals per offered rate")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8], help="offered rates, as shares of capacity")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--out", default="docs/bench-text2image.md")
    args = ap.parse_args()

    from training.emoji_data import is_heldout, load_split  # the prompts: the training names

    prompts = [e.name for e in load_split().emoji if not is_heldout(e)]
    model = load_model(Path(args.model_dir) / args.model, device="cpu", intra_op_threads=args.threads)
    if model.pipeline is None:
        raise SystemExit(f"{args.model} is not a text-to-image model")
    pipeline = model.pipeline

    burst = [Arrival(0.0, a.job) for a in workload(prompts, 4.0, 12.0, seed=0)]
    asyncio.run(step_level(pipeline, burst[:8]))  # warm-up
    capacity: dict[str, Any] = {"requests": len(burst)}
    for mode, run in (("step_level", step_level), ("request_level", request_level)):
        lat, elapsed = asyncio.run(run(pipeline, burst))
        capacity[mode] = summary(burst, lat, elapsed)
        print(f"all at once, {mode}: {capacity[mode]}", flush=True)
    saturated = capacity["step_level"]["image_steps_per_s"]
    capacity["throughput_ratio_step_over_request"] = round(
        saturated / capacity["request_level"]["image_steps_per_s"], 2
    )
    mean_work = float(np.mean([a.work for a in burst]))

    results: list[dict[str, Any]] = []
    for k, load in enumerate(args.loads):
        rate = load * saturated / mean_work
        arrivals = workload(prompts, rate, args.seconds, seed=1 + k)
        row: dict[str, Any] = {"load": load, "offered_requests_per_s": round(rate, 2)}
        for mode, run in (("step_level", step_level), ("request_level", request_level)):
            lat, elapsed = asyncio.run(run(pipeline, arrivals))
            row[mode] = summary(arrivals, lat, elapsed)
            print(f"load {load:.0%} {mode}: {row[mode]}", flush=True)
        row["p50_ratio_request_over_step"] = round(row["request_level"]["p50_s"] / row["step_level"]["p50_s"], 2)
        row["p95_ratio_request_over_step"] = round(row["request_level"]["p95_s"] / row["step_level"]["p95_s"], 2)
        results.append(row)

    out = Path(args.out)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, ONNX Runtime {args.threads} threads"
    data = {"model": args.model, "machine": machine, "all_at_once": capacity, "seconds": args.seconds,
            "results": results}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.write_text(report(data))
    print(f"wrote {out} and {out.with_suffix('.json')}")


def report(data: dict[str, Any]) -> str:
    burst = data["all_at_once"]
    lines = [
        f"# Text-to-image: step-level against request-level batching ({data['model']})",
        "",
        "Made by `make bench-text2image` (`loadtests/bench_text2image.py`, whose docstring gives the workload) "
        f"in one run on {data['machine']}. Saturation: {burst['requests']} mixed requests submitted at once; "
        f"step-level completes **{burst['throughput_ratio_step_over_request']:.2f}x** the image-steps/s of "
        f"request-level. Offered load: {data['seconds']:.0f} s of Poisson arrivals per rate (as a share of "
        "step-level's saturated throughput); both modes replay the same arrivals.",
        "",
        "| load | offered req/s | mode | requests | image-steps/s | p50 s | p95 s | p50 s at 10 / 20 / 50 steps |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    rows = [("all at once", "-", burst)] + [
        (f"{r['load']:.0%}", f"{r['offered_requests_per_s']:.2f}", r) for r in data["results"]
    ]
    for load, offered, row in rows:
        for mode in ("step_level", "request_level"):
            r = row[mode]
            by = " / ".join(str(r["p50_s_by_steps"].get(str(s), "-")) for s in STEPS)
            lines.append(
                f"| {load} | {offered} | {mode.replace('_', '-')} | {r['requests']} | {r['image_steps_per_s']:.0f} | "
                f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {by} |"
            )
    lines += ["", "| load | p50 request-level / step-level | p95 request-level / step-level |", "|---:|---:|---:|"]
    lines += [
        f"| {r['load']:.0%} | {r['p50_ratio_request_over_step']:.2f} | {r['p95_ratio_request_over_step']:.2f} |"
        for r in data["results"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
