"""StepPace: iteration time by batch size, read where measured and over-estimated beyond."""

from __future__ import annotations

import pytest

from service.pace import STALE_S, StepPace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pace_with(*bands: tuple[int, float], clock: Clock | None = None) -> StepPace:
    pace = StepPace(clock or Clock())
    for rows, seconds in bands:
        pace.observe(rows, seconds)
    return pace


def test_nothing_measured_reads_as_unknown() -> None:
    pace = StepPace()
    assert not pace.measured
    assert pace.iteration_seconds(4) is None and pace.drain_seconds(100, 10, 64) is None
    assert pace.drain_seconds(0, 0, 64) is None  # autoscaling reads None as "no pace yet"
    pace.observe(4, 0.01)
    assert pace.drain_seconds(0, 0, 64) == 0.0


def test_between_measured_bands_the_time_is_linear_and_beyond_them_over_estimated() -> None:
    pace = pace_with((2, 0.010), (32, 0.040))  # 5 ms fixed cost plus 1 ms per row... between 2 and 32
    assert pace.iteration_seconds(2) == pytest.approx(0.010)
    assert pace.iteration_seconds(17) == pytest.approx(0.025)
    assert pace.iteration_seconds(32) == pytest.approx(0.040)
    # A single row costs no less than the smallest band measured: its fixed cost is unknown.
    assert pace.iteration_seconds(1) == pytest.approx(0.010)
    # Beyond the largest band, no more rows per second than it did.
    assert pace.iteration_seconds(64) == pytest.approx(0.080)
    # The least it could be (what a definitive refusal reads): below the smallest band, its rows/s.
    assert pace.iteration_seconds(1, least=True) == pytest.approx(0.005)
    assert pace.iteration_seconds(17, least=True) == pytest.approx(0.010)  # no less than 2 rows took
    assert pace.drain_seconds(1000, 1000, 64, least=True) == pytest.approx(5.0)


def test_each_band_averages_its_own_iterations() -> None:
    pace = pace_with((8, 0.010), (1, 0.005))
    pace.observe(12, 0.014)  # 8-15 rows are one band: its point moves a fifth of the way
    assert pace.iteration_seconds(8.8) == pytest.approx(0.0108)
    assert pace.iteration_seconds(1) == pytest.approx(0.005)  # the other band is untouched
    pace.observe(16, 0.030)  # 16-31 rows: a band of its own
    assert pace.iteration_seconds(16) == pytest.approx(0.030)


def test_a_band_not_run_lately_is_no_longer_read() -> None:
    clock = Clock()
    pace = pace_with((1, 0.005), clock=clock)
    clock.now += STALE_S / 2
    pace.observe(64, 0.064)
    clock.now += STALE_S / 2 + 1  # the 1-row band is stale now, the 64-row band is not
    assert pace.iteration_seconds(1) == pytest.approx(0.064)
    clock.now += STALE_S
    assert not pace.measured
    pace.observe(64, 0.128)  # a stale band starts again from the new iteration
    assert pace.iteration_seconds(64) == pytest.approx(0.128)


def test_queued_work_takes_as_many_iterations_as_its_longest_lane_or_its_rows_need() -> None:
    pace = pace_with((1, 0.004), (64, 0.067))  # 3 ms fixed cost, 1 ms per row
    # 16 lanes x 800 steps: 800 iterations of 16 rows, not 12,800 rows at the 1-row pace.
    assert pace.drain_seconds(16 * 800, 800, 64) == pytest.approx(800 * 0.019)
    # One lane of 1000 steps: 1000 iterations of one row, not 1000 rows at the 64-row pace.
    assert pace.drain_seconds(1000, 1000, 64) == pytest.approx(1000 * 0.004)
    # More rows than fit in a batch: full batches.
    assert pace.drain_seconds(640 * 10, 10, 64) == pytest.approx(100 * 0.067)


def test_the_least_time_is_the_fastest_run_never_goes_stale_and_is_not_a_typical_time() -> None:
    clock = Clock()
    pace = StepPace(clock)
    pace.observe_least(1, 0.003)  # the warm-up: bare network calls
    pace.observe_least(64, 0.060)
    assert not pace.measured and pace.drain_seconds(100, 10, 64) is None
    pace.observe(64, 0.090)  # a slow spell: the typical time moves, the least does not
    assert pace.iteration_seconds(64) == pytest.approx(0.090)
    assert pace.iteration_seconds(64, least=True) == pytest.approx(0.060)
    pace.observe(64, 0.050)
    assert pace.iteration_seconds(64, least=True) == pytest.approx(0.050)
    clock.now += 10 * STALE_S
    assert not pace.measured and pace.iteration_seconds(64, least=True) == pytest.approx(0.050)
    # Beyond the largest band the least is that band's time: more rows can only cost more.
    assert pace.iteration_seconds(128, least=True) == pytest.approx(0.050)
