"""The ratios `make bench` reports, computed from a run's JSON alone (genserve against each peer,
step-level against request-level, the stack ceilings, the compute fraction)."""

from __future__ import annotations

import statistics
from typing import Any

from loadtests.loadgen import Summary


def peer_result(report: dict[str, Any], peer: str, workload: str) -> dict[str, Any] | None:
    """One peer's measurements of one workload in a run's JSON, or None if it did not run it."""
    entry: dict[str, Any] | None = report["peers"].get(peer, {}).get("results", {}).get(workload)
    return entry


def _sat(report: dict[str, Any], peer: str, workload: str) -> Summary | None:
    entry = peer_result(report, peer, workload)
    return Summary(**entry["saturation"]) if entry else None


def _ladder_tag(
    report: dict[str, Any], peer: str, workload: str, rate: float, tag: str | None
) -> dict[str, Any] | None:
    entry = peer_result(report, peer, workload)
    for point in entry["ladder"] if entry else []:
        if point["rate"] == rate:
            found: dict[str, Any] | None = point["tags"].get(tag) if tag else point["summary"]
            return found
    return None


def _step_rate(report: dict[str, Any], peer: str) -> float | None:
    """Mixed workload at saturation: image-steps served per second (a 200-step image counts 20
    times a 10-step one, so a server that finishes only the short requests gains nothing)."""
    entry = peer_result(report, peer, "mixed")
    if entry is None:
        return None
    return float(sum(int(tag) * s["images_per_s"] for tag, s in entry["saturation_tags"].items()))


# Processes that are not Serve's housekeeping: the model replicas (their deployment names), the
# request path's proxy and the load generator (`loadtests.bench.process_label`'s labels).
_NOT_HOUSEKEEPING = ("model-", "haproxy", "loadtests.bench")


def _housekeeping_cpu(report: dict[str, Any], peer: str, workload: str) -> float | None:
    """CPU ms per second, during the saturation run, of every process but the model replicas,
    HAProxy and the load generator: Ray's and Serve's own (controller, GCS, dashboard, agents,
    the catalog), which take cores from the replicas whatever the load."""
    entry = peer_result(report, peer, workload)
    if entry is None or "cpu_ms_per_request" not in entry:
        return None
    per_request = entry["cpu_ms_per_request"]
    ms = sum(v for k, v in per_request.items() if not k.startswith(_NOT_HOUSEKEEPING))
    return float(ms * entry["saturation"]["requests_per_s"])


def _process_cpu(report: dict[str, Any], peer: str, workload: str, process: str) -> float | None:
    """CPU ms per served request of one kind of process (`loadtests.bench.process_label`: haproxy,
    model-gan, ...) during the saturation run."""
    entry = peer_result(report, peer, workload)
    if entry is None or process not in entry.get("cpu_ms_per_request", {}):
        return None
    return float(entry["cpu_ms_per_request"][process])


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _saturation_ratios(report: dict[str, Any], peer: str, other: str) -> dict[str, float | None]:
    """images/s at saturation, `peer` / `other`, for the workloads both ran."""
    out = {}
    for w in ("gan-1", "diffusion-20"):
        a, b = _sat(report, peer, w), _sat(report, other, w)
        if a and b:
            out[w] = _div(a.images_per_s, b.images_per_s)
    return out


def _rounds(report: dict[str, Any], part: str) -> list[dict[str, dict[str, Any]]]:
    """Each round's `part` ("saturation" or "ladder") as {peer: {workload: measured}}: the main
    run's first, then those of the extra rounds (`loadtests.bench.repeat_rounds`)."""
    main = {p: {w: e.get(part) for w, e in report["peers"][p]["results"].items()} for p in report["peers"]}
    return [main, *(r.get(part, {}) for r in report.get("rounds", []))]


def round_throughputs(report: dict[str, Any], peer: str, workload: str) -> list[float]:
    """genserve / `peer` images/s at saturation in each round that ran both."""
    out = []
    for measured in _rounds(report, "saturation"):
        mine, theirs = measured.get("genserve", {}).get(workload), measured.get(peer, {}).get(workload)
        if mine and theirs and theirs["images_per_s"]:
            out.append(mine["images_per_s"] / theirs["images_per_s"])
    return out


def round_p99s(report: dict[str, Any], peer: str, workload: str) -> dict[str, list[float]]:
    """Per offered rate, `peer` p99 / genserve p99 (> 1: genserve's is lower) in each round whose
    latency ladders ran both."""
    out: dict[str, list[float]] = {}
    for measured in _rounds(report, "ladder"):
        mine = {x["rate"]: x["summary"]["p99"] for x in measured.get("genserve", {}).get(workload) or []}
        theirs = {x["rate"]: x["summary"]["p99"] for x in measured.get(peer, {}).get(workload) or []}
        for rate in report["workloads"][workload]["rates"]:
            if mine.get(rate) and theirs.get(rate):
                out.setdefault(str(rate), []).append(theirs[rate] / mine[rate])
    return out


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Every ratio the issue asks for; > 1 means genserve (or step-level) is better."""
    out: dict[str, Any] = {}
    for peer in ("plain", "nobatch", "triton", "window"):
        for w in ("gan-1", "gan-8", "diffusion-20", "mixed"):
            mine, theirs = _sat(report, "genserve", w), _sat(report, peer, w)
            if mine is None or theirs is None:
                continue
            p99 = {}
            for rate in report["workloads"][w]["rates"]:
                a, b = _ladder_tag(report, "genserve", w, rate, None), _ladder_tag(report, peer, w, rate, None)
                if a and b:
                    p99[str(rate)] = _div(b["p99"], a["p99"])  # > 1: genserve's p99 is lower
            out[f"genserve/{peer}/{w}"] = {
                "throughput": _div(mine.images_per_s, theirs.images_per_s),
                "p99_lower_by": p99,
            }
            each = round_throughputs(report, peer, w)
            if len(each) > 1:  # the throughput targets are judged on the rounds' median
                out[f"genserve/{peer}/{w}"] |= {"throughput_rounds": each, "throughput_median": statistics.median(each)}
            p99_rounds = round_p99s(report, peer, w)
            if any(len(v) > 1 for v in p99_rounds.values()):  # and the p99 targets on the median at each rate
                out[f"genserve/{peer}/{w}"] |= {
                    "p99_lower_by_rounds": p99_rounds,
                    "p99_lower_by_median": {rate: statistics.median(v) for rate, v in p99_rounds.items()},
                }
    step, req = _step_rate(report, "genserve"), _step_rate(report, "reqlevel")
    if step and req:
        p50_10 = {}
        p99_10 = {}
        for rate in report["workloads"]["mixed"]["rates"]:
            a, b = (
                _ladder_tag(report, "genserve", "mixed", rate, "10"),
                _ladder_tag(report, "reqlevel", "mixed", rate, "10"),
            )
            if a and b:
                p50_10[str(rate)] = _div(b["p50"], a["p50"])
                p99_10[str(rate)] = _div(b["p99"], a["p99"])
        out["step/request-level/mixed"] = {
            "throughput": _div(step, req),
            "p50_10_step_lower_by": p50_10,
            "p99_10_step_lower_by": p99_10,
        }
    every = _saturation_ratios(report, "all-models", "genserve")
    if every:
        out["all-models/genserve"] = every  # < 1: what the idle replicas of the other models cost
    buffered = _saturation_ratios(report, "genserve", "inline-metrics")
    if buffered:
        out["recorder/inline-metrics"] = buffered  # > 1: what keeping metric records in Python buys
    direct = _saturation_ratios(report, "genserve", "fastapi-router").get("gan-1")
    if direct:  # images/s > 1: what answering generate past FastAPI's router buys
        replica = {p: _process_cpu(report, p, "gan-1", "model-gan") for p in ("genserve", "fastapi-router")}
        out["direct/fastapi-router"] = {"gan-1": {"images_per_s": direct, "replica_cpu_ms": replica}}
    housekeeping = _saturation_ratios(report, "genserve", "ray-defaults")
    if housekeeping:
        out["housekeeping/ray-defaults"] = housekeeping  # > 1: what genserve's Serve settings buy
        cpu, proxy = {}, {}
        for w in housekeeping:
            ours, serves = _housekeeping_cpu(report, "genserve", w), _housekeeping_cpu(report, "ray-defaults", w)
            if ours and serves:
                cpu[w] = {"genserve": ours, "ray-defaults": serves, "ratio": serves / ours}
            ours, serves = (
                _process_cpu(report, "genserve", w, "haproxy"),
                _process_cpu(report, "ray-defaults", w, "haproxy"),
            )
            if ours and serves:
                proxy[w] = {"genserve": ours, "ray-defaults": serves}
        out["housekeeping-cpu/ray-defaults"] = cpu  # ratio > 1: genserve's housekeeping is lighter
        out["haproxy-cpu/ray-defaults"] = proxy  # HAProxy's ms per request: its threads, Serve's 4 or the cores
    lib, http = report.get("library_images_per_s", {}), report.get("http_images_per_s", {})
    out["http/library"] = {k: _div(http.get(k), lib.get(k)) for k in lib}
    gan, empty, plain_empty = (
        _sat(report, "genserve", "gan-1"),
        _sat(report, "empty", "gan-1"),
        _sat(report, "plain-empty", "gan-1"),
    )
    if gan and empty:
        out["gan-1/stack-limit"] = _div(gan.requests_per_s, empty.requests_per_s)
    if empty and plain_empty:
        out["ray-stack/plain-stack"] = _div(empty.requests_per_s, plain_empty.requests_per_s)
    diff = _sat(report, "genserve", "diffusion-20")
    if diff:
        rows_per_s = diff.images_per_s * 20  # guidance 1: one network row per image per step
        achieved = rows_per_s * report["compute"]["diffusion_mflop_per_row"] / 1e3
        peak = max(report["compute"]["matmul_gflops"].values())
        out["diffusion_flops"] = {"achieved_gflops": achieved, "peak_gflops": peak, "fraction_of_peak": achieved / peak}
    return out
