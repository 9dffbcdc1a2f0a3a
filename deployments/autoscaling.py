"""Autoscaling for the step-level (diffusion) deployments on the work their replicas hold.

Serve's default policy counts ongoing requests, so one 64-image 1000-step request weighs as
much as one 1-image 10-step request, 6,400 times less work. Each diffusion replica reports what
it holds instead (`DiffusionReplica.record_autoscaling_stats`): the network rows still to run
(images x remaining steps, two rows per guided image) and those rows in seconds at the pace the
replica measures. `QueuedWorkPolicy` asks for as many replicas as it takes for that backlog to be
at most `target_backlog_s` per replica. Serve applies the deployment's `min_replicas`,
`max_replicas`, `upscale_delay_s`, `downscale_delay_s` and scaling factors on top.

In a Serve config (deployments/serve_config.yaml does this for the diffusion models):

    autoscaling_config:
      target_ongoing_requests: 16   # used until the replicas have reported their backlog
      policy:
        policy_function: deployments.autoscaling:QueuedWorkPolicy
        policy_kwargs: {target_backlog_s: 2.0}

Measured against the default policy in docs/scale-out.md (`loadtests/scale_out.py`).
"""

from __future__ import annotations

from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

QUEUED_ROWS = "queued_rows"
BACKLOG_SECONDS = "backlog_seconds"


class QueuedWorkPolicy:
    """Replicas = the deployment's queued work in seconds / `target_backlog_s`.

    Before any replica has reported a backlog (no pace measured yet), Serve's own rule on
    ongoing requests decides, so a cold deployment still scales on its first burst."""

    def __init__(self, target_backlog_s: float = 2.0) -> None:
        if target_backlog_s <= 0:
            raise ValueError(f"target_backlog_s must be positive, got {target_backlog_s}")
        self.target_backlog_s = target_backlog_s

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        backlog = (ctx.aggregated_metrics or {}).get(BACKLOG_SECONDS)
        if not backlog:
            desired, state = replica_queue_length_autoscaling_policy(ctx)
            return desired, {**state, "signal": "ongoing_requests"}
        total = sum(backlog.values())
        return total / self.target_backlog_s, {"signal": BACKLOG_SECONDS, BACKLOG_SECONDS: total}
