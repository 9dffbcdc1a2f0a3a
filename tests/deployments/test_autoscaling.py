"""The queued-work autoscaling policy on hand-made contexts (Serve's own context class): replicas
for the reported backlog, Serve's ongoing-request rule until there is one, and through Serve's
wrapper (bounds and delays) as the controller calls it."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import BACKLOG_SECONDS, QUEUED_ROWS, QueuedWorkPolicy

DEPLOYMENT = DeploymentID(name="model-diffusion", app_name="model-diffusion")


def context(backlogs: list[float] | None, ongoing: float, replicas: int = 2, **config: Any) -> AutoscalingContext:
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(replicas)]
    metrics = None if backlogs is None else {
        BACKLOG_SECONDS: dict(zip(ids, backlogs, strict=True)),
        QUEUED_ROWS: dict.fromkeys(ids, 100.0),
    }  # fmt: skip
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name, app_name=DEPLOYMENT.app_name,
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=ids,
        total_num_requests=ongoing, total_queued_requests=0.0,
        aggregated_metrics=metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=config.get("min_replicas", 1),
        capacity_adjusted_max_replicas=config.get("max_replicas", 8),
        policy_state={}, last_scale_up_time=None, last_scale_down_time=None, current_time=0.0,
        config=AutoscalingConfig(**{"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16, **config}),
    )  # fmt: skip


def test_replicas_follow_the_backlog_not_the_request_count() -> None:
    policy = QueuedWorkPolicy(target_backlog_s=2.0)
    # two replicas holding 5 s and 7 s of work, from just 2 ongoing requests: six replicas' worth
    desired, state = policy(context([5.0, 7.0], ongoing=2))
    assert desired == pytest.approx(6.0) and state == {"signal": BACKLOG_SECONDS, BACKLOG_SECONDS: 12.0}
    # 64 quick requests holding 1 s in all: half a replica's worth (Serve rounds up, to min 1)
    assert policy(context([0.5, 0.5], ongoing=64))[0] == pytest.approx(0.5)


def test_before_any_backlog_is_reported_serves_own_rule_decides() -> None:
    policy = QueuedWorkPolicy(target_backlog_s=2.0)
    desired, state = policy(context(None, ongoing=64))  # 64 ongoing / 16 per replica
    assert desired == pytest.approx(4.0) and state["signal"] == "ongoing_requests"


def test_through_serves_wrapper_the_delays_and_factors_apply() -> None:
    """The wrapper the controller puts around a custom policy (it then clamps the answer to
    min_replicas..max_replicas itself)."""
    wrapped = _apply_autoscaling_config(QueuedWorkPolicy(target_backlog_s=1.0))
    assert wrapped(context([3.0, 2.5], ongoing=2, upscale_delay_s=0))[0] == 6  # 5.5 rounded up
    assert wrapped(context([3.0, 2.5], ongoing=2, upscale_delay_s=60))[0] == 2  # the upscale delay holds it
    halved = context([3.0, 2.5], ongoing=2, upscale_delay_s=0, upscaling_factor=0.5)
    assert wrapped(halved)[0] == 4  # 2 + 0.5 x (5.5 - 2), rounded up
    assert (
        wrapped(context([0.0, 0.0], ongoing=0, downscale_delay_s=0))[0] == 1
    )  # idle: down to one (to zero only from one, by its own delay)


def test_a_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="target_backlog_s"):
        QueuedWorkPolicy(target_backlog_s=0)
