"""genserve variants the benchmark compares against; none of them is served by `make serve`.

- `RequestLevelDiffusion`: diffusion behind Ray Serve's `@serve.batch`, the way request-level
  batching works: a batch is formed from the requests waiting, split into groups with equal
  steps and sampler, and each group runs to its last step before the next batch is formed.
  A request arriving meanwhile waits for the whole batch.
- `InlineMetricsLatent`, `InlineMetricsDiffusion`: each metric record handed to Ray's metrics
  as it is made, on the thread that made it, as replicas did before `deployments.metrics.Recorder`
  kept records in Python for a thread of their own.
- `EmptyReplica`: the same route shape (HAProxy, then the replica's own HTTP edge: validation,
  auth, limits, metrics) with no model work: it answers every request with blank PNGs. Its
  requests/s is the serving stack's ceiling.
- `RoutedLatent`: GAN or VAE whose generate route goes through FastAPI's router, dependency
  solving and response-model pass, with FastAPI's OpenTelemetry check on every request, as
  replicas answered before `deployments.http.DirectRoutes` served it straight from ASGI.
- `SpinningDiffusion`: diffusion whose lone-lane session keeps its pool threads spinning between
  calls (ONNX Runtime's default), as replicas did before `service.runtime.OnnxModel` made them
  sleep: its latency ladder beside genserve's shows what the spinning costs at low load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from ray import serve

from deployments.app import ServedApp, build_apps
from deployments.metrics import ModelMetrics, Recorder
from deployments.replicas import DiffusionReplica, LatentModelReplica, ReplicaClass
from deployments.routes import Images
from service import metrics as names
from service.images import encode_pngs, png_bytes
from service.jobs import DiffusionJob, Job
from service.scheduler import StepScheduler


class RequestLevelDiffusion(DiffusionReplica):
    async def _generate(self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None) -> Images:
        assert isinstance(job, DiffusionJob)
        result: Images = await self._batch((job, time.monotonic()))
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=lambda items: sum(i[0].n for i in items))
    async def _batch(self, items: list[tuple[DiffusionJob, float]]) -> list[Images]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k, (job, _) in enumerate(items):
            groups.setdefault((job.steps, job.sampler, job.eta, job.spacing), []).append(k)
        results: list[Images | None] = [None] * len(items)
        for members in groups.values():  # one group after the other, each to its last step
            scheduler = StepScheduler(self.model, max_batch=10**6, on_step=self._on_step)
            started = time.monotonic()
            done = await asyncio.gather(*(scheduler.submit(items[k][0]) for k in members))
            await scheduler.close()
            for k, res in zip(members, done, strict=True):
                pngs, _ = await asyncio.to_thread(encode_pngs, res.images, self.model.card.image.value_range)
                sub = items[k][1]
                self.metrics.request_done(res.stats, items[k][0].steps, items[k][0].n)
                results[k] = Images(pngs, None, started - sub, time.monotonic() - sub)
        return [r for r in results if r is not None]


class InlineRecorder(Recorder):
    """Hands each record to Ray as it is made, on the recording thread."""

    def inc(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        self.metrics[spec.name].inc(value, tags=tags)

    def observe(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        self.metrics[spec.name].observe(value, tags=tags)

    def set(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        self.metrics[spec.name].set(value, tags=tags)


class InlineMetricsLatent(LatentModelReplica):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = ModelMetrics(self.model.name, self.card.family, InlineRecorder(names.ALL))


class InlineMetricsDiffusion(DiffusionReplica):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = ModelMetrics(self.model.name, self.card.family, InlineRecorder(names.ALL))


class EmptyReplica(LatentModelReplica):
    """Answers with blank images of the card's shape; runs no network for a request."""

    PNG = png_bytes(np.zeros((28, 28, 1), np.uint8))

    async def _generate(self, job: Job, deadline: float, grid: bool, metrics: ModelMetrics | None) -> Images:
        return Images([self.PNG] * job.n, None, 0.0, 0.0)


class RoutedLatent(LatentModelReplica):
    def __serve_build_asgi_app__(self) -> FastAPI:
        app = super().__serve_build_asgi_app__()
        app.state.direct_routes.clear()  # generate falls through to FastAPI's router
        app._telemetry.update({"tracing": True, "metrics": True, "logs": True})  # FastAPI's defaults
        return app


class SpinningDiffusion(DiffusionReplica):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        onnx = self.model.onnx
        if onnx.ways > 1:  # the lone-batch session again, its own options but spinning
            whole = onnx._whole
            opts = whole.get_session_options()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
            onnx._whole = ort.InferenceSession(str(onnx.path), sess_options=opts, providers=whole.get_providers())


def request_level_app(args: dict[str, Any]) -> list[ServedApp]:
    return build_apps(args, {"diffusion": RequestLevelDiffusion})


def inline_metrics_app(args: dict[str, Any]) -> list[ServedApp]:
    latent = cast(type[ReplicaClass], InlineMetricsLatent)
    return build_apps(args, {"gan": latent, "vae": latent, "diffusion": InlineMetricsDiffusion})


def empty_app(args: dict[str, Any]) -> list[ServedApp]:
    empty = cast(type[ReplicaClass], EmptyReplica)
    return build_apps(args, {"gan": empty, "vae": empty, "diffusion": empty})


def routed_app(args: dict[str, Any]) -> list[ServedApp]:
    routed = cast(type[ReplicaClass], RoutedLatent)
    return build_apps(args, {"gan": routed, "vae": routed})


def spinning_app(args: dict[str, Any]) -> list[ServedApp]:
    return build_apps(args, {"diffusion": SpinningDiffusion})
