"""The text-to-image bench's two batching modes on the tiny random-weight reference pipeline:
both finish every request of a replayed workload with the same images' work, request-level
holds a short request behind a long one that started first, and the report shows both."""

from __future__ import annotations

import asyncio

import pytest

from loadtests.bench_text2image import STEPS, Arrival, report, request_level, step_level, summary, workload
from service.jobs import DiffusionJob
from service.registry import load_model
from service.text2image import TextPipeline
from training.sd_layout import tiny_reference


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> TextPipeline:
    root = tmp_path_factory.mktemp("pipe")
    tiny_reference(root / "tiny")
    model = load_model(root / "tiny", device="cpu", intra_op_threads=1)
    assert model.pipeline is not None
    return model.pipeline


def test_the_workload_is_seeded_and_mixed() -> None:
    a, b = (
        workload(["red apple", "dog face"], rate=20.0, seconds=5.0, seed=3),
        workload(["red apple", "dog face"], 20.0, 5.0, 3),
    )
    assert a == b and a != workload(["red apple", "dog face"], 20.0, 5.0, 4) and 60 < len(a) < 140
    assert {x.job.steps for x in a} == set(STEPS) and {x.job.sampler for x in a} == {"dpmpp_2m", "ddim"}
    assert {x.job.prompt for x in a} == {"red apple", "dog face"} and all(0 < x.at < 5.0 for x in a)


def test_request_level_makes_a_short_request_wait_for_the_batch_ahead(pipeline: TextPipeline) -> None:
    long = DiffusionJob(seed=1, n=1, steps=500, sampler="ddim", guidance=1.0, prompt="dog face")
    short = DiffusionJob(seed=2, n=1, steps=2, sampler="ddim", guidance=1.0, prompt="red apple")
    arrivals = [Arrival(0.0, long), Arrival(0.05, short)]
    step_lat, _ = asyncio.run(step_level(pipeline, arrivals))
    req_lat, _ = asyncio.run(request_level(pipeline, arrivals))
    assert len(step_lat) == len(req_lat) == 2
    assert step_lat[1] < step_lat[0] / 3, "step-level: the short request joins and leaves early"
    assert req_lat[1] > req_lat[0] / 2, "request-level: it waits for the long one's batch to finish"


def test_summary_and_report() -> None:
    arrivals = [Arrival(0.0, DiffusionJob(seed=i, n=2, steps=s, prompt="x")) for i, s in enumerate((10, 20, 50, 10))]
    row = summary(arrivals, [1.0, 2.0, 4.0, 3.0], elapsed=5.0)
    assert row["image_steps_per_s"] == pytest.approx(2 * 90 / 5.0) and row["p50_s_by_steps"]["10"] == 2.0
    data = {"model": "m", "machine": "x", "seconds": 5.0, "all_at_once": {"requests": 4, "step_level": row,
            "request_level": row, "throughput_ratio_step_over_request": 1.0}, "results": [
            {"load": 0.5, "offered_requests_per_s": 1.0, "step_level": row, "request_level": row,
             "p50_ratio_request_over_step": 1.0, "p95_ratio_request_over_step": 1.0}]}  # fmt: skip
    text = report(data)
    assert "| all at once | - | step-level | 4 | 36 |" in text and "| 50% | 1.00 | request-level |" in text
