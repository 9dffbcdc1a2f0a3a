"""Markdown for `make bench`'s JSON report (see loadtests/bench.py); every figure comes from the JSON.

python -m loadtests.bench_report docs/benchmarks.json docs/benchmarks.md \
    --before docs/benchmarks-before.json   # re-render the report and its figure only
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.bench_ratios import peer_result, ratios

PEER_ORDER = (
    "genserve",
    "plain",
    "triton",
    "nobatch",
    "window",
    "reqlevel",
    "spinning",
    "inline-metrics",
    "fastapi-router",
    "empty",
    "plain-empty",
    "all-models",
    "ray-defaults",
)


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:.0f}"


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= target else "**missed**"


def _judged(ratios: dict[str, Any], key: str) -> float | None:
    """The throughput ratio a target is judged on: the saturation rounds' median where the run
    had rounds (`loadtests.bench.repeat_rounds`), else its one measurement."""
    value = ratios.get(key) or {}
    judged: float | None = value.get("throughput_median", value.get("throughput"))
    return judged


def _judged_text(ratios: dict[str, Any], key: str) -> str:
    """`_judged`'s figure, with the rounds' count and range where there were rounds."""
    value = ratios.get(key) or {}
    each = value.get("throughput_rounds") or []
    shown = _f(_judged(ratios, key), 2)
    return f"{shown} (median of {len(each)} rounds: {min(each):.2f} to {max(each):.2f})" if len(each) > 1 else shown


def _worst_rate(ratios: dict[str, Any], key: str) -> tuple[str, float] | None:
    """(offered rate, peer p99 / genserve p99) at the rate where genserve compares worst, from
    the `key` ratio's `p99_lower_by` (its rounds' median at each rate, where the run had rounds);
    None where no rate has both p99s."""
    value = ratios.get(key) or {}
    lower_by = {k: v for k, v in (value.get("p99_lower_by_median") or value.get("p99_lower_by") or {}).items() if v}
    return min(lower_by.items(), key=lambda kv: kv[1]) if lower_by else None


def _peers(report: dict[str, Any]) -> list[str]:
    return [p for p in PEER_ORDER if p in report["peers"]]


def targets(report: dict[str, Any]) -> list[str]:
    r = report["ratios"]
    rows = ["| target | measured | |", "|---|---|---|"]
    for key in r:
        if key.startswith("genserve/"):
            _, peer, workload = key.split("/")
            t = _judged(r, key)
            rows.append(
                f"| images/s at saturation, genserve / {peer}, {workload}: >= 1.0 | {_judged_text(r, key)} | {_met(t, 1.0)} |"
            )
            at_worst = _worst_rate(r, key)
            worst = at_worst[1] if at_worst else None
            rows.append(
                f"| p99 at equal offered load, {peer} / genserve (worst rate), {workload}: >= 1.0 | {_f(worst, 2)} | {_met(worst, 1.0)} |"
            )
    mixed = r.get("step/request-level/mixed")
    if mixed:
        rows.append(
            f"| step-level / request-level throughput (image-steps/s), mixed: >= 1.5 | {_f(mixed['throughput'], 2)} | {_met(mixed['throughput'], 1.5)} |"
        )
        # At low offered load requests rarely overlap and both batchers run them alone; the
        # difference the target is about shows where batches form: the highest offered rate.
        top = str(max(report["workloads"]["mixed"]["rates"]))
        p50 = mixed["p50_10_step_lower_by"].get(top)
        rows.append(
            f"| 10-step p50, request-level / step-level, at the highest offered rate ({top} req/s): >= 3 "
            f"| {_f(p50, 1)} | {_met(p50, 3.0)} |"
        )
    stack = r.get("gan-1/stack-limit")
    rows.append(f"| GAN requests/s / empty-deployment requests/s: >= 0.8 | {_f(stack, 2)} | {_met(stack, 0.8)} |")
    flops = r.get("diffusion_flops")
    frac = flops["fraction_of_peak"] if flops else None
    rows.append(f"| diffusion achieved FLOP/s / matmul peak: >= 0.5 | {_f(frac, 2)} | {_met(frac, 0.5)} |")
    return rows


# The one-hop layout's targets: (workload, peer, genserve / peer images/s at saturation at least).
ONE_HOP_THROUGHPUT = [
    ("gan-1", "plain", 0.8),
    ("gan-1", "triton", 0.8),
    ("gan-8", "plain", 1.0),
    ("gan-8", "triton", 1.0),
    ("diffusion-20", "plain", 1.0),
    ("diffusion-20", "triton", 1.0),
    ("mixed", "plain", 1.0),
    ("mixed", "triton", 1.0),
]
ONE_HOP_P99 = 1.5  # genserve's p99 at most this times plain's, at every offered rate below saturation
ONE_HOP_STACK = 0.5  # empty genserve deployment / plain uvicorn, requests/s


def one_hop_targets(report: dict[str, Any]) -> list[str]:
    """The one-hop layout's targets, each a ratio within this run."""
    r = report["ratios"]
    rows = ["| target | measured | |", "|---|---|---|"]
    for workload, peer, want in ONE_HOP_THROUGHPUT:
        key = f"genserve/{peer}/{workload}"
        t = _judged(r, key)
        rows.append(
            f"| images/s at saturation, genserve / {peer}, {workload}: >= {want:g} | {_judged_text(r, key)} | {_met(t, want)} |"
        )
    for workload in report["workloads"]:
        at_worst = _worst_rate(r, f"genserve/plain/{workload}")
        shown, met = "n/a", "not measured"
        if at_worst:
            rate, lower_by = at_worst
            each = ((r.get(f"genserve/plain/{workload}") or {}).get("p99_lower_by_rounds") or {}).get(rate) or []
            spread = (
                f"; median of {len(each)} rounds: {1 / max(each):.2f}x to {1 / min(each):.2f}x" if len(each) > 1 else ""
            )
            shown = f"{1 / lower_by:.2f}x (at {float(rate):g} req/s{spread})"
            met = "met" if 1 / lower_by <= ONE_HOP_P99 else "**missed**"
        rows.append(
            f"| p99 at equal offered load, genserve / plain, {workload}, every rate: <= {ONE_HOP_P99:g}x | {shown} | {met} |"
        )
    stack = r.get("ray-stack/plain-stack")
    rows.append(
        f"| empty genserve deployment / plain uvicorn, requests/s: >= {ONE_HOP_STACK:g} | {_f(stack, 2)} "
        f"| {_met(stack, ONE_HOP_STACK)} |"
    )
    return rows


def saturation(report: dict[str, Any]) -> list[str]:
    peers = _peers(report)
    rows = ["| workload | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
    for w in report["workloads"]:
        cells = []
        for p in peers:
            e = report["peers"][p]["results"].get(w)
            if e is None:
                cells.append("")
                continue
            s = e["saturation"]
            bad = s["sent"] - s["ok"]
            cells.append(
                f"{_f(s['images_per_s'])} img/s ({_f(s['requests_per_s'])} req/s){f', {bad} failed' if bad else ''}"
            )
        rows.append(f"| {w} | " + " | ".join(cells) + " |")
    return rows


def rounds(report: dict[str, Any]) -> list[str]:
    """Each saturation round's images/s per server and genserve's ratios to each peer, with the
    median the targets are judged on."""
    extra = report.get("rounds") or []
    if not extra:
        return []
    servers = [p for p in ("genserve", "plain", "triton") if p in extra[0]["saturation"]]
    main = report["settings"]["round_order"]
    heads = [
        f"round 1 ({' → '.join(main)}, the main run)",
        *(f"round {x['round']} ({' → '.join(x['order'])})" for x in extra),
    ]
    rows = [
        "| | " + " | ".join(heads) + " | median |",
        "|---" * (len(heads) + 2) + "|",
    ]
    r = report["ratios"]
    for peer in servers[1:]:
        for w in report["workloads"]:
            value = r.get(f"genserve/{peer}/{w}") or {}
            each = value.get("throughput_rounds") or []
            if each:
                rows.append(
                    f"| genserve / {peer}, {w} | "
                    + " | ".join(f"{x:.2f}" for x in each)
                    + f" | {_f(_judged(r, f'genserve/{peer}/{w}'), 2)} |"
                )
    for w in report["workloads"]:
        by_rate = (r.get(f"genserve/plain/{w}") or {}).get("p99_lower_by_rounds") or {}
        median = (r.get(f"genserve/plain/{w}") or {}).get("p99_lower_by_median") or {}
        for rate, each in by_rate.items():
            rows.append(
                f"| p99 genserve / plain, {w} at {float(rate):g} req/s | "
                + " | ".join(f"{1 / x:.2f}x" for x in each)
                + f" | {1 / median[rate]:.2f}x |"
            )
    for peer in servers:
        for w in report["workloads"]:
            main_entry = peer_result(report, peer, w)
            cells = [main_entry["saturation"]["images_per_s"] if main_entry else None]
            cells += [(x["saturation"].get(peer, {}).get(w) or {}).get("images_per_s") for x in extra]
            known = [c for c in cells if c is not None]
            median = statistics.median(known) if known else None
            rows.append(f"| {peer} {w}, images/s | " + " | ".join(_f(c) for c in cells) + f" | {_f(median)} |")
    return [
        "## Rounds",
        "",
        f"genserve, plain and Triton ran {len(extra) + 1} times in this run: in the main run, then in extra rounds, "
        "each server restarted, in alternating order (so none always runs first or last while the machine warms, "
        "throttles or is shared). Each round saturates every server on the four workloads; genserve and plain also "
        "run their latency ladders (the p99 target's pair). On this machine a server's images/s, or a p99 at a "
        "given rate, moves between rounds by more than a target's margin; the throughput and p99 targets above "
        "are judged on the median of the rounds' ratios (each ratio taken within one round). The tables of "
        "throughput, latency and CPU below, and every other ratio, are the main run's.",
        "",
        *rows,
        "",
    ]


def _point_length(settings: dict[str, Any]) -> str:
    """How long an open-loop point runs, as the run's settings say."""
    least = settings.get("min_requests_per_point", 0)
    plain = f"{settings['seconds_per_point']:g} s"
    return (
        f"{plain} or {least} / rate s (the time {least} arrivals take on average), whichever is longer"
        if least
        else plain
    )


def _point_requests(report: dict[str, Any]) -> str:
    """The fewest and most requests any open-loop point of the run sent."""
    sent = [
        point["summary"]["sent"]
        for peer in report["peers"].values()
        for result in peer["results"].values()
        for point in result.get("ladder", [])
    ]
    return f"the {min(sent)} to {max(sent)} requests sent in it" if sent else "the requests sent in it"


def ladder(report: dict[str, Any], workload: str) -> list[str]:
    peers = [p for p in _peers(report) if (report["peers"][p]["results"].get(workload) or {}).get("ladder")]
    rows = ["| offered req/s | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
    for rate in report["workloads"][workload]["rates"]:
        cells = []
        for p in peers:
            point = next((x for x in report["peers"][p]["results"][workload]["ladder"] if x["rate"] == rate), None)
            if point is None:
                cells.append("")
                continue
            s = point["summary"]
            lost, sent = s["sent"] - s["ok"], s["sent"]
            note = f" ({lost} of {sent} not 200)" if lost else ""
            cells.append(f"{_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])}{note}")
        rows.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return rows


def mixed_tags(report: dict[str, Any]) -> list[str]:
    peers = [p for p in _peers(report) if "mixed" in report["peers"][p]["results"]]
    rows = [
        "| offered req/s | steps | " + " | ".join(f"{p} p50 / p99 ms" for p in peers) + " |",
        "|---" * (len(peers) + 2) + "|",
    ]
    for rate in report["workloads"]["mixed"]["rates"]:
        for tag in ("10", "20", "50", "200"):
            cells = []
            for p in peers:
                point = next((x for x in report["peers"][p]["results"]["mixed"]["ladder"] if x["rate"] == rate), None)
                t = point["tags"].get(tag) if point else None
                cells.append(f"{_ms(t['p50'])} / {_ms(t['p99'])}" if t else "")
            rows.append(f"| {rate:g} | {tag} | " + " | ".join(cells) + " |")
    return rows


def profiles(report: dict[str, Any]) -> list[str]:
    rows = ["| server, workload | CPU ms per served request, by process |", "|---|---|"]
    for p in _peers(report):
        for w, e in report["peers"][p]["results"].items():
            prof = e.get("cpu_ms_per_request") or {}
            total = sum(prof.values())
            parts = ", ".join(f"{k} {v:.1f}" for k, v in prof.items() if v >= 0.05 * total)
            rows.append(f"| {p}, {w} | total {total:.1f}: {parts} |")
    return rows


def _prof(report: dict[str, Any], peer: str, workload: str) -> dict[str, float]:
    e = peer_result(report, peer, workload)
    return dict(e.get("cpu_ms_per_request") or {}) if e else {}


def _sat_value(report: dict[str, Any], peer: str, workload: str, key: str) -> float | None:
    e = peer_result(report, peer, workload)
    return e["saturation"][key] if e else None


def _worst_p99(ratios: dict[str, Any], key: str) -> str:
    """'N.NNx' where N is the worst (largest) genserve p99 / peer p99 across the offered rates."""
    at_worst = _worst_rate(ratios, key)
    return f"{1 / at_worst[1]:.2f}x" if at_worst else "n/a"


# Why a variant's single-draw ratio that contradicts its mechanism does not measure it.
ONE_DRAW = "both are one draw each, taken minutes apart, and one draw moves by more than this difference (see Rounds)"


def findings(report: dict[str, Any]) -> list[str]:
    """Where the time goes, in numbers from this run, and what would close each gap."""
    r = report["ratios"]
    g, e, p = _prof(report, "genserve", "gan-1"), _prof(report, "empty", "gan-1"), _prof(report, "plain", "gan-1")
    stack = sum(v for k, v in e.items() if k != "loadtests.bench")
    lines = [
        "## Reading the results",
        "",
        f"**GAN: one hop.** HAProxy sends each request straight to the GAN replica, which parses, batches, "
        f"runs and encodes it: a 1-image request costs genserve {sum(g.values()):.1f} ms of CPU across processes "
        f"({', '.join(f'{k} {v:.1f}' for k, v in g.items() if v >= 0.5)}); the plain server spends "
        f"{sum(p.values()):.1f} ms in all. The empty deployment, the same route (HAProxy, then a replica's own "
        f"HTTP edge with validation, auth, limits and metrics) with no model work, costs {stack:.1f} ms and tops "
        f"out at {_f(_sat_value(report, 'empty', 'gan-1', 'requests_per_s'))} req/s, "
        f"{_f((r.get('ray-stack/plain-stack') or 0) * 100, 1)}% of plain uvicorn's "
        f"{_f(_sat_value(report, 'plain-empty', 'gan-1', 'requests_per_s'))} req/s. genserve's GAN runs at "
        f"{_f(r.get('gan-1/stack-limit'), 2)} of that ceiling because the ceiling is now far above the model's "
        "own cost: what is left is the network call, latent draws and PNG encoding, which every peer pays too. "
        "Triton stays ahead at 1 image per request: its HTTP front end and batcher are C++, where genserve's "
        "edge is Python in the same process as the model. At 8 images per request genserve reaches "
        f"{_f(_judged(r, 'genserve/plain/gan-8'), 2)} of plain against "
        f"{_f(_judged(r, 'genserve/plain/gan-1'), 2)} at 1 image. Latency at equal load "
        "below saturation: a request no longer waits for company when a batch slot is free "
        "(`service/batcher.py`; batches form from what arrives while the model is busy), and genserve's p99 "
        f"at 1 image is {_worst_p99(r, 'genserve/plain/gan-1')} plain's at its worst rate; what remains is "
        "the hop through HAProxy and a Python edge that parses, admits and encodes in the model's process.",
        "",
    ]
    flops = r.get("diffusion_flops") or {}
    d = _prof(report, "genserve", "diffusion-20")
    model = sum(v for k, v in d.items() if k.startswith("model-"))
    lines += [
        f"**Diffusion: compute-bound.** While serving at saturation the UNet ran at "
        f"{_f(flops.get('achieved_gflops'))} GFLOP/s, {_f((flops.get('fraction_of_peak') or 0) * 100, 0)}% of this "
        f"machine's matrix-multiply peak as measured at the start of this run (on this shared VM that "
        f"measurement moves between runs, and the fraction with it); the model replica took {model:.1f} of the "
        f"{sum(d.values()):.1f} CPU ms per image. Throughput against plain: "
        f"{_f(_judged(r, 'genserve/plain/diffusion-20'), 2)}; against Triton's dynamic batcher: "
        f"{_f(_judged(r, 'genserve/triton/diffusion-20'), 2)}. On a CPU a small UNet gains little "
        "per row from batching (bench-core: a row costs about the same at batch 32 as at batch 1 on two threads), "
        "so the peers that run batch-1 calls in parallel threads keep up; genserve runs each batch as one slice "
        "per ONNX Runtime thread, in parallel (bench-core measures both ways). What a step costs beyond the "
        "network call is a few percent of the step (bench-core). At equal offered load below saturation genserve's p99 "
        "is higher: a request's steps share each call with every other lane, so a lone request finishes no sooner "
        "than the batch it rides in. A GPU, where a batch of 64 rows costs about what one does, is where "
        "step-level batching pays.",
        "",
    ]
    mixed = r.get("step/request-level/mixed") or {}
    lines += [
        f"**Mixed step counts: step-level against request-level batching.** Work throughput (image-steps/s) "
        f"ratio {_f(mixed.get('throughput'), 2)}; 10-step p50 lower by "
        + ", ".join(f"{_f(v, 1)}x at {k} req/s" for k, v in (mixed.get("p50_10_step_lower_by") or {}).items())
        + " and p99 lower by "
        + ", ".join(f"{_f(v, 1)}x" for v in (mixed.get("p99_10_step_lower_by") or {}).values())
        + ". Request-level batching makes a 10-step request wait for whatever group is running (a 200-step one "
        "takes seconds) and runs each step-count group on its own, in smaller batches, one after the other; "
        "step-level batching lets a new request in at the next iteration, finishes the shortest first, and keeps "
        "every network call as full as the queue allows. At low offered load requests rarely overlap and the two "
        "behave alike. Against the peers on the same mix, images/s at saturation: "
        f"{_f(_judged(r, 'genserve/plain/mixed'), 2)} of plain, "
        f"{_f(_judged(r, 'genserve/triton/mixed'), 2)} of Triton's dynamic batcher (which "
        "groups each batch's rows by step count and runs each group to its end, request-level batching).",
        "",
    ]
    every = r.get("all-models/genserve") or {}
    if every:
        lines += [
            "**Every shipped model at once.** The figures above serve the two models the workloads use, as the "
            "Triton peer does. `make serve` serves every folder in `exported/`, each model a replica process of "
            "its own; with all of them deployed (peer `all-models`) the same closed loop ran at "
            + ", ".join(f"{_f(v, 2)} of the two-model figure for {k}" for k, v in every.items())
            + ". An idle replica is not free on 2 cores: Ray's per-process housekeeping (metrics, health checks, "
            "the controller's loop over every deployment) takes CPU from the busy one. A deployment that serves a "
            "few models on a small machine should serve only those (a model directory holding just their folders)."
            + (
                f" Here the every-model figure came out higher: {ONE_DRAW}, so this run does not measure it."
                if any(v > 1.0 for v in every.values())
                else ""
            ),
            "",
        ]
    buffered = r.get("recorder/inline-metrics") or {}
    if buffered:
        lines += [
            "**Metrics off the request path.** Ray's metric record call leaves the GIL and must take it back, "
            "which on a replica whose other threads run Python (PNG encoding, batching) waits for them "
            "(`python -m loadtests.metrics_cost`). genserve keeps each record in Python and hands them to Ray "
            "from a thread of its own once a second (`deployments.metrics.Recorder`); against the same replicas "
            "recording with Ray as each request and network call happens (peer `inline-metrics`), images/s at "
            "saturation: "
            + ", ".join(f"{_f(v, 2)}x for {k}" for k, v in buffered.items())
            + "."
            + (
                " Diffusion records a few metrics per network call, not per image, and did not gain here: "
                "it ran slower with the records kept, a loss not explained yet (the replica's step loop, "
                "its two network threads and its PNG encoding meet on the GIL; a shorter switch interval "
                "did not help)."
                if (buffered.get("diffusion-20") or 1.0) < 1.0
                else ""
            )
            + (
                f" For GAN 1 image the records kept in Python also came out slower in this run: {ONE_DRAW}; "
                "`loadtests.metrics_cost` measures the record call itself."
                if (buffered.get("gan-1") or 0.0) < 1.0
                else ""
            ),
            "",
        ]
    direct = (r.get("direct/fastapi-router") or {}).get("gan-1")
    if direct:
        cpu = direct["replica_cpu_ms"]
        lines += [
            "**The hot route past FastAPI's router.** A model replica answers `POST .../generate` straight from "
            "ASGI (`deployments.http.DirectRoutes`, inside the same limits, auth and error counting), not through "
            "FastAPI's router, dependency solving and response-model pass, and FastAPI's OpenTelemetry check is "
            "off (genserve's metrics are its own). Against the same replicas answering through FastAPI's router "
            f"(peer `fastapi-router`), GAN 1 image: images/s at saturation {_f(direct['images_per_s'], 2)}x, "
            f"the GAN replica's CPU per request {_f(cpu.get('genserve'), 2)} against "
            f"{_f(cpu.get('fastapi-router'), 2)} ms."
            + (f" The direct route came out slower in this run: {ONE_DRAW}." if direct["images_per_s"] < 1.0 else ""),
            "",
        ]
    housekeeping = r.get("housekeeping/ray-defaults") or {}
    cpu = r.get("housekeeping-cpu/ray-defaults") or {}
    proxy = r.get("haproxy-cpu/ray-defaults") or {}
    if housekeeping:
        lines += [
            "**Serve's housekeeping.** Ray's own processes take CPU from the replicas whatever the load (the "
            "controller's loop, health checks, metric export). genserve runs Serve's controller loop every "
            "0.5 s rather than 0.1 s, turns off HAProxy's per-request log to Ray's HAProxyManager, which "
            "parses each line in Python to make Serve's `ray_serve_num_http_*` metrics (genserve's replicas "
            "count every request themselves), and runs HAProxy on no more threads than the machine has cores "
            "(Serve starts 4; `deployments/local.py`). The same app on Serve's defaults ran "
            "last, on a fresh Ray (peer `ray-defaults`). CPU of every process but the model replicas, HAProxy "
            "and the load generator during the saturation run, genserve's settings against Serve's defaults: "
            + ", ".join(
                f"{_f(c['genserve'], 0)} against {_f(c['ray-defaults'], 0)} ms per second for {w}"
                for w, c in cpu.items()
            )
            + (
                ". HAProxy's CPU per request, genserve's threads against Serve's 4: "
                + ", ".join(
                    f"{_f(c['genserve'], 3)} against {_f(c['ray-defaults'], 3)} ms for {w}" for w, c in proxy.items()
                )
                if proxy
                else ""
            )
            + ". Images/s at saturation, genserve / ray-defaults: "
            + ", ".join(f"{_f(v, 2)}x for {k}" for k, v in housekeeping.items())
            + " (the two ran at different times in the run; on this shared machine when a peer runs can move its "
            "throughput more than these settings do, so the CPU figures are their measure).",
            "",
        ]
    return lines


def _throughput(key: str) -> Callable[[dict[str, Any]], float | None]:
    """The ratio's throughput as its targets are judged (`_judged`: the rounds' median, if any)."""
    return lambda r: _judged(r, key)


def _p99_worst(key: str) -> Callable[[dict[str, Any]], float | None]:
    """peer p99 / genserve p99 at the rate where genserve compares worst (> 1: genserve lower)."""

    def worst(r: dict[str, Any]) -> float | None:
        at_worst = _worst_rate(r, key)
        return at_worst[1] if at_worst else None

    return worst


def _buffered_metrics(workload: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get("recorder/inline-metrics") or {}).get(workload)


def _direct_route(r: dict[str, Any]) -> float | None:
    return ((r.get("direct/fastapi-router") or {}).get("gan-1") or {}).get("images_per_s")


def _housekeeping_cpu_ratio(workload: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: ((r.get("housekeeping-cpu/ray-defaults") or {}).get(workload) or {}).get("ratio")


def _every_model(workload: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get("all-models/genserve") or {}).get(workload)


# The README's headline table: (label, ratio from a run's `ratios`); > 1: genserve better.
HEADLINE: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
    ("genserve / plain FastAPI + ORT, GAN 1 image per request", _throughput("genserve/plain/gan-1")),
    ("genserve / Triton dynamic batcher, GAN 1 image", _throughput("genserve/triton/gan-1")),
    ("genserve / plain FastAPI + ORT, GAN 8 images per request", _throughput("genserve/plain/gan-8")),
    ("genserve / Triton dynamic batcher, GAN 8 images", _throughput("genserve/triton/gan-8")),
    ("genserve / plain FastAPI + ORT, diffusion 20 steps", _throughput("genserve/plain/diffusion-20")),
    ("genserve / Triton dynamic batcher, diffusion 20 steps", _throughput("genserve/triton/diffusion-20")),
    ("genserve / plain FastAPI + ORT, mixed 10/20/50/200 steps", _throughput("genserve/plain/mixed")),
    ("genserve / Triton dynamic batcher, mixed 10/20/50/200 steps", _throughput("genserve/triton/mixed")),
    ("p99 at equal offered load, plain / genserve (worst rate), GAN 1 image", _p99_worst("genserve/plain/gan-1")),
    ("p99 at equal offered load, plain / genserve (worst rate), GAN 8 images", _p99_worst("genserve/plain/gan-8")),
    (
        "p99 at equal offered load, plain / genserve (worst rate), diffusion 20 steps",
        _p99_worst("genserve/plain/diffusion-20"),
    ),
    ("p99 at equal offered load, plain / genserve (worst rate), mixed", _p99_worst("genserve/plain/mixed")),
    ("step-level / request-level diffusion batching, mixed: work throughput", _throughput("step/request-level/mixed")),
    ("empty genserve deployment / plain uvicorn, requests/s (stack ceiling)", lambda r: r.get("ray-stack/plain-stack")),
    (
        "genserve / batching off, diffusion 20 steps: images/s at saturation",
        _throughput("genserve/nobatch/diffusion-20"),
    ),
    (
        "diffusion FLOP/s while serving / measured matmul peak",
        lambda r: (r.get("diffusion_flops") or {}).get("fraction_of_peak"),
    ),
    ("every shipped model served / the two under test, GAN 1 image", _every_model("gan-1")),
    ("every shipped model served / the two under test, diffusion 20 steps", _every_model("diffusion-20")),
    ("metric records kept in Python / recorded with Ray inline, GAN 1 image", _buffered_metrics("gan-1")),
    ("generate past FastAPI's router / through it, GAN 1 image", _direct_route),
    (
        "CPU of Ray's own processes at saturation, Serve's defaults / genserve's settings, diffusion 20 steps",
        _housekeeping_cpu_ratio("diffusion-20"),
    ),
]


def headline(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The README's headline ratios, an earlier run's beside this one's (each within its own run)."""
    lines = ["| comparison | before one hop | now |", "|---|---:|---:|"]
    for label, ratio in HEADLINE:
        lines.append(f"| {label} | {_f(ratio(before['ratios']), 2)} | {_f(ratio(after['ratios']), 2)} |")
    return lines


LATENCY_FIGURE = "figures/latency-vs-load.png"  # beside the report


def plot_latency(report: dict[str, Any], out: Path) -> None:
    """Latency against offered load, one panel per workload, one colour per peer: p50 solid,
    p99 dashed, both on a log scale (the figures of the tables below the picture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(report["workloads"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.8), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    peers = _peers(report)
    handles: dict[str, Any] = {}
    for ax, workload in zip(axes[0], workloads, strict=True):
        for i, peer in enumerate(peers):
            result = report["peers"][peer]["results"].get(workload)
            if not result or not result.get("ladder"):
                continue
            # a point that answered nothing (a peer that crashed) has no latency to draw
            answered = [x for x in result["ladder"] if x["summary"]["p50"] is not None]
            if not answered:
                continue
            ladder_points = sorted(answered, key=lambda x: x["rate"])
            rates = [x["rate"] for x in ladder_points]
            colour = colours[i % len(colours)]
            (handles[peer],) = ax.plot(rates, [x["summary"]["p50"] * 1000 for x in ladder_points], "o-", color=colour)
            ax.plot(rates, [x["summary"]["p99"] * 1000 for x in ladder_points], "o--", color=colour, alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(workload, fontsize=10)
        ax.set_xlabel("offered requests/s")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("latency, ms (log): p50 solid, p99 dashed")
    ordered = [p for p in peers if p in handles]
    fig.legend([handles[p] for p in ordered], ordered, loc="lower center", ncol=len(ordered), fontsize=8,
               bbox_to_anchor=(0.5, -0.13))  # fmt: skip
    fig.suptitle("Latency against offered load, per peer (docs/benchmarks.json)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def write(report: dict[str, Any], before: dict[str, Any] | None, out: Path) -> None:
    """The markdown report at `out` and its latency figure beside it."""
    out.write_text(markdown(report, before))
    plot_latency(report, out.parent / LATENCY_FIGURE)


def main() -> None:
    """Re-renders a run's report and figure from its JSON (ratios recomputed), measuring nothing."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--before", type=Path, help="an earlier run's JSON, shown beside this one")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    data["ratios"] = ratios(data)
    write(data, json.loads(args.before.read_text()) if args.before else None, args.out)


def restarts(report: dict[str, Any]) -> list[str]:
    """A paragraph naming each server the bench restarted because it answered nothing
    (`loadtests.bench.on_live_server`), or nothing when none was."""
    where = [("the main run", p, ws) for p, e in report["peers"].items() if (ws := e.get("restarted"))]
    for r in report.get("rounds", []):
        where += [(f"round {r['round']}", p, ws) for p, ws in (r.get("restarted") or {}).items()]
    if not where:
        return []
    said = "; ".join(f"{p} in {run}, before {', '.join(ws)}" for run, p, ws in where)
    return [
        f"Servers that stopped answering and were restarted ({said}): the workload each had answered "
        "none of ran again on the fresh server, and the figures above are from that run; a ladder point "
        "it stopped during stays as measured (its failed requests counted).",
        "",
    ]


def markdown(report: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    r, m, st = report["ratios"], report["machine"], report["settings"]
    comp = report["compute"]
    lib, http = report.get("library_images_per_s", {}), report.get("http_images_per_s", {})
    flops = r.get("diffusion_flops", {})
    lines = [
        "# Benchmarks: genserve against what users would run instead",
        "",
        f"One run of `make bench` (`{report['command']}`) on this machine: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, no GPU. Every server ran in turn on the same cores, with the load generator "
        f"(aiohttp, in the bench process) beside it; every peer's ONNX Runtime had {st['ort_threads']} threads. "
        f"Saturation: a closed loop of {st['concurrency']} clients for {st['seconds_per_point']:g} s. "
        f"Latency: open-loop Poisson arrivals at each rate for {_point_length(st)}, every request "
        "waited for (none dropped). The raw figures are in `docs/benchmarks.json`.",
        "",
        "Peers: " + "; ".join(f"**{p}**: {report['peers'][p]['about']}" for p in _peers(report)) + ".",
        "",
        "Workloads: " + "; ".join(f"**{k}**: {w['about']}" for k, w in report["workloads"].items()) + ".",
        "",
        "## Targets",
        "",
        "The one-hop layout's targets (genserve's edge and model in one process behind HAProxy):",
        "",
        *one_hop_targets(report),
        "",
        "Every ratio against every peer, at the stricter bar of matching or beating it:",
        "",
        *targets(report),
        "",
        *rounds(report),
        *(
            [
                "## Before and after the one-hop layout",
                "",
                "Before: the committed run of the earlier layout (Serve's Python proxy, an ingress replica, then the "
                "model replica; `docs/benchmarks-before.json`). After: this run (HAProxy, then the model replica). "
                "Each ratio is taken within its own run, so the two columns compare like with like"
                + (
                    "; where a run had rounds, its throughput and p99 ratios against plain and Triton are the "
                    "rounds' median, as its targets are judged (the run before had one round)."
                    if report.get("rounds")
                    else "."
                ),
                "",
                *headline(before, report),
                "",
            ]
            if before
            else []
        ),
        "## Throughput at saturation",
        "",
        *saturation(report),
        "",
        *restarts(report),
        "## Latency at equal offered load (p50 / p95 / p99, ms)",
        "",
        f"Each point runs {_point_length(st)} (the mixed workload's at least "
        f"{report['workloads'].get('mixed', {}).get('seconds') or st['seconds_per_point']:g} s), so a p99 rests "
        f"on {_point_requests(report)}: where they are few, one slow request moves it.",
        "",
        f"![latency against offered load, per peer]({LATENCY_FIGURE})",
        "",
    ]
    for w in report["workloads"]:
        lines += [f"### {w}", "", *ladder(report, w), ""]
    if "mixed" in report["workloads"]:
        lines += ["### mixed, by step count", "", *mixed_tags(report), ""]
    lines += [
        "## Serving overhead, compute limit and stack ceiling",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for name in lib:
        lines.append(
            f"| {name}: HTTP images/s (one client, requests of the same size) / in-process library images/s "
            f"| {_f(http.get(name))} / {_f(lib[name])} = {_f(r['http/library'].get(name), 2)} |"
        )
    peak = comp["matmul_gflops"]
    lines += [
        f"| matrix-multiply peak, float32 (numpy BLAS / ONNX Runtime MLAS) | {_f(peak['numpy'])} / {_f(peak['onnxruntime'])} GFLOP/s |",
        f"| diffusion network, multiply-add FLOPs per image per step | {_f(comp['diffusion_mflop_per_row'])} MFLOP |",
        f"| diffusion achieved while serving at saturation (diffusion-20) | {_f(flops.get('achieved_gflops'))} GFLOP/s = "
        f"{_f((flops.get('fraction_of_peak') or 0) * 100, 0)}% of peak |",
        f"| empty genserve deployment / plain uvicorn, requests/s | {_f(r.get('ray-stack/plain-stack'), 3)} |",
        f"| genserve GAN-1 requests/s / empty genserve deployment | {_f(r.get('gan-1/stack-limit'), 2)} |",
        "",
        "## Where the time goes",
        "",
        "CPU time of every process on the machine during each saturation run, per served request "
        "(processes under 5% of the total left out). `bench` is the load generator; the genserve "
        "rows name the ingress and model replicas; raylet, gcs_server and ServeController are Ray's.",
        "",
        *profiles(report),
        "",
        *findings(report),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
