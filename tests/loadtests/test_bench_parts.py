"""The benchmark's parts that must be right for its figures to mean anything: request
accounting, percentiles, FLOP counting, the ratios and the report; and the plain FastAPI peer
answering the same route shape under the open-loop driver."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from loadtests.bench import (
    MIN_POINT_REQUESTS,
    RESTARTS,
    SERVE_HOUSEKEEPING_DEFAULTS,
    WORKLOADS,
    genserve_call,
    on_live_server,
    point_seconds,
    round_order,
    triton_call,
)
from loadtests.bench_ratios import ratios
from loadtests.bench_report import (
    LATENCY_FIGURE,
    headline,
    markdown,
    one_hop_targets,
    plot_latency,
    restarts,
    rounds,
)
from loadtests.flops import flops_per_row
from loadtests.harness import free_port, wait_http
from loadtests.loadgen import Outcome, open_loop, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_summary_counts_every_request_and_takes_percentiles_of_the_served() -> None:
    outcomes = [Outcome("a", i * 0.1, 0.01 * (i + 1), 200, 2) for i in range(100)]
    outcomes += [Outcome("b", 1.0, 0.5, 503, 0, True, "1"), Outcome("b", 1.0, 30.0, 0, 0, False, None, "Timeout")]
    outcomes.append(Outcome("b", 2.0, 0.2, 500, 0, json_error=False))
    s = summarize(outcomes)
    assert (s.sent, s.ok, s.refused, s.errors, s.no_answer, s.non_json_errors) == (103, 100, 1, 1, 1, 1)
    assert s.p50 == pytest.approx(np.percentile([0.01 * (i + 1) for i in range(100)], 50))
    assert s.images_per_s == pytest.approx(200 / s.seconds)
    assert s.seconds == pytest.approx(31.0)  # first send (0.0) to last answer (1.0 + 30.0)
    only_b = summarize(outcomes, "b")
    assert only_b.sent == 3 and only_b.ok == 0 and only_b.p99 is None


def _tiny_net(path: Path) -> None:
    """Conv 1->4 (3x3, pad 1) on 1x1x8x8, flatten, MatMul 256->10."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], np.zeros(36, np.float32).tolist())
    m = helper.make_tensor("m", TensorProto.FLOAT, [256, 10], np.zeros(2560, np.float32).tolist())
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 256])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [w, m, shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_flops_count_conv_and_matmul_multiply_adds(tmp_path: Path) -> None:
    _tiny_net(tmp_path / "tiny.onnx")
    conv = 2 * (4 * 8 * 8) * (1 * 3 * 3)
    matmul = 2 * 10 * 256
    assert flops_per_row(tmp_path / "tiny.onnx", {"x": np.zeros((1, 1, 8, 8), np.float32)}) == conv + matmul


def _entry(
    images_per_s: float, p99: float, rates: tuple[float, ...], tags: dict[str, Any] | None = None
) -> dict[str, Any]:
    summary = {"images_per_s": images_per_s, "requests_per_s": images_per_s, "p50": p99 / 2, "p95": p99, "p99": p99,
               "sent": 10, "ok": 10, "refused": 0, "errors": 0, "no_answer": 0, "non_json_errors": 0, "seconds": 1.0,
               "max_latency": p99, "statuses": {"200": 10}}  # fmt: skip
    point_tags = {t: dict(summary, p50=v, p99=v) for t, v in (tags or {}).items()}
    return {
        "saturation": summary,
        "saturation_tags": {t: dict(summary, images_per_s=images_per_s / 4) for t in tags or {}},
        "cpu_ms_per_request": {"bench": 1.0, "model-gan": 2.0},
        "ladder": [{"rate": r, "summary": summary, "tags": point_tags} for r in rates],
    }


def test_ratios_and_report_from_a_known_report() -> None:
    mixed_rates = WORKLOADS["mixed"].rates
    report: dict[str, Any] = {
        "command": "python -m loadtests.bench",
        "machine": {"cpu": "x86_64", "cores": 2, "python": "3.11"},
        "settings": {"seconds_per_point": 12, "min_requests_per_point": 200, "concurrency": 32, "ort_threads": 2},
        "workloads": {k: {"about": w.about, "rates": w.rates, "seconds": w.seconds} for k, w in WORKLOADS.items()},
        "compute": {"matmul_gflops": {"numpy": 200.0, "onnxruntime": 100.0}, "diffusion_mflop_per_row": 250.0},
        "library_images_per_s": {"gan": 1000.0},
        "http_images_per_s": {"gan": 800.0},
        "peers": {
            "genserve": {"about": "g", "results": {
                "gan-1": _entry(80.0, 0.1, WORKLOADS["gan-1"].rates),
                "diffusion-20": _entry(20.0, 0.5, WORKLOADS["diffusion-20"].rates),
                "mixed": _entry(4.0, 1.0, mixed_rates, {"10": 0.2, "200": 5.0}),
            }},
            "plain": {"about": "p", "results": {"gan-1": _entry(400.0, 0.02, WORKLOADS["gan-1"].rates)}},
            "reqlevel": {"about": "r", "results": {"mixed": _entry(2.0, 1.0, mixed_rates, {"10": 1.0, "200": 5.0})}},
            "empty": {"about": "e", "results": {"gan-1": _entry(100.0, 0.1, ())}},
            "plain-empty": {"about": "pe", "results": {"gan-1": _entry(1000.0, 0.1, ())}},
            "all-models": {"about": "a", "results": {"gan-1": _entry(60.0, 0.1, ())}},
            "inline-metrics": {"about": "i", "results": {"gan-1": _entry(64.0, 0.1, ())}},
            "fastapi-router": {"about": "f", "results": {"gan-1": {
                **_entry(40.0, 0.1, ()), "cpu_ms_per_request": {"model-gan": 2.5, "loadtests.bench": 0.4},
            }}},
            "ray-defaults": {"about": "d", "results": {"gan-1": {
                **_entry(50.0, 0.1, ()),
                "cpu_ms_per_request": {"model-gan": 2.0, "haproxy": 0.2, "loadtests.bench": 0.4, "ServeController": 0.5, "other": 0.5},
            }}},
        },
    }  # fmt: skip
    r = ratios(report)
    assert r["genserve/plain/gan-1"]["throughput"] == pytest.approx(0.2)
    assert r["genserve/plain/gan-1"]["p99_lower_by"]["25"] == pytest.approx(0.2)
    assert r["gan-1/stack-limit"] == pytest.approx(0.8)
    assert r["ray-stack/plain-stack"] == pytest.approx(0.1)
    assert r["http/library"]["gan"] == pytest.approx(0.8)
    # image-steps: genserve (10 + 200) * 1.0, reqlevel (10 + 200) * 0.5
    assert r["step/request-level/mixed"]["throughput"] == pytest.approx(2.0)
    assert r["step/request-level/mixed"]["p50_10_step_lower_by"][str(mixed_rates[0])] == pytest.approx(5.0)
    assert r["diffusion_flops"]["fraction_of_peak"] == pytest.approx(20 * 20 * 250 / 1e3 / 200)
    assert r["all-models/genserve"] == {"gan-1": pytest.approx(0.75)}
    assert r["recorder/inline-metrics"] == {"gan-1": pytest.approx(1.25)}
    assert r["housekeeping/ray-defaults"] == {"gan-1": pytest.approx(1.6)}
    direct = r["direct/fastapi-router"]["gan-1"]
    assert direct["images_per_s"] == pytest.approx(2.0)
    assert direct["replica_cpu_ms"] == {"genserve": pytest.approx(2.0), "fastapi-router": pytest.approx(2.5)}
    # Ray's own processes only (not the replica, HAProxy or the load generator), per second
    cpu = r["housekeeping-cpu/ray-defaults"]["gan-1"]
    assert cpu["ray-defaults"] == pytest.approx((0.5 + 0.5) * 50) and cpu["genserve"] == pytest.approx(1.0 * 80)
    assert cpu["ratio"] == pytest.approx(50 / 80)
    report["ratios"] = r
    text = markdown(report)
    assert "| GAN requests/s / empty-deployment requests/s: >= 0.8 | 0.80 | met |" in text
    assert "genserve / plain, gan-1: >= 1.0 | 0.20 | **missed** |" in text
    # The one-hop targets: gan-1 against plain at its own bar, p99 as genserve's multiple of plain's.
    assert "| images/s at saturation, genserve / plain, gan-1: >= 0.8 | 0.20 | **missed** |" in text
    assert (
        "| p99 at equal offered load, genserve / plain, gan-1, every rate: <= 1.5x | 5.00x (at 25 req/s) | **missed** |"
        in text
    )
    assert "| images/s at saturation, genserve / triton, mixed: >= 1 | – | not measured |" in text
    assert "0.75 of the two-model figure for gan-1" in text
    assert "(peer `inline-metrics`), images/s at saturation: 1.25x for gan-1." in text
    assert (
        "(peer `fastapi-router`), GAN 1 image: images/s at saturation 2.00x, the GAN replica's CPU per request "
        "2.00 against 2.50 ms." in text
    )
    assert (
        "80 against 50 ms per second for gan-1. Images/s at saturation, genserve / ray-defaults: 1.60x for gan-1"
        in text
    )
    assert "None" not in text
    assert f"![latency against offered load, per peer]({LATENCY_FIGURE})" in text
    assert "at each rate for 12 s or 200 / rate s (the time 200 arrivals take on average), whichever is longer," in text
    assert "a p99 rests on the 10 to 10 requests sent in it" in text


def test_throughput_targets_are_judged_on_the_median_of_the_saturation_rounds() -> None:
    """A run with saturation rounds: each round's ratio is taken within the round, the targets,
    the README's headline and the report's verdicts use their median, and the report shows every
    round beside it."""
    rates = WORKLOADS["gan-1"].rates
    report: dict[str, Any] = {
        "settings": {"round_order": ["plain", "genserve"]},
        "workloads": {"gan-1": {"rates": rates}},
        "compute": {},
        "peers": {
            "genserve": {"results": {"gan-1": _entry(80.0, 0.1, rates)}},
            "plain": {"results": {"gan-1": _entry(400.0, 0.1, rates)}},
        },
        "rounds": [
            {"round": 2, "order": ["genserve", "plain"], "saturation": {
                "genserve": {"gan-1": {"images_per_s": 90.0}}, "plain": {"gan-1": {"images_per_s": 100.0}}},
             "ladder": {"genserve": {"gan-1": _entry(0, 0.3, rates[:1])["ladder"]},
                        "plain": {"gan-1": _entry(0, 0.1, rates[:1])["ladder"]}}},
            {"round": 3, "order": ["plain", "genserve"], "saturation": {
                "genserve": {"gan-1": {"images_per_s": 95.0}}, "plain": {"gan-1": {"images_per_s": 100.0}}},
             "ladder": {"genserve": {"gan-1": _entry(0, 0.125, rates[:1])["ladder"]},
                        "plain": {"gan-1": _entry(0, 0.1, rates[:1])["ladder"]}}},
        ],
    }  # fmt: skip
    r = ratios(report)
    gan = r["genserve/plain/gan-1"]
    assert gan["throughput"] == pytest.approx(0.2)  # the main run alone
    assert gan["throughput_rounds"] == pytest.approx([0.2, 0.9, 0.95])
    assert gan["throughput_median"] == pytest.approx(0.9)
    # p99, plain / genserve at the first rate: 1.0 in the main run, 1/3 and 0.8 in the rounds; the
    # other rates ran in the main run only
    first, *others = (str(x) for x in rates)
    assert gan["p99_lower_by_rounds"][first] == pytest.approx([1.0, 1 / 3, 0.8])
    assert gan["p99_lower_by_median"] == pytest.approx({first: 0.8, **{x: 1.0 for x in others}})
    report["ratios"] = r
    assert (
        "| images/s at saturation, genserve / plain, gan-1: >= 0.8 | 0.90 (median of 3 rounds: 0.20 to 0.95) | met |"
        in one_hop_targets(report)
    )
    assert (
        f"| p99 at equal offered load, genserve / plain, gan-1, every rate: <= 1.5x | 1.25x (at {rates[0]:g} req/s; "
        "median of 3 rounds: 1.00x to 3.00x) | met |" in one_hop_targets(report)
    )
    single = {**report, "rounds": []}
    single["ratios"] = ratios(single)
    assert "throughput_median" not in single["ratios"]["genserve/plain/gan-1"]
    assert "| images/s at saturation, genserve / plain, gan-1: >= 0.8 | 0.20 | **missed** |" in one_hop_targets(single)
    assert rounds(single) == []
    row = "| genserve / plain FastAPI + ORT, GAN 1 image per request | 0.20 | 0.90 |"
    assert row in headline(single, report)
    table = rounds(report)
    assert (
        "| | round 1 (plain → genserve, the main run) | round 2 (genserve → plain) | round 3 (plain → genserve) | median |"
        in table
    )
    assert "| genserve / plain, gan-1 | 0.20 | 0.90 | 0.95 | 0.90 |" in table
    assert f"| p99 genserve / plain, gan-1 at {rates[0]:g} req/s | 1.00x | 3.00x | 1.25x | 1.25x |" in table
    assert "| plain gan-1, images/s | 400.0 | 100.0 | 100.0 | 100.0 |" in table
    assert round_order(2, ("plain", "triton", "genserve")) == ("genserve", "triton", "plain")
    assert round_order(3, ("plain", "triton", "genserve")) == ("plain", "triton", "genserve")


def test_a_latency_point_runs_long_enough_for_its_p99_to_rest_on_many_requests() -> None:
    assert point_seconds(12.0, 100.0, quick=False) == 12.0  # 1,200 requests due in 12 s
    assert point_seconds(12.0, 5.0, quick=False) == pytest.approx(MIN_POINT_REQUESTS / 5.0)
    assert point_seconds(40.0, 2.0, quick=False) == pytest.approx(max(40.0, MIN_POINT_REQUESTS / 2.0))
    assert point_seconds(3.0, 2.0, quick=True) == 3.0  # --quick: a smoke run, not figures


def test_the_readme_benchmark_table_is_the_committed_runs() -> None:
    """The README's headline ratios are the committed run's (`docs/benchmarks.json`) beside the
    run before the one-hop layout, as the report writes them."""
    before = json.loads((ROOT / "docs" / "benchmarks-before.json").read_text())
    after = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    table = "\n".join(headline(before, after))
    assert table in (ROOT / "README.md").read_text()
    assert table in (ROOT / "docs" / "benchmarks.md").read_text()


def test_the_ray_defaults_peer_undoes_exactly_what_genserve_changes_in_serves_housekeeping() -> None:
    """The `ray-defaults` peer's settings are Serve's own defaults (read from Serve with the
    variables unset) for settings genserve sets to something else."""
    from deployments.local import ray_environment

    ours = ray_environment()
    assert set(SERVE_HOUSEKEEPING_DEFAULTS) <= set(ours)
    always_changed = ("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "RAY_SERVE_HAPROXY_METRICS_ENABLED")
    assert all(ours[k] != SERVE_HOUSEKEEPING_DEFAULTS[k] for k in always_changed)
    # HAProxy's threads: Serve's own number, or the cores where a machine has fewer
    threads = SERVE_HOUSEKEEPING_DEFAULTS["RAY_SERVE_HAPROXY_NBTHREAD"]
    assert int(ours["RAY_SERVE_HAPROXY_NBTHREAD"]) == min(int(threads), os.cpu_count() or 1)
    env = {k: v for k, v in os.environ.items() if k not in SERVE_HOUSEKEEPING_DEFAULTS}
    read = (
        "from ray.serve._private import constants as c; "
        "print(c.CONTROL_LOOP_INTERVAL_S, int(c.RAY_SERVE_HAPROXY_METRICS_ENABLED), c.RAY_SERVE_HAPROXY_NBTHREAD)"
    )
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True).stdout
    interval, metrics, nbthread = out.split()
    assert float(interval) == float(SERVE_HOUSEKEEPING_DEFAULTS["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"])
    assert metrics == SERVE_HOUSEKEEPING_DEFAULTS["RAY_SERVE_HAPROXY_METRICS_ENABLED"]
    assert nbthread == threads


def test_the_report_and_its_latency_figure_are_written_together(tmp_path: Path) -> None:
    ladder = [{"rate": r, "summary": {"p50": 0.01 * r, "p99": 0.03 * r}} for r in (1, 2)]
    report: dict[str, Any] = {
        "workloads": {"gan-1": {}, "mixed": {}},
        "peers": {"genserve": {"results": {"gan-1": {"ladder": ladder}}}, "plain": {"results": {"mixed": {"ladder": ladder}}}},
    }  # fmt: skip
    out = tmp_path / "docs" / "figures" / "latency.png"
    plot_latency(report, out)
    from PIL import Image

    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > image.size[1] > 200  # two panels side by side


def test_the_latency_figure_leaves_out_points_a_crashed_peer_never_answered(tmp_path: Path) -> None:
    answered = [{"rate": r, "summary": {"p50": 0.01 * r, "p99": 0.03 * r}} for r in (1, 2)]
    silent = [{"rate": r, "summary": {"p50": None, "p99": None}} for r in (1, 2)]
    report: dict[str, Any] = {
        "workloads": {"gan-1": {}, "mixed": {}},
        "peers": {
            "genserve": {"results": {"gan-1": {"ladder": answered}, "mixed": {"ladder": answered}}},
            "triton": {"results": {"gan-1": {"ladder": [*answered[:1], *silent[1:]]}, "mixed": {"ladder": silent}}},
        },
    }
    out = tmp_path / "latency.png"
    plot_latency(report, out)  # raised a TypeError on the silent points before
    from PIL import Image

    assert Image.open(out).format == "PNG"


def test_triton_and_genserve_requests_ask_for_the_same_work() -> None:
    w = WORKLOADS["gan-8"]
    g, t = genserve_call(w)(random.Random(0)), triton_call(w)(random.Random(0))
    assert g.images == t.images == 8
    assert t.body["inputs"][0]["shape"] == [8, 1] and g.body["n"] == 8
    d = triton_call(WORKLOADS["mixed"])(random.Random(1))
    assert [i["name"] for i in d.body["inputs"]] == ["seed", "label", "steps"] and d.tag == str(
        d.body["inputs"][2]["data"][0]
    )


def test_plain_peer_serves_the_same_route_shape_under_open_loop_load() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.baseline_server", "--port", str(port)], cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", 60)
        for name in ("gan-8", "diffusion-20"):
            out = asyncio.run(open_loop(base, genserve_call(WORKLOADS[name]), 5.0, 2.0, seed=0))
            s = summarize(out)
            assert s.sent > 0 and s.ok == s.sent, s.statuses
            assert s.images_per_s > 0 and sum(o.images for o in out) == s.sent * WORKLOADS[name].n
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_server_that_stops_answering_is_restarted_once_and_its_workload_run_again() -> None:
    """The Triton peer's server has aborted mid-run here; the bench restarts a server that
    answered nothing (at most `RESTARTS` times) and runs that workload again on the fresh one."""
    assert RESTARTS == 1
    started: list[str] = []
    runs: list[tuple[str, str]] = []

    @contextmanager
    def start() -> Iterator[str]:
        started.append(f"server-{len(started)}")
        yield started[-1]

    dead = {"server-0": {"b", "c"}, "server-1": {"d"}}  # server-0 dies after "a"; server-1 after "c"

    def run(base: str, w: str) -> bool:
        runs.append((base, w))
        return w not in dead.get(base, set())

    assert on_live_server(start, ("a", "b", "c", "d"), run) == ["b"]
    # "d" fails on the restarted server too: with the one restart spent, it is kept as measured
    assert runs == [("server-0", "a"), ("server-0", "b"), ("server-1", "b"), ("server-1", "c"), ("server-1", "d")]
    assert started == ["server-0", "server-1"]


def test_the_report_names_every_restart_and_says_nothing_without_one() -> None:
    report: dict[str, Any] = {
        "peers": {"triton": {"about": "t", "results": {}, "restarted": ["diffusion-20"]}, "plain": {"results": {}}},
        "rounds": [{"round": 2, "restarted": {}}, {"round": 3, "restarted": {"triton": ["gan-8"]}}],
    }
    text = " ".join(restarts(report))
    assert "(triton in the main run, before diffusion-20; triton in round 3, before gan-8)" in text
    assert restarts({"peers": {"plain": {"results": {}}}, "rounds": [{"round": 2}]}) == []


def test_the_cost_table_mirrors_each_round_so_a_steady_drift_leaves_its_ratios_true() -> None:
    """bench-core's cost ratios: on a machine that slows down through the run, a single pass would
    credit whatever ran first; mirrored passes give each setting of a round the same mean speed."""
    from loadtests.bench_core import COST_BASE, cost_rounds, cost_table

    settings = (("diffusion", "dpmpp_2m", 10), ("distilled", "ddim", 4), ("gan", None, 1))
    models: dict[str, Any] = {"diffusion": "d", "distilled": "s"}  # no gan folder: its setting is left out
    calls = {"d": 10.0, "s": 4.0}  # network calls per image: the true ratio is 2.5
    order, speed = [], [1.0]

    def measure(model: Any, sampler: str | None, steps: int) -> float:
        order.append(model)
        speed[0] *= 0.8  # the machine slows by a fifth with every measurement
        return 1000 * speed[0] / calls[model]

    per_round = cost_rounds(models, settings, measure, rounds=3)
    table = {(r["model"], r["setting"]): r for r in cost_table(per_round, settings)}
    assert order == ["d", "s", "s", "d"] * 3
    assert set(table) == {COST_BASE, ("distilled", "ddim-4")}
    assert (table[COST_BASE]["calls"], table[("distilled", "ddim-4")]["calls"]) == (10, 4)
    assert table[("distilled", "ddim-4")]["vs_base"] == 2.5  # a single forward pass would say 2.5 x 0.8 = 2.0
    assert table[COST_BASE]["vs_base"] == 1.0
    # Images/s: the median round (the second), at that round's mean speed 0.8 ** 6.5.
    assert table[COST_BASE]["images_per_s"] == round(100 * 0.8**6.5, 2)
    assert table[COST_BASE]["rounds"] == [round(100 * 0.8 ** (2.5 + 4 * k), 2) for k in range(3)]
