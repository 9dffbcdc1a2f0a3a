"""The request-level batcher: no wait while idle, batches from what arrives while busy, sizes
counted, callers that left dropped, errors to their own batch only, an optional linger."""

from __future__ import annotations

import asyncio

import pytest

from service.batcher import Batcher


class Model:
    """A fake network call that records its batches and runs until released."""

    def __init__(self, gated: bool = True) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_on: int | None = None

    async def run(self, items: list[int]) -> list[str]:
        self.batches.append(items)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            if self.fail_on in items:
                raise RuntimeError("network call failed")
            return [f"out-{i}" for i in items]
        finally:
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_batcher_runs_a_request_at_once_and_batches_what_arrives_meanwhile() -> None:
    async def scenario() -> tuple[list[list[int]], list[str]]:
        model = Model()
        batcher = Batcher[int, str](model.run, lambda i: 1, max_batch=8, max_concurrent=1)
        first = asyncio.ensure_future(batcher.submit(1))
        await settle()
        assert model.batches == [[1]]  # running already: nothing waited for company
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        await settle()
        assert batcher.queued == 3
        model.gate.set()
        return model.batches, list(await asyncio.gather(first, *rest))

    batches, results = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4]]
    assert results == ["out-1", "out-2", "out-3", "out-4"]


def test_batches_count_sizes_and_a_large_item_runs_alone() -> None:
    async def scenario() -> list[list[int]]:
        model = Model()
        batcher = Batcher[int, str](model.run, lambda i: i, max_batch=10, max_concurrent=1)
        blocker = asyncio.ensure_future(batcher.submit(1))
        await settle()
        # queued while the first runs: 6 + 3 fit (9); 5 does not and waits; 2 fits beside it later
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (6, 5, 3, 2, 12)]
        await settle()
        model.gate.set()
        await asyncio.gather(blocker, *queued)
        return model.batches

    assert asyncio.run(scenario()) == [[1], [6, 3], [5, 2], [12]]


def test_at_most_max_concurrent_batches_run_at_once() -> None:
    async def scenario() -> Model:
        model = Model()
        batcher = Batcher[int, str](model.run, lambda i: 1, max_batch=1, max_concurrent=2)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
        await settle()
        assert model.running == 2
        model.gate.set()
        await asyncio.gather(*calls)
        return model

    model = asyncio.run(scenario())
    assert model.most_running == 2 and len(model.batches) == 6


def test_a_caller_that_left_before_its_batch_is_not_computed() -> None:
    async def scenario() -> list[list[int]]:
        model = Model()
        batcher = Batcher[int, str](model.run, lambda i: 1, max_batch=8, max_concurrent=1)
        blocker = asyncio.ensure_future(batcher.submit(1))
        await settle()
        gone = asyncio.ensure_future(batcher.submit(2))
        stays = asyncio.ensure_future(batcher.submit(3))
        await settle()
        gone.cancel()
        model.gate.set()
        await asyncio.gather(blocker, stays)
        return model.batches

    assert asyncio.run(scenario()) == [[1], [3]]


def test_a_failing_batch_fails_its_own_callers_only() -> None:
    async def scenario() -> tuple[BaseException | str, ...]:
        model = Model(gated=False)
        model.fail_on = 2
        batcher = Batcher[int, str](model.run, lambda i: 1, max_batch=1, max_concurrent=1)
        return tuple(await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True))

    first, failed, third = asyncio.run(scenario())
    assert first == "out-1" and third == "out-3"
    assert isinstance(failed, RuntimeError)


def test_linger_waits_for_a_fuller_batch_and_stops_once_it_is_full() -> None:
    async def scenario(linger_s: float) -> list[list[int]]:
        model = Model(gated=False)
        batcher = Batcher[int, str](model.run, lambda i: 1, max_batch=2, max_concurrent=1, linger_s=linger_s)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.wait_for(asyncio.gather(first, second), 5)  # full at 2: no waiting out the linger
        return model.batches

    assert asyncio.run(scenario(linger_s=30.0)) == [[1, 2]]
    assert asyncio.run(scenario(linger_s=0.0)) == [[1], [2]]


def test_bad_settings_are_refused() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch"):
        Batcher[int, int](run, lambda i: 1, max_batch=0)
    with pytest.raises(ValueError, match="linger_s"):
        Batcher[int, int](run, lambda i: 1, linger_s=-1)
