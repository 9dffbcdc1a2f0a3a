"""Model replicas: each is its model's HTTP edge and runs its model, in one process.

GAN/VAE batch requests with `service.batcher` (counting images); diffusion runs the step
scheduler, and so does a text-to-image pipeline folder (its lanes carry their prompts' text
embeddings; its latents are decoded when a request's last lane finishes). Plain classes:
`deployments.app` makes them Serve ingress deployments, and Serve builds each replica's HTTP
app from `__serve_build_asgi_app__` (the routes in `deployments.routes`). PNG encoding happens
here, in a worker thread.

Health: Serve calls `check_health` every few seconds; it fails when the replica cannot answer a
1-image request in time (a stuck network call, a loop that never ends), so Serve replaces it,
and the catalog's /readyz (through `ready`) reports it meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray
from fastapi import FastAPI

from deployments.autoscaling import BACKLOG_SECONDS, QUEUED_ROWS
from deployments.metrics import ModelMetrics
from deployments.routes import Images, model_app
from service.batcher import Batcher
from service.cards import ModelCard
from service.denoisers import Denoiser, LabelDenoiser
from service.errors import DeadlineExceeded, GenserveError, Overloaded
from service.generators import generate_latent
from service.images import encode_pngs, png_bytes, to_uint8
from service.jobs import DiffusionJob, Job, LatentJob
from service.registry import LoadedModel, load_model
from service.runtime import Device
from service.scheduler import Preview, StepScheduler, preview_steps
from service.settings import Settings
from service.stats import RequestStats, StepStats
from service.text2image import TextDenoiser

# A replica that cannot answer a 1-image request within this long is unhealthy. Far above a
# batch's time under full load here (a 64-image GAN batch is ~0.1 s, a diffusion step ~0.1 s).
HEALTH_PROBE_TIMEOUT_S = 20.0
log = logging.getLogger("ray.serve")
T = TypeVar("T")


class _ClientLeft(Exception):
    """Raised in a worker thread to stop work whose client has gone."""


def remaining(deadline: float) -> float:
    """Seconds left until a Unix-time deadline."""
    return max(0.0, deadline - time.time())


@dataclasses.dataclass(eq=False)
class _Ticket:
    """One GAN/VAE request in the batcher; `gone` once its client has left (nothing to compute)."""

    job: LatentJob
    submitted: float
    grid: bool
    gone: bool = False


class _Replica:
    """What every model replica shares: loading, metrics, HTTP app, health."""

    def __init__(self, model_dir: str, name: str, device: Device = "auto", ort_threads: int = 1) -> None:
        self.model: LoadedModel = load_model(Path(model_dir) / name, device=device, intra_op_threads=ort_threads)
        self.metrics = ModelMetrics(name, self.model.card.family)
        self.timeout_s = Settings().request_timeout_s
        if self.model.onnx.fallback:  # loud: a GPU replica quietly on the CPU is many times slower
            log.error("model %s (device=%s): %s", name, device, self.model.onnx.fallback)
        self.metrics.provider(self.model.onnx.provider)
        self.metrics.memory()

    @property
    def card(self) -> ModelCard:
        return self.model.card

    def __serve_build_asgi_app__(self) -> FastAPI:
        return model_app(self, self.timeout_s, self.metrics.error)

    async def generate(self, job: Job, deadline: float, grid: bool) -> Images:
        """Images for `job` by `deadline` (Unix time), recorded in the request metrics."""
        return await self._generate(job, deadline, grid, self.metrics)

    async def compute(self, fn: Callable[[Callable[[], None]], T], deadline: float, route: str) -> T:
        """`fn(check)` in a worker thread (scoring, encoding, interpolation); `check` raises at
        the deadline (a 504) or once the client has left, so the work stops at its next chunk."""
        gone = threading.Event()
        started = time.monotonic()

        def check() -> None:
            if gone.is_set():
                raise _ClientLeft
            if time.time() > deadline:
                raise DeadlineExceeded("request passed its deadline")

        try:
            out = await asyncio.to_thread(fn, check)
        except asyncio.CancelledError:
            gone.set()
            self.metrics.error("cancelled")
            self.metrics.route_done(route, "cancelled", None)
            raise
        except GenserveError as e:
            self.metrics.route_done(route, e.reason, None)
            raise
        except Exception:
            self.metrics.route_done(route, "internal", None)
            raise
        self.metrics.route_done(route, "ok", time.monotonic() - started)
        return out

    async def _generate(self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None) -> Images:
        raise NotImplementedError

    async def _generate_watched(self, job: Job, deadline: float, watch: Preview) -> Images:
        """As `generate`, showing `watch` each image's progress after every step where the model
        has steps to show (diffusion); a one-call model shows none."""
        return await self._generate(job, deadline, False, self.metrics)

    async def generate_stream(
        self, job: Job, deadline: float, previews: int = 0, every: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """`job` as events, for streaming clients (the model's own `/generate` with `stream`, or
        the catalog's OpenAI route through a streaming handle): `accepted` once admitted (a
        refusal raises before it); for diffusion `progress` (step, total) each time every image
        has made one more step, a `preview` (every image's clean-image estimate) every `every`
        steps, and OpenAI's `partial` previews `previews` times per image; then an `image` per
        image and `done`. Closing the stream cancels the job (its lanes leave the scheduler)."""
        queue: asyncio.Queue[tuple[int, int, np.ndarray]] = asyncio.Queue()
        total = job.steps - job.start if isinstance(job, DiffusionJob) else 0
        partial_after = preview_steps(total, previews)

        def watch(index: int, step: int, x0: np.ndarray) -> None:
            queue.put_nowait((index, step, x0))

        task = asyncio.create_task(self._generate_watched(job, deadline, watch))
        await asyncio.sleep(0)  # admission runs before the task's first wait
        refused = task.exception() if task.done() else None
        if refused is not None:
            raise refused
        yield {"type": "accepted", "seed": job.seed, "label": job.label, "total": total}
        vr = self.card.image.value_range
        shown: dict[int, int] = {}
        reached = [0] * job.n
        latest: dict[int, np.ndarray] = {}
        done_steps = 0

        def events(index: int, step: int, x0: np.ndarray) -> list[dict[str, Any]]:
            """What one lane's step adds; previews carry their estimates (`x0`) until rendered."""
            nonlocal done_steps
            out: list[dict[str, Any]] = []
            if step in partial_after:
                nth = shown[index] = shown.get(index, -1) + 1
                out.append(
                    {"type": "partial", "index": index, "step": step, "partial_image_index": nth, "x0": x0[None]}
                )
            reached[index] = step
            if every and step % every == 0 and step < total:
                latest[index] = x0
            while min(reached) > done_steps:
                done_steps += 1
                out.append({"type": "progress", "step": done_steps, "total": total})
                if every and done_steps % every == 0 and done_steps < total and len(latest) == job.n:
                    out.append(
                        {"type": "preview", "step": done_steps, "x0": np.stack([latest[i] for i in range(job.n)])}
                    )
            return out

        async def rendered(event: dict[str, Any]) -> dict[str, Any]:
            """A preview's estimates as PNGs, in the card's value range (`preview_images`)."""
            if "x0" not in event:
                return event
            pngs = [png_bytes(im) for im in to_uint8(await self.preview_images(event.pop("x0")), vr)]
            return event | ({"png": pngs[0]} if event["type"] == "partial" else {"pngs": pngs})

        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                finished, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in finished:
                    getter.cancel()
                    break
                for event in events(*getter.result()):
                    yield await rendered(event)
            while not queue.empty():  # what came with the last step
                for event in events(*queue.get_nowait()):
                    yield await rendered(event)
            out = task.result()
        finally:
            if not task.done():
                task.cancel()
        for index, png in enumerate(out.pngs):
            yield {"type": "image", "index": index, "png": png}
        yield {"type": "done", "seconds": out.total_seconds, "queue_seconds": out.queue_seconds}

    def probe_job(self) -> Job:
        raise NotImplementedError

    async def preview_images(self, x0: np.ndarray) -> np.ndarray:
        """Clean-image estimates (lanes' state) as images in the card's value range."""
        return x0

    async def probe(self) -> None:
        """A 1-image request through the normal path; TimeoutError if it does not finish in time."""
        try:
            deadline = time.time() + HEALTH_PROBE_TIMEOUT_S
            # Not recorded as a request: probes would show up as traffic.
            await asyncio.wait_for(self._generate(self.probe_job(), deadline, False, None), HEALTH_PROBE_TIMEOUT_S)
        except Overloaded:
            pass  # a full queue refused it at once: the replica answers

    async def ready(self) -> dict[str, str]:
        """What readiness learns: the model, its ONNX provider, the node; raises when stuck."""
        await self.probe()
        answer = {
            "model": self.model.name,
            "provider": self.model.onnx.provider,
            "node_id": ray.get_runtime_context().get_node_id(),
        }
        if self.model.onnx.fallback:
            answer["fallback"] = self.model.onnx.fallback
        return answer

    async def check_health(self) -> None:
        """Serve's replica health check (every few seconds): also reads the replica's memory."""
        await self.probe()
        self.metrics.memory()


class LatentModelReplica(_Replica):
    """GAN or VAE: requests are batched counting images, not requests, and never held while the
    model is idle (`service.batcher.Batcher`: batches form from the requests that arrive while
    the model is busy)."""

    def __init__(self, model_dir: str, name: str, device: Device = "auto", ort_threads: int = 1) -> None:
        super().__init__(model_dir, name, device, ort_threads)
        self.in_flight = 0
        self.max_queued_images = 1024
        self.metrics.queue_limit(self.max_queued_images)
        # Two batches in flight: one batch's PNG encoding and hand-back overlap the next one's
        # network call (8-image GAN requests: 600 -> 790 images/s on 2 cores).
        self.batcher = Batcher[_Ticket, Images | GenserveError](
            self._run_batch, lambda t: t.job.n, max_batch=64, max_concurrent=2
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Live knobs from `user_config`: max_batch_images; batch_wait_timeout_s, how long a batch
        that is not full waits for more (0, the default: never; a request runs as soon as a
        batch slot is free); max_queued_images."""
        self.batcher.max_batch = int(config.get("max_batch_images", 64))
        self.batcher.linger_s = float(config.get("batch_wait_timeout_s", 0.0))
        self.max_queued_images = int(config.get("max_queued_images", 1024))
        self.metrics.queue_limit(self.max_queued_images)

    def probe_job(self) -> Job:
        return LatentJob(seed=0, n=1, label=None if self.card.null_label is not None else 0)

    async def _generate(self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None) -> Images:
        assert isinstance(job, LatentJob)
        if self.in_flight + job.n > self.max_queued_images:
            if metrics:
                metrics.request_failed(Overloaded.reason)
            raise Overloaded(
                f"model {self.model.name!r} has {self.in_flight} images queued; "
                f"limit {self.max_queued_images}, this request adds {job.n}"
            )
        self.in_flight += job.n
        self.metrics.queue_depth(self.in_flight)
        ticket = _Ticket(job, time.monotonic(), grid)
        try:
            out: Images | GenserveError = await asyncio.wait_for(self.batcher.submit(ticket), remaining(deadline))
        except TimeoutError:
            out = DeadlineExceeded("request passed its deadline")
        except asyncio.CancelledError:  # the client went away: its images are not computed
            ticket.gone = True
            if metrics:
                metrics.cancelled()
            raise
        except Exception:  # a fault, not a refusal: the edge answers 500
            if metrics:
                metrics.request_failed("internal")
            raise
        finally:
            self.in_flight -= job.n
            self.metrics.queue_depth(self.in_flight)
        if isinstance(out, GenserveError):
            if metrics:
                metrics.request_failed(out.reason)
            raise out
        if metrics:
            metrics.request_done(RequestStats(out.queue_seconds, out.total_seconds, 1), 0, job.n)
        return out

    async def _run_batch(self, tickets: list[_Ticket]) -> list[Images | GenserveError]:
        live = [t for t in tickets if not t.gone]
        started = time.monotonic()
        try:
            encoded = await asyncio.to_thread(self._run, live) if live else []
        except Exception as e:
            return [GenserveError(f"network call failed: {e}") for _ in tickets]
        done = time.monotonic()
        if live:
            rows = sum(t.job.n for t in live)
            self.metrics.network_call(StepStats(rows, rows, len(live), done - started))
        by_ticket = dict(zip(map(id, live), encoded, strict=True))
        gone = GenserveError("client went away")
        return [
            Images(*by_ticket[id(t)], started - t.submitted, done - t.submitted) if id(t) in by_ticket else gone
            for t in tickets
        ]

    def _run(self, tickets: list[_Ticket]) -> list[tuple[list[bytes], bytes | None]]:
        images = generate_latent(self.model, [t.job for t in tickets])
        vr = self.card.image.value_range
        return [encode_pngs(im, vr, t.grid) for im, t in zip(images, tickets, strict=True)]


class DiffusionReplica(_Replica):
    """Diffusion: requests join the replica's `StepScheduler` and share every network call."""

    def __init__(self, model_dir: str, name: str, device: Device = "auto", ort_threads: int = 1) -> None:
        super().__init__(model_dir, name, device, ort_threads)
        self.scheduler = StepScheduler(self.denoiser(), on_step=self._on_step)
        probe = self.probe_job()
        assert isinstance(probe, DiffusionJob)
        self.scheduler.warm_up(probe)
        self.metrics.queue_limit(self.scheduler.max_queued_lanes)

    def denoiser(self) -> Denoiser:
        """What the scheduler's lanes run: the model's own graph."""
        return LabelDenoiser(self.model)

    async def finish(self, images: np.ndarray) -> np.ndarray:
        """A finished request's lanes as images in the card's value range (here: already are)."""
        return images

    async def preview_images(self, x0: np.ndarray) -> np.ndarray:
        """Previews are lanes' clean-image estimates, made images as finished lanes are (`finish`)."""
        return await self.finish(x0)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Live knobs from `user_config`: max_batch (network rows), max_queued_images."""
        self.scheduler.max_batch = int(config.get("max_batch", 64))
        self.scheduler.max_queued_lanes = int(config.get("max_queued_images", 1024))
        self.metrics.queue_limit(self.scheduler.max_queued_lanes)

    async def check_health(self) -> None:
        """The base health check, then, while the replica is idle, one lane and a full batch
        timed again (`StepScheduler.retime_when_idle`: a warm-up timed during a busy start-up
        would cost requests too high until real full batches ran)."""
        await super().check_health()
        probe = self.probe_job()
        assert isinstance(probe, DiffusionJob)
        await self.scheduler.retime_when_idle(probe)

    def _on_step(self, stats: StepStats) -> None:
        self.metrics.network_call(stats)
        self.metrics.queue_depth(self.scheduler.queued_lanes)

    def probe_job(self) -> Job:
        return DiffusionJob(seed=0, n=1, steps=1, label=None if self.card.null_label is not None else 0, probe=True)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The work this replica holds, for `deployments.autoscaling.QueuedWorkPolicy` (Serve calls
        this every `metrics_interval_s`): network rows still to run, and those rows in seconds
        at the pace the replica measures (left out until it has run a step: no pace yet)."""
        stats = {QUEUED_ROWS: float(self.scheduler.queued_rows)}
        backlog = self.scheduler.backlog_seconds
        if backlog is not None:
            stats[BACKLOG_SECONDS] = backlog
        return stats

    async def _generate(self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None) -> Images:
        return await self._submit(job, deadline, grid, metrics, None)

    async def _generate_watched(self, job: Job, deadline: float, watch: Preview) -> Images:
        return await self._submit(job, deadline, False, self.metrics, watch)

    async def _submit(
        self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None, watch: Preview | None
    ) -> Images:
        assert isinstance(job, DiffusionJob)
        job = dataclasses.replace(job, deadline=time.monotonic() + remaining(deadline))
        try:
            result = await self.scheduler.submit(job, watch)
        except GenserveError as e:
            if metrics:
                metrics.request_failed(e.reason)
            raise
        except asyncio.CancelledError:
            if metrics:
                metrics.cancelled()
            raise
        except Exception:  # a fault, not a refusal: the edge answers 500
            if metrics:
                metrics.request_failed("internal")
            raise
        finally:
            self.metrics.queue_depth(self.scheduler.queued_lanes)
        images = await self.finish(result.images)
        pngs, tiled = await asyncio.to_thread(encode_pngs, images, self.card.image.value_range, grid)
        if metrics:
            metrics.request_done(result.stats, job.steps, job.n)
        return Images(pngs, tiled, result.stats.queue_seconds, result.stats.total_seconds)


class TextToImageReplica(DiffusionReplica):
    """A Stable-Diffusion-layout pipeline folder: each request's prompts are encoded once on the
    compute thread, its lanes join the step scheduler with their text embeddings (requests with
    different prompts share every UNet call), and its latents are decoded in one batched call."""

    def denoiser(self) -> Denoiser:
        assert self.model.pipeline is not None  # load_model gives a text2image card its pipeline
        return TextDenoiser(self.model.pipeline)

    async def finish(self, images: np.ndarray) -> np.ndarray:
        pipeline = self.model.pipeline
        assert pipeline is not None
        return await self.scheduler.run_off_loop(pipeline.decode, images)

    def probe_job(self) -> Job:
        return DiffusionJob(seed=0, n=1, steps=1, prompt="", guidance=1.0, probe=True)


ReplicaClass = LatentModelReplica | DiffusionReplica
REPLICA_CLASSES: dict[str, type[ReplicaClass]] = {
    "gan": LatentModelReplica,
    "vae": LatentModelReplica,
    "diffusion": DiffusionReplica,
    "text2image": TextToImageReplica,
}
