"""The metrics recorder: records stay in Python until a flush hands them to Ray's metrics
(fakes here; the integration tests read the real ones from a real Prometheus)."""

from __future__ import annotations

import threading
import time
from typing import Any

from deployments.metrics import CatalogMetrics, ModelMetrics, Recorder
from service import metrics as names
from service.stats import RequestStats, StepStats


class FakeMetric:
    """Stands in for a `ray.util.metrics` object: keeps every call, and the thread it came from."""

    def __init__(self, spec: names.MetricSpec) -> None:
        self.spec = spec
        self.calls: list[tuple[str, float, dict[str, str]]] = []
        self.threads: set[str] = set()

    def _call(self, kind: str, value: float, tags: dict[str, str]) -> None:
        self.calls.append((kind, value, tags))
        self.threads.add(threading.current_thread().name)

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self._call("inc", value, tags)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self._call("observe", value, tags)

    def set(self, value: float, tags: dict[str, str]) -> None:
        self._call("set", value, tags)


def recorder(flush_s: float = 3600.0) -> tuple[Recorder, dict[str, Any]]:
    made: dict[str, Any] = {}

    def make(spec: names.MetricSpec) -> FakeMetric:
        made[spec.name] = FakeMetric(spec)
        return made[spec.name]

    return Recorder(names.ALL, flush_s=flush_s, make=make), made


def test_nothing_reaches_ray_until_a_flush_and_then_everything_does() -> None:
    rec, made = recorder()
    m = ModelMetrics("gan", "gan", rec)
    m.request_done(RequestStats(0.01, 0.05, 1), 0, 2)
    m.request_done(RequestStats(0.02, 0.07, 1), 0, 3)
    m.network_call(StepStats(rows=5, lanes=3, requests=2, seconds=0.004))
    m.queue_depth(7)
    m.queue_depth(4)
    m.error("invalid_request")
    assert all(not metric.calls for metric in made.values())

    rec.flush()
    tags = {"model": "gan", "family": "gan"}
    # counters: one inc per label set, summed
    assert made[names.IMAGES.name].calls == [("inc", 5.0, tags)]
    assert made[names.REQUESTS.name].calls == [("inc", 2.0, {**tags, "outcome": "ok"})]
    assert made[names.ERRORS.name].calls == [("inc", 1.0, {"model": "gan", "reason": "invalid_request"})]
    # histograms: every observation, in order
    latency_tags = {**tags, "steps_band": "none"}
    assert made[names.REQUEST_LATENCY.name].calls == [("observe", 0.05, latency_tags), ("observe", 0.07, latency_tags)]
    assert made[names.QUEUE_WAIT.name].calls == [("observe", 0.01, tags), ("observe", 0.02, tags)]
    assert made[names.BATCH_LANES.name].calls == [("observe", 3, tags)]
    assert made[names.BATCH_REQUESTS.name].calls == [("observe", 2, tags)]
    # gauges: the last value
    assert made[names.QUEUE_DEPTH.name].calls == [("set", 4, tags)]


def test_a_later_flush_sends_only_new_records_but_sets_every_gauge_again() -> None:
    rec, made = recorder()
    m = ModelMetrics("vae", "vae", rec)
    m.queue_limit(1024)
    m.request_failed("overloaded")
    rec.flush()
    rec.flush()
    tags = {"model": "vae", "family": "vae"}
    assert made[names.REQUESTS.name].calls == [("inc", 1.0, {**tags, "outcome": "overloaded"})]
    # set once before the first flush, exported at both: a gauge set at start-up is not lost
    assert made[names.QUEUE_LIMIT.name].calls == [("set", 1024, tags), ("set", 1024, tags)]


def test_the_flush_thread_hands_records_to_ray_on_its_own() -> None:
    rec, made = recorder(flush_s=0.02)
    CatalogMetrics(rec).error("model_not_found")
    deadline = time.monotonic() + 5
    while not made[names.ERRORS.name].calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made[names.ERRORS.name].calls == [("inc", 1.0, {"model": "catalog", "reason": "model_not_found"})]
    assert made[names.ERRORS.name].threads == {"metrics-flush"}  # not the thread that recorded it
    rec.close()


def test_close_flushes_what_is_left() -> None:
    rec, made = recorder()
    ModelMetrics("gan", "gan", rec).route_done("score", "ok", 0.3)
    rec.close()
    assert made[names.ROUTE_LATENCY.name].calls == [
        ("observe", 0.3, {"model": "gan", "family": "gan", "route": "score"})
    ]
    assert made[names.ROUTE_REQUESTS.name].calls == [
        ("inc", 1.0, {"model": "gan", "family": "gan", "route": "score", "outcome": "ok"})
    ]
