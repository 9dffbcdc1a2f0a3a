"""Plain statistics records; the Ray layer turns them into metrics (names in `service.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepStats:
    """One network call of the step scheduler (or of a GAN/VAE batch)."""

    rows: int
    lanes: int
    requests: int
    seconds: float


@dataclass(frozen=True)
class RequestStats:
    """One request's life: time queued before its first network call, and in all."""

    queue_seconds: float
    total_seconds: float
    iterations: int
