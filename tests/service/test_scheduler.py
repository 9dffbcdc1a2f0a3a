"""StepScheduler: mixed jobs share network calls, stay deterministic, and are fair, bounded and cancellable."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import DeadlineExceeded, Overloaded, TooCostly
from service.jobs import DiffusionJob
from service.pace import StepPace
from service.registry import LoadedModel, load_model
from service.scheduler import IDLE_RETIMES, StepScheduler
from service.stats import StepStats


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir / "tiny-diffusion", device="cpu")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def measured(s: StepScheduler, *bands: tuple[int, float]) -> None:
    """As if the replica had measured these (rows, seconds per iteration) bands just now."""
    s.pace = StepPace()
    for rows, seconds in bands:
        s.pace.observe(rows, seconds)


AT_100_ROWS_PER_S = ((1, 0.01), (4, 0.04))  # no fixed cost: 100 rows/s at every batch size


async def _alone(model: LoadedModel, job: DiffusionJob, max_batch: int = 64) -> np.ndarray:
    s = StepScheduler(model, max_batch=max_batch)
    try:
        return (await s.submit(job)).images
    finally:
        await s.close()


JOBS = [
    DiffusionJob(seed=1, n=3, steps=10, sampler="dpmpp_2m", label=3, guidance=2.0),
    DiffusionJob(seed=2, n=2, steps=25, sampler="ddim", label=None, eta=0.5),
    DiffusionJob(seed=3, n=4, steps=7, sampler="ddpm", label=9),
    DiffusionJob(seed=4, n=1, steps=50, sampler="ddim", label=0, guidance=4.0),
]


def test_mixed_jobs_share_network_calls_and_match_their_solo_runs(model: LoadedModel) -> None:
    steps: list[StepStats] = []

    async def together() -> list[np.ndarray]:
        s = StepScheduler(model, max_batch=64, on_step=steps.append)
        try:
            return [r.images for r in await asyncio.gather(*(s.submit(j) for j in JOBS))]
        finally:
            await s.close()

    batched = run(together())
    for job, images in zip(JOBS, batched, strict=True):
        assert images.shape == (job.n, 1, 28, 28)
        alone = run(_alone(model, job))
        np.testing.assert_array_equal(images, alone)  # bit-identical, whatever shares the batch
    # One network call per iteration: as many calls as the longest job has steps.
    assert len(steps) == max(j.steps for j in JOBS)
    assert steps[0].requests == len(JOBS) and steps[0].lanes == sum(j.n for j in JOBS)
    # A guided lane takes two rows.
    assert steps[0].rows == sum(j.n * (2 if j.label is not None and j.guidance != 1.0 else 1) for j in JOBS)


@pytest.mark.parametrize("max_batch", [1, 2, 5])
def test_same_images_at_any_batch_size(model: LoadedModel, max_batch: int) -> None:
    job = DiffusionJob(seed=11, n=3, steps=6, sampler="dpmpp_2m", label=4, guidance=3.0)
    reference = run(_alone(model, job, max_batch=64))
    np.testing.assert_array_equal(run(_alone(model, job, max_batch=max(max_batch, 2))), reference)


def test_different_seeds_give_different_images_and_images_differ_within_a_request(model: LoadedModel) -> None:
    a = run(_alone(model, DiffusionJob(seed=1, n=2, steps=5)))
    b = run(_alone(model, DiffusionJob(seed=2, n=2, steps=5)))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])


def test_short_request_behind_long_ones_finishes_in_about_its_own_step_count(model: LoadedModel) -> None:
    async def scenario() -> int:
        s = StepScheduler(model, max_batch=8)
        long_jobs = [
            asyncio.ensure_future(s.submit(DiffusionJob(seed=i, n=4, steps=1000, sampler="ddim"))) for i in range(2)
        ]
        await asyncio.sleep(0.05)  # the long lanes fill every row of the batch
        short = await s.submit(DiffusionJob(seed=9, n=2, steps=10, sampler="dpmpp_2m"))
        for f in long_jobs:
            f.cancel()
        await s.close()
        return short.stats.iterations

    assert run(scenario()) <= 12


def test_long_lanes_are_not_starved_by_a_stream_of_short_ones(model: LoadedModel) -> None:
    async def scenario() -> bool:
        s = StepScheduler(model, max_batch=2, aging=1.0)
        long_job = asyncio.ensure_future(s.submit(DiffusionJob(seed=0, n=1, steps=30)))
        stop = False

        async def short_stream() -> None:
            i = 0
            while not stop:
                await s.submit(DiffusionJob(seed=100 + i, n=2, steps=3))
                i += 1

        feeder = asyncio.ensure_future(short_stream())
        await asyncio.wait_for(long_job, timeout=60)
        stop = True
        await feeder
        await s.close()
        return long_job.done()

    assert run(scenario())


def test_cancelling_a_request_drops_its_lanes_within_an_iteration(model: LoadedModel) -> None:
    async def scenario() -> tuple[int, int]:
        s = StepScheduler(model, max_batch=4)
        task = asyncio.ensure_future(s.submit(DiffusionJob(seed=0, n=6, steps=1000)))
        await asyncio.sleep(0.05)
        before = s.queued_lanes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = s.queued_lanes
        await s.close()
        return before, after

    before, after = run(scenario())
    assert before == 6 and after == 0


def test_a_full_queue_refuses_with_overloaded(model: LoadedModel) -> None:
    async def scenario() -> None:
        s = StepScheduler(model, max_batch=4, max_queued_lanes=5)
        first = asyncio.ensure_future(s.submit(DiffusionJob(seed=0, n=4, steps=200)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 5"):
            await s.submit(DiffusionJob(seed=1, n=2, steps=5))
        first.cancel()
        await s.close()

    run(scenario())


def test_a_request_past_its_deadline_fails_mid_run_and_leaves_the_queue(model: LoadedModel) -> None:
    original = model.onnx.run

    def slow(output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.01)  # 1000 steps would take 10 s
        return original(output, feeds)

    async def scenario() -> tuple[int, float]:
        s = StepScheduler(model, max_batch=4)
        model.onnx.run = slow  # type: ignore[method-assign]
        t0 = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded, match="deadline"):
                await s.submit(DiffusionJob(seed=0, n=2, steps=1000, deadline=t0 + 0.2))
        finally:
            model.onnx.run = original  # type: ignore[method-assign]
        left = s.queued_lanes
        await s.close()
        return left, time.monotonic() - t0

    left, took = run(scenario())
    assert left == 0 and took < 5.0


def test_the_network_runs_off_the_event_loop(model: LoadedModel) -> None:
    threads: set[str] = set()
    original = model.onnx.run

    def spy(output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return original(output, feeds)

    async def scenario() -> None:
        s = StepScheduler(model)
        model.onnx.run = spy  # type: ignore[method-assign]
        try:
            await s.submit(DiffusionJob(seed=0, n=1, steps=3))
        finally:
            model.onnx.run = original  # type: ignore[method-assign]
            await s.close()

    run(scenario())
    assert threads and threading.main_thread().name not in threads


def test_the_scheduler_refuses_a_model_that_is_not_diffusion(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a diffusion model"):
        StepScheduler(load_model(tiny_model_dir / "tiny-gan", device="cpu"))


def test_a_request_that_cannot_finish_before_its_deadline_is_refused_at_once(model: LoadedModel) -> None:
    async def scenario() -> None:
        s = StepScheduler(model, max_batch=4)
        assert s.estimated_wait(DiffusionJob(seed=0, n=1, steps=5)) is None  # nothing measured yet: admit
        await s.submit(DiffusionJob(seed=0, n=1, steps=5))
        long = asyncio.ensure_future(s.submit(DiffusionJob(seed=1, n=4, steps=1000)))
        await asyncio.sleep(0)
        probe = DiffusionJob(seed=2, n=1, steps=10)
        wait = s.estimated_wait(probe)
        assert wait is not None and wait > 0
        queued = s.queued_lanes
        with pytest.raises(Overloaded, match="should finish") as refused:
            await s.submit(dataclasses.replace(probe, deadline=time.monotonic() + wait))
        assert refused.value.retry_after >= 1.0
        assert s.queued_lanes == queued  # a refused request leaves nothing behind
        ok = await s.submit(dataclasses.replace(probe, deadline=time.monotonic() + 4 * wait + 5))
        assert ok.images.shape[0] == 1
        long.cancel()
        await s.close()

    run(scenario())


def test_a_request_too_large_for_an_idle_replica_gets_a_definitive_422(model: LoadedModel) -> None:
    async def scenario() -> None:
        s = StepScheduler(model, max_batch=4)
        measured(s, *AT_100_ROWS_PER_S)
        job = DiffusionJob(seed=0, n=4, steps=250, deadline=time.monotonic() + 10.0)  # 1000 rows: ~10 s
        with pytest.raises(TooCostly, match="1000 network rows") as refused:
            await s.submit(job)
        assert refused.value.status == 422
        # 9 s (90% of the deadline) at 100 rows/s, with the pace's 25% allowance: about 720 rows.
        assert re.search(r"takes in one request is about 7[01]\d rows", refused.value.message)
        assert s.queued_lanes == 0
        await s.close()

    run(scenario())


def test_a_many_image_request_is_costed_at_its_own_batch_size_not_at_the_last_ones(model: LoadedModel) -> None:
    """A replica that has run 1-row and 16-row batches (3 ms fixed, 1 ms per row): 16 images x 800
    steps is 800 iterations of 16 rows, about 15 s, which a 30 s deadline allows. Read at the
    1-row pace (250 rows/s), the same 12,800 rows would be 51 s, a definitive 422."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=64)
        measured(s, (1, 0.004), (16, 0.019))
        job = DiffusionJob(seed=0, n=16, steps=800, deadline=time.monotonic() + 30.0)
        assert s.estimated_wait(job) == pytest.approx(800 * 0.019)
        assert s._admit(job) is not None
        await s.close()

    run(scenario())


def test_a_lone_long_lane_is_not_promised_a_full_batchs_pace(model: LoadedModel) -> None:
    """After full batches of 64 rows in 64 ms (1,000 rows/s), one image of 1000 steps is 1000
    iterations of one row, whose fixed cost is unmeasured. Queued work is not held to the 1 s
    that 1,000 rows/s says but to up to 64 s (each row as slow as a full batch), so the lane is
    refused while a queued request's promise stands; an idle replica takes it (no definitive
    422 from a cost it has not measured), promising it 90% of its deadline."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=64)
        measured(s, (64, 0.064))
        lone = DiffusionJob(seed=0, n=1, steps=1000, deadline=time.monotonic() + 20.0)
        assert s.estimated_wait(lone) == pytest.approx(64.0)
        promise = s._admit(lone)
        assert promise is not None and promise - time.monotonic() == pytest.approx(18.0, abs=0.1)
        queued = asyncio.ensure_future(s.submit(DiffusionJob(seed=1, n=4, steps=50, deadline=time.monotonic() + 20)))
        await asyncio.sleep(0)
        measured(s, (64, 0.064))  # the real iteration just measured is far faster
        with pytest.raises(Overloaded, match="should finish"):
            s._admit(lone)
        await queued
        await s.close()

    run(scenario())


def test_a_queued_health_probe_promises_nothing_so_it_refuses_no_request(model: LoadedModel) -> None:
    """A replica whose pace reads slow (a warm-up timed while the machine was busy): a 200-step
    image is costed at about 13 s, which its 60 s deadline allows. A queued 1-step request with a
    10 s deadline holds it to that and refuses it; a health probe with the same deadline does not
    (CI once saw a replica refuse the first request after /readyz because of its own probe)."""

    async def scenario(probe: bool) -> bool:
        """Whether the 200-step request is refused while the 1-step one is queued."""
        s = StepScheduler(model, max_batch=64)
        small = DiffusionJob(seed=1, n=1, steps=1, deadline=time.monotonic() + 10.0, probe=probe)
        queued = asyncio.ensure_future(s.submit(small))
        await asyncio.sleep(0)
        assert s.queued_lanes == 1
        measured(s, (64, 0.064))  # after the queued lane's first real call, as a busy warm-up left it
        user = DiffusionJob(seed=0, n=1, steps=200, deadline=time.monotonic() + 60.0)
        assert s.estimated_wait(user) == pytest.approx(12.8)
        try:
            s._admit(user)
            refused = False
        except Overloaded as e:
            assert "should finish" in e.message
            refused = True
        await queued
        await s.close()
        return refused

    assert run(scenario(probe=False))  # a request's promise binds
    assert not run(scenario(probe=True))  # a probe's does not


def test_the_warm_up_times_one_lane_and_a_full_batch_and_a_slow_spell_refuses_nothing_for_good(
    model: LoadedModel,
) -> None:
    """After the warm-up the least an iteration costs is known at 1 row and at `max_batch` rows
    (not a typical time: no backlog is reported from it). Then, however slow the recent
    iterations, a request that fits the deadline at the least cost is not a 422."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=8)
        s.warm_up(DiffusionJob(seed=0, n=1, steps=1))
        one, full = s.pace.iteration_seconds(1, least=True), s.pace.iteration_seconds(8, least=True)
        assert one is not None and full is not None and 0 < one <= full
        assert s.backlog_seconds is None
        for _ in range(5):
            s.pace.observe(8, 1000 * full)  # a very slow spell at full batches
        # 10 iterations: 10,000 x `full` at the spell's pace (with its allowance, past 90% of the
        # deadline), 10 x `full` at the least: admitted, since the replica is idle.
        job = DiffusionJob(seed=1, n=8, steps=10, deadline=time.monotonic() + 5000 * full)
        assert s._admit(job) is not None
        with pytest.raises(TooCostly):
            s._admit(dataclasses.replace(job, steps=1000, deadline=time.monotonic() + 100 * full))
        await s.close()

    run(scenario())


def test_an_idle_replica_times_a_full_batch_again_so_a_busy_start_up_is_not_its_least_for_good(
    model: LoadedModel,
) -> None:
    """A warm-up timed while the machine was busy (here: every call 0.2 s slower) leaves a least
    full-batch time too slow. The idle health check's re-timing replaces it with a quiet call's,
    never while lanes are queued, and only `IDLE_RETIMES` times."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=8)
        real, busy = s.model.run, [True]

        def contended(*args: object) -> object:
            if busy[0]:
                time.sleep(0.2)
            return real(*args)  # type: ignore[arg-type]

        s.model.run = contended  # type: ignore[method-assign]
        probe = DiffusionJob(seed=0, n=1, steps=1)
        s.warm_up(probe)
        slow = s.pace.iteration_seconds(8, least=True)
        assert slow is not None and slow >= 0.2
        busy[0] = False
        queued = asyncio.ensure_future(s.submit(DiffusionJob(seed=1, n=2, steps=3)))
        await asyncio.sleep(0)
        assert not await s.retime_when_idle(probe)  # lanes are queued: they go first
        await queued
        assert s.pace.iteration_seconds(8, least=True) == slow
        for _ in range(IDLE_RETIMES):
            assert await s.retime_when_idle(probe)
        quiet = s.pace.iteration_seconds(8, least=True)
        assert quiet is not None and quiet < 0.2 < slow
        assert not await s.retime_when_idle(probe)  # done: an idle replica stays idle
        await s.close()

    run(scenario())


def test_a_request_larger_than_the_usual_share_runs_on_an_idle_replica(model: LoadedModel) -> None:
    """Work beyond 35% of the deadline but well within it is admitted when nothing is queued (and
    refused with a 503 while the queue would delay it): it can finish in time, so no 422."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=4)
        measured(s, *AT_100_ROWS_PER_S)
        job = DiffusionJob(seed=0, n=1, steps=5, deadline=time.monotonic() + 0.12)  # 5 rows: ~50 ms, 42% of it
        done = await s.submit(job)
        assert done.images.shape[0] == 1
        await s.close()

    run(scenario())


def test_admission_keeps_the_promise_made_to_requests_already_queued(model: LoadedModel) -> None:
    """A new request, however distant its own deadline, is refused if its work would delay a
    queued request past the finish admission promised it (short lanes run first)."""

    async def scenario() -> None:
        s = StepScheduler(model, max_batch=4)
        measured(s, *AT_100_ROWS_PER_S)
        first = asyncio.ensure_future(s.submit(DiffusionJob(seed=0, n=1, steps=50, deadline=time.monotonic() + 10)))
        await asyncio.sleep(0)
        measured(s, *AT_100_ROWS_PER_S)  # the real iteration just measured is far faster
        late = DiffusionJob(seed=1, n=1, steps=400, deadline=time.monotonic() + 10_000)
        with pytest.raises(Overloaded, match="should finish"):
            await s.submit(late)  # alone 4 s is fine for it; 4.5 s of work breaks the first's 3.5 s
        await first
        await s.close()

    run(scenario())


def test_queue_time_ends_when_the_first_network_call_begins(model: LoadedModel) -> None:
    """`queue_seconds` is the wait before the first network call (the schema's words), not up to its
    end: a one-step request on an idle scheduler waits almost nothing and spends its time computing."""
    original = model.onnx.run

    def slow(output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.2)
        return original(output, feeds)

    async def scenario() -> tuple[float, float]:
        s = StepScheduler(model, max_batch=4)
        model.onnx.run = slow  # type: ignore[method-assign]
        try:
            res = await s.submit(DiffusionJob(seed=0, n=1, steps=1, sampler="ddim"))
        finally:
            model.onnx.run = original  # type: ignore[method-assign]
            await s.close()
        return res.stats.queue_seconds, res.stats.total_seconds

    queue, total = run(scenario())
    assert queue < 0.1 <= 0.2 <= total
