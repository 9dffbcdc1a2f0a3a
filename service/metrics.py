"""Every metric name and label set of genserve, in one place.

Prometheus conventions: `genserve_` prefix, base units, `_seconds` and `_total` suffixes.
Labels are bounded: model, family, steps_band (five values), outcome, reason, route; never a
request id, a seed or a raw step count (1,000 values per model). The Ray layer records these
through `ray.util.metrics`, whose export is right with many replicas on many nodes. Ray's exporter prefixes every application
metric with `ray_`, so Prometheus sees `ray_genserve_...`: `exported_name` gives that name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, kind, help text, label names and (histograms) bucket bounds."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


EXPORT_PREFIX = "ray_"


def exported_name(spec: MetricSpec) -> str:
    """The series name Prometheus scrapes from Ray's metrics export port."""
    return EXPORT_PREFIX + spec.name


# Up to 600 s, so a p99 past the longest latency budget (120 s, for 200+ steps) still reads as more
# than 120 s rather than as the top finite bucket.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STEP_BANDS = ("none", "1-9", "10-49", "50-199", "200+")


def steps_band(steps: int) -> str:
    """A request's step count as a bounded label: "none" for GAN/VAE (one network call)."""
    if steps <= 0:
        return "none"
    if steps < 10:
        return "1-9"
    if steps < 50:
        return "10-49"
    return "50-199" if steps < 200 else "200+"


STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUEST_LATENCY = MetricSpec(
    "genserve_request_latency_seconds",
    "histogram",
    "Time from a generate request's arrival at the model to its images, by model and step band (STEP_BANDS).",
    ("model", "family", "steps_band"),
    LATENCY_BUCKETS,
)
STEP_LATENCY = MetricSpec(
    "genserve_network_call_seconds",
    "histogram",
    "Latency of one batched network call (one sampling step for diffusion).",
    ("model", "family"),
    STEP_BUCKETS,
)
BATCH_IMAGES = MetricSpec(
    "genserve_batch_images",
    "histogram",
    "Images (diffusion: network rows) per network call.",
    ("model", "family"),
    SIZE_BUCKETS,
)
BATCH_LANES = MetricSpec(
    "genserve_batch_lanes",
    "histogram",
    "Diffusion lanes (images in flight) advanced per network call.",
    ("model", "family"),
    SIZE_BUCKETS,
)
BATCH_REQUESTS = MetricSpec(
    "genserve_batch_requests",
    "histogram",
    "Requests sharing one network call.",
    ("model", "family"),
    SIZE_BUCKETS,
)
QUEUE_WAIT = MetricSpec(
    "genserve_queue_wait_seconds",
    "histogram",
    "Time a request waited before its first network call.",
    ("model", "family"),
    LATENCY_BUCKETS,
)
QUEUE_DEPTH = MetricSpec(
    "genserve_queue_depth_images",
    "gauge",
    "Images queued or in progress in a replica.",
    ("model", "family"),
)
QUEUE_LIMIT = MetricSpec(
    "genserve_queue_limit_images",
    "gauge",
    "Images a replica holds queued or in progress before it refuses with 503 (its max_queued_images).",
    ("model", "family"),
)
PROVIDER = MetricSpec(
    "genserve_replica_provider",
    "gauge",
    "1 per replica under the ONNX Runtime provider it runs (CUDAExecutionProvider, CPUExecutionProvider).",
    ("model", "family", "provider"),
)
REPLICA_MEMORY = MetricSpec(
    "genserve_replica_memory_bytes",
    "gauge",
    "Resident memory (RSS) of a replica process of the model, read at start and at every health check. "
    "Several replicas of one model on one node report under the same labels (the latest reading).",
    ("model", "family"),
)
IMAGES = MetricSpec(
    "genserve_images_generated_total",
    "counter",
    "Images returned to clients.",
    ("model", "family"),
)
REQUESTS = MetricSpec(
    "genserve_requests_total",
    "counter",
    "Generate requests that reached the model, by outcome: ok, or an error reason (overloaded, too_costly, "
    "deadline_exceeded, cancelled, internal).",
    ("model", "family", "outcome"),
)
ERRORS = MetricSpec(
    "genserve_errors_total",
    "counter",
    "Every 4xx/5xx response by its error code (invalid_request, too_costly, model_not_found, unauthorized, "
    "body_too_large, headers_too_large, overloaded, deadline_exceeded, internal, ...), and cancelled requests.",
    ("model", "reason"),
)

ROUTE_REQUESTS = MetricSpec(
    "genserve_route_requests_total",
    "counter",
    "Requests to the routes beyond generate (score, classify, encode, reconstruct, interpolate) by outcome.",
    ("model", "family", "route", "outcome"),
)
ROUTE_LATENCY = MetricSpec(
    "genserve_route_latency_seconds",
    "histogram",
    "Time to answer a request to a route beyond generate, from validation to the result.",
    ("model", "family", "route"),
    LATENCY_BUCKETS,
)

ALL = (
    REQUEST_LATENCY,
    STEP_LATENCY,
    BATCH_IMAGES,
    BATCH_LANES,
    BATCH_REQUESTS,
    QUEUE_WAIT,
    QUEUE_DEPTH,
    QUEUE_LIMIT,
    PROVIDER,
    REPLICA_MEMORY,
    IMAGES,
    REQUESTS,
    ERRORS,
    ROUTE_REQUESTS,
    ROUTE_LATENCY,
)
