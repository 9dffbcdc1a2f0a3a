"""Records `service.metrics` through Ray's metrics API, which Ray exports per node to Prometheus."""

from __future__ import annotations

import os
import sys
from typing import Any

from ray.util import metrics as ray_metrics

from service import metrics as names
from service.stats import RequestStats, StepStats


def _make(spec: names.MetricSpec) -> Any:
    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.labels)
    return ray_metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.buckets), tag_keys=spec.labels
    )


class ModelMetrics:
    """The metrics one model replica records; every label value is bounded."""

    def __init__(self, model: str, family: str) -> None:
        self.tags = {"model": model, "family": family}
        self.m = {spec.name: _make(spec) for spec in names.ALL}
        self.limit: int | None = None

    def network_call(self, stats: StepStats) -> None:
        self.m[names.STEP_LATENCY.name].observe(stats.seconds, tags=self.tags)
        self.m[names.BATCH_IMAGES.name].observe(stats.rows, tags=self.tags)
        self.m[names.BATCH_LANES.name].observe(stats.lanes, tags=self.tags)
        self.m[names.BATCH_REQUESTS.name].observe(stats.requests, tags=self.tags)

    def request_done(self, stats: RequestStats, steps: int, images: int) -> None:
        band = names.steps_band(steps)
        self.m[names.REQUEST_LATENCY.name].observe(stats.total_seconds, tags={**self.tags, "steps_band": band})
        self.m[names.QUEUE_WAIT.name].observe(stats.queue_seconds, tags=self.tags)
        self.m[names.IMAGES.name].inc(images, tags=self.tags)
        self.m[names.REQUESTS.name].inc(1, tags={**self.tags, "outcome": "ok"})

    def request_failed(self, reason: str) -> None:
        """A request the model refused or failed; its error response is counted by `error`."""
        self.m[names.REQUESTS.name].inc(1, tags={**self.tags, "outcome": reason})

    def cancelled(self) -> None:
        """A request whose client went away: no response, so it is counted as an error here."""
        self.request_failed("cancelled")
        self.error("cancelled")

    def error(self, reason: str) -> None:
        """An error response (any 4xx or 5xx) this replica's HTTP edge sent."""
        self.m[names.ERRORS.name].inc(1, tags={"model": self.tags["model"], "reason": reason})

    def route_done(self, route: str, outcome: str, seconds: float | None) -> None:
        """A request to a route beyond generate: its outcome, and its latency when answered."""
        tags = {**self.tags, "route": route}
        self.m[names.ROUTE_REQUESTS.name].inc(1, tags={**tags, "outcome": outcome})
        if seconds is not None:
            self.m[names.ROUTE_LATENCY.name].observe(seconds, tags=tags)

    def queue_depth(self, images: int) -> None:
        self.m[names.QUEUE_DEPTH.name].set(images, tags=self.tags)
        self._limit_again()

    def provider(self, name: str) -> None:
        """The ONNX Runtime provider this replica runs: 1 under its name (and the queue limit again)."""
        self.m[names.PROVIDER.name].set(1, tags={**self.tags, "provider": name})
        self._limit_again()

    def memory(self) -> None:
        """This process's resident memory now."""
        self.m[names.REPLICA_MEMORY.name].set(resident_bytes(), tags=self.tags)

    def queue_limit(self, images: int) -> None:
        """The refusal limit the queue alert compares the depth against."""
        self.limit = images
        self._limit_again()

    def _limit_again(self) -> None:
        """Sets the limit gauge (again): one set only at start-up can be lost before export begins,
        so it is set with every depth and every health check too."""
        if self.limit is not None:
            self.m[names.QUEUE_LIMIT.name].set(self.limit, tags=self.tags)


def resident_bytes() -> int:
    """Resident set size of this process: /proc on Linux, else the peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class CatalogMetrics:
    """Error responses of the catalog (unknown models, auth, bad routes), under model "catalog"."""

    def __init__(self) -> None:
        self.errors = _make(names.ERRORS)

    def error(self, reason: str) -> None:
        self.errors.inc(1, tags={"model": "catalog", "reason": reason})
