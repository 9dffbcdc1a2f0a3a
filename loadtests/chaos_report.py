"""Markdown for `make chaos`'s report (see loadtests/chaos.py); every figure comes from the run."""

from __future__ import annotations

from typing import Any


def _s(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f} s"


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _ledger(r: dict[str, Any]) -> str:
    other = ", ".join(f"{k}: {v}" for k, v in r["error_statuses"].items()) or "none"
    return (
        f"| requests sent | {r['sent']} |\n"
        f"| served (200) | {r['served']} |\n"
        f"| refused, 503 with Retry-After | {r['refused_503'] - r['refused_503_without_retry_after']} |\n"
        f"| 503 without Retry-After | {r['refused_503_without_retry_after']} |\n"
        f"| other error answers (all JSON unless counted below) | {r['other_errors']} ({other}) |\n"
        f"| error answers without a JSON body | {r['non_json_errors']} |\n"
        f"| connections reset (failed at once, no HTTP answer) | {r['connection_resets']} |\n"
        f"| **lost (no answer before the client's timeout)** | **{r['lost']}** |\n"
        f"| served latency p50 / p99 / max | {_s(r['p50_served_s'], 2)} / {_s(r['p99_served_s'], 2)} / {_s(r['max_served_s'], 2)} |\n"
        f"| slowest answer of any kind | {_s(r['max_any_answer_s'], 2)} |"
    )


def _held(r: dict[str, Any]) -> str:
    """What happened to the requests caught by the fault, from the ledger."""
    parts = []
    if r["served"] == r["sent"]:
        parts.append(
            "every request was served: those sent while the replica was down waited in Serve's proxy and "
            f"router for the replacement, which is the served p99 of {_s(r['p99_served_s'])} below."
        )
    else:
        if r["refused_503"]:
            parts.append(f"{r['refused_503']} got a JSON 503 with Retry-After;")
        if r["other_errors"]:
            parts.append(f"{r['other_errors']} got another error answer ({r['error_statuses']});")
        if r["connection_resets"]:
            parts.append(f"{r['connection_resets']} saw their connection reset (the client knows at once);")
        parts.append("the rest were served.")
    return " ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    o = report["overload"]
    mem = "\n".join(
        f"| {name} | {o['memory_mib_start'].get(name, 0):.0f} MiB | {peak:.0f} MiB |"
        for name, peak in sorted(o["memory_mib_peak"].items())
    )
    rk, ik, dc = report["replica_kill"], report["ingress_kill"], report["disconnect"]
    parts = [
        "# Reliability: overload, faults and abandoned requests",
        "",
        f"One run of `make chaos` (`{report['command']}`) on this machine (2 cores, no GPU), against "
        f"genserve serving the shipped models with a request deadline of {report['deadline_s']:.0f} s "
        f"(`GENSERVE_REQUEST_TIMEOUT_S`). Load comes from the open-loop driver in `loadtests/loadgen.py`; "
        f"its client gives up after {report['client_timeout_s']:.0f} s, and a request with no answer by "
        "then is counted as **lost**. Every request sent appears in one row of each ledger.",
        "",
        f"**Requests lost across all scenarios: {report['lost_total']}.**",
        "",
        "## Overload",
        "",
        f"Diffusion requests (1 image, 20 DPM-Solver++ steps) at {o['offered_req_per_s']:.1f} req/s for "
        f"{o['seconds']:.0f} s: {o['offered_req_per_s'] / o['saturation_req_per_s']:.1f} x the "
        f"{o['saturation_req_per_s']:.1f} req/s measured at saturation (32 closed-loop clients) just before. "
        "The diffusion scheduler refuses a request at once when the work queued ahead of it would not "
        "finish before its deadline, so clients get a fast 503 with Retry-After instead of a late 504.",
        "",
        "| | |",
        "|---|---|",
        _ledger(o),
        f"| idle latency before / time back to within 1.5x of it after the load | {_s(o['idle_latency_s'], 2)} / {_s(o['recovery_s'])} |",
        "",
        "Resident memory of each replica process, at the start of the overload and at its peak:",
        "",
        "| replica | start | peak |",
        "|---|---|---|",
        mem,
        "",
        "## Model replica killed (SIGKILL) under load",
        "",
        f"Mixed GAN and 10-step diffusion requests at {rk['load_req_per_s']:.0f} req/s for {rk['load_seconds']:.0f} s; "
        f"a quarter of the way in, the diffusion replica process was killed. Ray Serve's controller "
        f"started a new replica; {_held(rk)} Diffusion served again {_s(rk['recovery_s'])} after the kill.",
        "",
        "| | |",
        "|---|---|",
        _ledger(rk),
        "",
        "## HTTP-edge replica killed (SIGKILL) under load",
        "",
        f"The same load; the GAN replica process, which is the HTTP edge of GAN requests (HAProxy sends them straight to it), was killed and the controller started a new one; "
        f"{_held(ik)} Served again {_s(ik['recovery_s'])} after the kill.",
        "",
        "| | |",
        "|---|---|",
        _ledger(ik),
        "",
        "## A client that disconnects",
        "",
        f"A {dc['lanes']}-image, {dc['steps']}-step diffusion request (sized from a same-width warm-up to run about "
        f"12 s here) whose client closed the connection {_s(dc['client_gave_up_after_s'])} in. "
        f"The queue-depth gauge (`genserve_queue_depth_images`, exported every {dc['metrics_report_interval_s']:.1f} s) "
        f"showed its {_count(dc['queue_depth_before_disconnect'])} images queued before the disconnect (over a "
        f"baseline of {_count(dc['queue_depth_baseline'])}) and was back to the baseline "
        f"{_s(dc['queue_empty_after_s'])} after it (the gauge's export interval included); a 10-step request "
        f"sent next took {_s(dc['next_10_step_request_s'], 2)}.",
        "",
    ]
    nl = report.get("node_loss")
    if nl:
        parts += [
            "## Worker node lost under load",
            "",
            f"A Ray cluster on this machine: {nl['nodes']}; every model replica asks for "
            f"{nl.get('gpu_per_replica', 0.25):g} GPU. Under "
            f"{nl['load_req_per_s']:.0f} req/s of mixed load the worker node running the diffusion replica "
            f"was removed without draining (its raylet and workers killed). A diffusion replica was ready on "
            f"{'the other worker node' if nl['diffusion_moved_to_other_worker'] else 'an unexpected node'} and "
            f"serving {_s(nl['recovery_s'])} after the kill; {_held(nl)}",
            "",
            "| | |",
            "|---|---|",
            _ledger(nl),
            "",
        ]
    return "\n".join(parts)
