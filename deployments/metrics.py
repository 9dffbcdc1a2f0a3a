"""Records `service.metrics` through Ray's metrics API, which Ray exports per node to Prometheus.

Records are buffered in Python and handed to Ray by one thread per process (`Recorder`): Ray's
record call leaves the GIL and must take it back, and on a replica whose other threads run
Python (PNG encoding, batching) that costs the caller up to a switch interval each time
(`python -m loadtests.metrics_cost`: about 4 us alone, about 30 us beside a thread encoding PNGs,
against about 1 us to keep a record here). Ten records per 1-image GAN request, made on the
event loop, held its throughput back by a quarter (docs/benchmarks.md, peer `inline-metrics`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ray.util import metrics as ray_metrics

from service import metrics as names
from service.stats import RequestStats, StepStats

FLUSH_S = 1.0  # next to Ray's export interval (RAY_metrics_report_interval_ms, 10 s by default)
Tags = frozenset[tuple[str, str]]


def _make(spec: names.MetricSpec) -> Any:
    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.labels)
    return ray_metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.buckets), tag_keys=spec.labels
    )


class Recorder:
    """Metrics kept in Python (a dict update per record, under a lock) and handed to Ray every
    `flush_s` by a daemon thread: counters summed per label set, histogram observations one by
    one, gauges at their last value and set again at every flush (a gauge set once at start-up
    can be lost before Ray's export begins). `make` builds the Ray metric for a spec (a fake in
    unit tests)."""

    def __init__(
        self,
        specs: Iterable[names.MetricSpec],
        flush_s: float = FLUSH_S,
        make: Callable[[names.MetricSpec], Any] = _make,
    ) -> None:
        self.metrics = {spec.name: make(spec) for spec in specs}
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, Tags], float] = {}
        self._observed: dict[tuple[str, Tags], list[float]] = {}
        self._gauges: dict[tuple[str, Tags], float] = {}
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)
        self._thread.start()

    def inc(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        key = (spec.name, frozenset(tags.items()))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + value

    def observe(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        key = (spec.name, frozenset(tags.items()))
        with self._lock:
            self._observed.setdefault(key, []).append(value)

    def set(self, spec: names.MetricSpec, value: float, tags: dict[str, str]) -> None:
        with self._lock:
            self._gauges[(spec.name, frozenset(tags.items()))] = value

    def flush(self) -> None:
        """Hands everything recorded since the last flush to Ray (from the calling thread)."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, {}
            gauges = list(self._gauges.items())
        for (name, tags), total in counts.items():
            self.metrics[name].inc(total, tags=dict(tags))
        for (name, tags), values in observed.items():
            tag_dict = dict(tags)
            for value in values:
                self.metrics[name].observe(value, tags=tag_dict)
        for (name, tags), value in gauges:
            self.metrics[name].set(value, tags=dict(tags))

    def close(self) -> None:
        """Stops the flush thread after a last flush."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()
        self.flush()


class ModelMetrics:
    """The metrics one model replica records; every label value is bounded."""

    def __init__(self, model: str, family: str, recorder: Recorder | None = None) -> None:
        self.tags = {"model": model, "family": family}
        self.recorder = recorder or Recorder(names.ALL)

    def network_call(self, stats: StepStats) -> None:
        r = self.recorder
        r.observe(names.STEP_LATENCY, stats.seconds, self.tags)
        r.observe(names.BATCH_IMAGES, stats.rows, self.tags)
        r.observe(names.BATCH_LANES, stats.lanes, self.tags)
        r.observe(names.BATCH_REQUESTS, stats.requests, self.tags)

    def request_done(self, stats: RequestStats, steps: int, images: int) -> None:
        r = self.recorder
        r.observe(names.REQUEST_LATENCY, stats.total_seconds, {**self.tags, "steps_band": names.steps_band(steps)})
        r.observe(names.QUEUE_WAIT, stats.queue_seconds, self.tags)
        r.inc(names.IMAGES, images, self.tags)
        r.inc(names.REQUESTS, 1, {**self.tags, "outcome": "ok"})

    def request_failed(self, reason: str) -> None:
        """A request the model refused or failed; its error response is counted by `error`."""
        self.recorder.inc(names.REQUESTS, 1, {**self.tags, "outcome": reason})

    def cancelled(self) -> None:
        """A request whose client went away: no response, so it is counted as an error here."""
        self.request_failed("cancelled")
        self.error("cancelled")

    def error(self, reason: str) -> None:
        """An error response (any 4xx or 5xx) this replica's HTTP edge sent."""
        self.recorder.inc(names.ERRORS, 1, {"model": self.tags["model"], "reason": reason})

    def route_done(self, route: str, outcome: str, seconds: float | None) -> None:
        """A request to a route beyond generate: its outcome, and its latency when answered."""
        tags = {**self.tags, "route": route}
        self.recorder.inc(names.ROUTE_REQUESTS, 1, {**tags, "outcome": outcome})
        if seconds is not None:
            self.recorder.observe(names.ROUTE_LATENCY, seconds, tags)

    def queue_depth(self, images: int) -> None:
        self.recorder.set(names.QUEUE_DEPTH, images, self.tags)

    def provider(self, name: str) -> None:
        """The ONNX Runtime provider this replica runs: 1 under its name."""
        self.recorder.set(names.PROVIDER, 1, {**self.tags, "provider": name})

    def memory(self) -> None:
        """This process's resident memory now."""
        self.recorder.set(names.REPLICA_MEMORY, resident_bytes(), self.tags)

    def queue_limit(self, images: int) -> None:
        """The refusal limit the queue alert compares the depth against."""
        self.recorder.set(names.QUEUE_LIMIT, images, self.tags)


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

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or Recorder([names.ERRORS])

    def error(self, reason: str) -> None:
        self.recorder.inc(names.ERRORS, 1, {"model": "catalog", "reason": reason})
