"""Overload, faults and an abandoned request against a real genserve (loadtests/chaos.py, run
as `make chaos` runs it, with shorter fault windows): nothing lost, every refusal a 503 with
Retry-After, bounded recovery and memory. Starts its own Ray (and a multi-node cluster), in a
subprocess, because it kills replicas and a node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("chaos")
    cmd = [sys.executable, "-m", "loadtests.chaos", "--node-loss", "--fault-s", "20", "--json", str(out / "r.json"),
           "--out", str(out / "reliability.md")]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=1200)
    assert (out / "reliability.md").read_text().startswith("# Reliability")
    return json.loads((out / "r.json").read_text())  # type: ignore[no-any-return]


def test_nothing_is_lost_anywhere(report: dict) -> None:  # type: ignore[type-arg]
    assert report["lost_total"] == 0
    for name in ("overload", "replica_kill", "ingress_kill", "node_loss"):
        r = report[name]
        assert r["lost"] == 0 and r["non_json_errors"] == 0, (name, r)
        assert r["served"] + r["refused_503"] + r["other_errors"] + r["connection_resets"] == r["sent"], (name, r)


def test_overload_at_three_times_saturation_refuses_fast_and_recovers(report: dict) -> None:  # type: ignore[type-arg]
    o = report["overload"]
    assert o["offered_req_per_s"] >= 2.9 * o["saturation_req_per_s"] and o["seconds"] >= 120
    assert o["served"] > 0 and o["refused_503"] > 0
    assert o["refused_503_without_retry_after"] == 0 and o["other_errors"] == 0 and o["connection_resets"] == 0
    assert o["max_any_answer_s"] <= report["deadline_s"]  # every answer within the request's deadline
    assert o["recovery_s"] is not None and o["recovery_s"] <= 30
    start, peak = o["memory_mib_start"]["model-diffusion"], o["memory_mib_peak"]["model-diffusion"]
    assert peak <= start + 512, (start, peak)  # queue bounds hold memory


def test_killed_replicas_and_node_come_back_in_bounded_time(report: dict) -> None:  # type: ignore[type-arg]
    for name in ("replica_kill", "ingress_kill", "node_loss"):
        r = report[name]
        assert r["recovery_s"] is not None and r["recovery_s"] <= 90, (name, r)
        assert r["served"] > 0
        assert set(r["error_statuses"]) <= {"500", "502", "504"}, (name, r)  # any other error is a JSON 5xx
    assert report["replica_kill"]["killed_pids"] and report["ingress_kill"]["killed_pids"]
    assert report["node_loss"]["diffusion_moved_to_other_worker"]


def test_an_abandoned_request_frees_its_lanes(report: dict) -> None:  # type: ignore[type-arg]
    d = report["disconnect"]
    assert d["answered_before_disconnect"] is None, d  # it was running, not refused or done
    # the request's lanes over the idle baseline, and Serve's 1-lane health probe if it coincided
    depth = d["queue_depth_before_disconnect"]
    assert depth is not None and d["lanes"] <= depth <= d["lanes"] + 1, d
    assert d["queue_empty_after_s"] is not None and d["queue_empty_after_s"] <= 3
    assert d["next_10_step_request_s"] is not None and d["next_10_step_request_s"] < 5
