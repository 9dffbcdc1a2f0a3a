"""Metric names and labels stay bounded."""

from __future__ import annotations

from service import metrics as names


def test_step_counts_fall_into_five_bands() -> None:
    bands = {s: names.steps_band(s) for s in (0, 1, 4, 9, 10, 20, 49, 50, 199, 200, 1000)}
    assert bands == {
        0: "none", 1: "1-9", 4: "1-9", 9: "1-9", 10: "10-49", 20: "10-49", 49: "10-49", 50: "50-199",
        199: "50-199", 200: "200+", 1000: "200+",
    }  # fmt: skip
    assert {names.steps_band(s) for s in range(0, 1001)} == set(names.STEP_BANDS)


def test_no_metric_takes_a_raw_step_count_and_latency_buckets_reach_past_every_budget() -> None:
    assert all("steps" not in spec.labels for spec in names.ALL)
    assert len({spec.name for spec in names.ALL}) == len(names.ALL)
    assert names.LATENCY_BUCKETS[-1] > 2 * 120  # the 200+ band's 120 s budget sits inside the buckets
