"""Model replicas outside Serve, on the tiny models: clients that leave, and the health probe.
(`@serve.batch` itself runs only inside Serve; the integration tests cover that path.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from deployments import replicas
from deployments.autoscaling import BACKLOG_SECONDS, QUEUED_ROWS
from deployments.replicas import DiffusionReplica, LatentModelReplica, _Ticket
from deployments.routes import Images
from service.errors import GenserveError
from service.jobs import DiffusionJob, LatentJob


def test_a_gan_request_whose_client_left_is_not_computed(tiny_model_dir: Path) -> None:
    replica = LatentModelReplica(str(tiny_model_dir), "tiny-gan", "cpu")
    computed: list[list[LatentJob]] = []
    run = replica._run

    def recording(tickets: list[_Ticket]) -> Any:
        computed.append([t.job for t in tickets])
        return run(tickets)

    replica._run = recording  # type: ignore[method-assign]
    gone = _Ticket(LatentJob(seed=1, n=3), time.monotonic(), False, gone=True)
    live = _Ticket(LatentJob(seed=2, n=2), time.monotonic(), False)
    out = asyncio.run(replica._run_batch([gone, live]))
    assert isinstance(out[0], GenserveError) and isinstance(out[1], Images) and len(out[1].pngs) == 2
    assert computed == [[live.job]]  # the departed client's 3 images were never computed


def test_health_fails_when_a_replica_cannot_answer_a_one_image_request(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = DiffusionReplica(str(tiny_model_dir), "tiny-diffusion", "cpu")
    asyncio.run(replica.check_health())  # a healthy replica answers its probe
    monkeypatch.setattr(replicas, "HEALTH_PROBE_TIMEOUT_S", 0.2)

    async def stuck(*args: Any) -> Images:
        await asyncio.sleep(3600)
        raise AssertionError

    replica._generate = stuck  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        asyncio.run(replica.check_health())
    with pytest.raises(TimeoutError):
        asyncio.run(replica.ready())


def test_a_diffusion_replica_reports_the_work_it_holds_for_autoscaling(tiny_model_dir: Path) -> None:
    """`record_autoscaling_stats`: no backlog in seconds before any step (no pace yet); while a
    request runs, its rows still to run, and those rows at the replica's measured pace; nothing
    once it is done."""
    replica = DiffusionReplica(str(tiny_model_dir), "tiny-diffusion", "cpu")

    async def scenario() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        before = await replica.record_autoscaling_stats()
        job = DiffusionJob(seed=3, n=4, steps=400, sampler="ddim", label=1)
        running = asyncio.create_task(replica.generate(job, time.time() + 60, False))
        while replica.scheduler.backlog_seconds is None:
            await asyncio.sleep(0.005)
        during = await replica.record_autoscaling_stats()
        await running
        return before, during, await replica.record_autoscaling_stats()

    before, during, after = asyncio.run(scenario())
    assert before == {QUEUED_ROWS: 0.0}
    rows = during[QUEUED_ROWS]
    assert 0 < rows < 4 * 400 * 2 and rows % 2 == 0  # guided: two rows per image-step
    assert replica.scheduler.pace.measured and during[BACKLOG_SECONDS] > 0
    assert after[QUEUED_ROWS] == 0.0 and after[BACKLOG_SECONDS] == 0.0
