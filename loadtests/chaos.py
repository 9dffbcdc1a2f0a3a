"""`make chaos`: overload and faults against a real genserve, written to docs/reliability.md.

Scenarios, each under load from the open-loop driver (`loadtests/loadgen.py`), every request
accounted for:

- overload: diffusion requests at `--factor` x the measured saturation rate for `--overload-s`
  seconds. Each request must get its images or a 503 with Retry-After, within its deadline;
  replica memory is sampled throughout; afterwards, the time until latency is back to idle.
- replica kill: SIGKILL of the diffusion model replica under mixed GAN + diffusion load.
- ingress kill: SIGKILL of the GAN model replica, which is the HTTP edge of GAN requests (HAProxy
  sends them straight to it) under the same mixed load.
- disconnect: a client abandons a long diffusion request; the queue-depth metric must fall to 0.
- node loss (`--node-loss`): a two-worker Ray cluster on this machine; the worker node running
  the diffusion replica is killed under load; Serve must place it on the other node.

A request is *lost* if it got no answer at all before the client's timeout (its deadline plus a
margin): a hang. Connection resets are counted apart: the client learns at once that it failed.

    python -m loadtests.chaos --out docs/reliability.md [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from deployments.loopback import keep_ray_on_loopback
from loadtests.harness import free_port, genserve
from loadtests.loadgen import Call, Outcome, closed_loop, count_images, open_loop, send, summarize

keep_ray_on_loopback()  # one machine: every Ray port on loopback (before ray is imported)

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0  # GENSERVE_REQUEST_TIMEOUT_S for the chaos server: short, so hangs show quickly
CLIENT_TIMEOUT_S = DEADLINE_S + 15.0


def diffusion_call(steps: int = 20, n: int = 1) -> Any:
    def make(rng: Any) -> Call:
        body = {"n": n, "steps": steps, "label": rng.randrange(10), "seed": rng.randrange(2**31)}
        return Call("/v1/models/diffusion/generate", body, n, "diffusion")

    return make


def mixed_call(rng: Any) -> Call:
    if rng.random() < 0.5:
        return Call("/v1/models/gan/generate", {"n": 2, "seed": rng.randrange(2**31)}, 2, "gan")
    call: Call = diffusion_call(10)(rng)
    return call


def replica_processes(deployment: str) -> list[psutil.Process]:
    """Processes of a genserve Serve replica on this machine, by Ray's process title."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(
                re.search(rf"ServeReplica:[^:\s]+:{re.escape(deployment)}\b", part) for part in p.info["cmdline"] or []
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class MemoryWatch:
    """Samples the resident memory of every genserve replica process every `period` seconds."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.peak: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                try:
                    title = " ".join(p.info["cmdline"] or [])
                    m = re.search(r"ServeReplica:[^:\s]+:(\S+)", title)
                    if m and p.info["memory_info"] is not None:
                        name = m.group(1).split(".")[0]  # Ray appends the running method to the title
                        mib = p.info["memory_info"].rss / 2**20
                        self.first.setdefault(name, mib)
                        self.peak[name] = max(self.peak.get(name, 0.0), mib)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self._stop.wait(self.period)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one(base: str, call: Call, timeout_s: float = CLIENT_TIMEOUT_S) -> Outcome:
    async def go() -> Outcome:
        async with aiohttp.ClientSession() as session:
            return await send(session, base, call, time.perf_counter(), timeout_s, count_images)

    return asyncio.run(go())


def idle_latency(base: str, count: int = 5) -> float:
    """Median latency of one 20-step diffusion image on the idle server."""
    call = diffusion_call(20)(random.Random(0))
    lat = sorted(one(base, call).latency for _ in range(count))
    return lat[len(lat) // 2]


def recovery_seconds(base: str, idle: float, limit_s: float = 120.0) -> float | None:
    """Seconds after the load stops until a single request is back within 1.5x idle latency."""
    call = diffusion_call(20)(random.Random(1))
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        o = one(base, call)
        if o.status == 200 and o.latency <= 1.5 * idle:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def accounting(outcomes: list[Outcome]) -> dict[str, Any]:
    """Every request sent, by how it ended; `lost` are the ones with no answer in time."""
    s = summarize(outcomes)
    resets = sum(o.status == 0 and "Timeout" not in o.error for o in outcomes)
    hangs = sum(o.status == 0 and "Timeout" in o.error for o in outcomes)
    return {
        "sent": s.sent,
        "served": s.ok,
        "refused_503": s.refused,
        "refused_503_without_retry_after": sum(o.status == 503 and not o.retry_after for o in outcomes),
        "other_errors": s.errors,
        "error_statuses": {k: v for k, v in s.statuses.items() if k not in ("200", "503", "0")},
        "non_json_errors": s.non_json_errors,
        "connection_resets": resets,
        "lost": hangs,
        "p50_served_s": s.p50,
        "p99_served_s": s.p99,
        "max_served_s": s.max_latency,
        "max_any_answer_s": max((o.latency for o in outcomes if o.status), default=None),
    }


def overload(base: str, seconds: float, factor: float) -> dict[str, Any]:
    idle = idle_latency(base)
    sat = summarize(asyncio.run(closed_loop(base, diffusion_call(20), 32, 15.0, timeout_s=CLIENT_TIMEOUT_S)))
    rate = factor * sat.requests_per_s
    print(
        f"overload: saturation {sat.requests_per_s:.1f} req/s, offering {rate:.1f} req/s for {seconds:.0f}s", flush=True
    )
    with MemoryWatch() as mem:
        outcomes = asyncio.run(open_loop(base, diffusion_call(20), rate, seconds, seed=3, timeout_s=CLIENT_TIMEOUT_S))
    rec = recovery_seconds(base, idle)
    return {
        "idle_latency_s": idle,
        "saturation_req_per_s": sat.requests_per_s,
        "offered_req_per_s": rate,
        "seconds": seconds,
        **accounting(outcomes),
        "memory_mib_start": mem.first,
        "memory_mib_peak": mem.peak,
        "recovery_s": rec,
    }


def probe_recovery(base: str, call: Call, t_kill: float, limit_s: float = 180.0) -> float | None:
    """Seconds from the kill until `call` is served again (polled every 0.25 s)."""
    while time.monotonic() - t_kill < limit_s:
        if one(base, call, timeout_s=DEADLINE_S).status == 200:
            return time.monotonic() - t_kill
        time.sleep(0.25)
    return None


def kill_under_load(base: str, deployment: str, probe: Call, rate: float, seconds: float) -> dict[str, Any]:
    """SIGKILL `deployment`'s replica `seconds / 4` into an open-loop mixed load of `seconds`."""
    result: dict[str, Any] = {}
    outcomes: list[Outcome] = []

    def load() -> None:
        outcomes.extend(asyncio.run(open_loop(base, mixed_call, rate, seconds, seed=4, timeout_s=CLIENT_TIMEOUT_S)))

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(seconds / 4)
    victims = replica_processes(deployment)
    t_kill = time.monotonic()
    for p in victims:
        os.kill(p.pid, signal.SIGKILL)
    result["killed_pids"] = [p.pid for p in victims]
    result["recovery_s"] = probe_recovery(base, probe, t_kill)
    loader.join()
    result.update(accounting(outcomes))
    result["load_req_per_s"] = rate
    result["load_seconds"] = seconds
    return result


def queue_depths(metrics_url: str) -> dict[str, float]:
    """The diffusion queue-depth gauge, one value per exported series (labels as the key): a
    replica killed earlier can leave its last value behind for a while, so series are compared
    one by one, never summed."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if line.startswith("ray_genserve_queue_depth_images{") and 'model="diffusion"' in line:
            labels, value = line.rsplit(" ", 1)
            series[labels] = float(value)
    return series


DISCONNECT_LANES = 16
DISCONNECT_TARGET_S = 12.0  # long next to the gauge's export lag (~1-2 s), well inside the 30 s deadline


def disconnect_steps(warmup_s: float, warmup_steps: int) -> int:
    """Steps for the abandoned request, so that it runs about DISCONNECT_TARGET_S on this machine.

    The network's rows per second hardly change with batch size here, so a request's time scales
    with its steps; a warm-up of the same width measures the seconds per step. A fixed size cannot
    serve: on a fast machine a 3,200-row request finished before the gauge showed it, and a larger
    one was refused as too costly where the replica's pace estimate was low."""
    per_step = warmup_s / warmup_steps
    return max(50, min(1000, round(DISCONNECT_TARGET_S / per_step)))


def disconnect(base: str, metrics_url: str) -> dict[str, Any]:
    """A 16-image diffusion request sized to run ~12 s, abandoned (connection closed) once the
    queue-depth gauge shows its lanes; then the time until the gauge is back to its baseline.
    The warm-up of the same width also sets the replica's pace estimate, so admission judges the
    long request at the pace it will run."""
    interval_s = float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000  # noqa: SIM112 (Ray's spelling)
    warmup_steps = 40
    body = {"n": DISCONNECT_LANES, "steps": warmup_steps, "seed": 4}
    warm = one(base, Call("/v1/models/diffusion/generate", body, DISCONNECT_LANES))
    if warm.status != 200:
        raise RuntimeError(f"disconnect warm-up answered {warm.status}")
    steps = disconnect_steps(warm.latency, warmup_steps)
    call = Call("/v1/models/diffusion/generate", {"n": DISCONNECT_LANES, "steps": steps, "seed": 5}, DISCONNECT_LANES)

    async def scenario() -> dict[str, Any]:
        # The gauge shows the warm-up's lanes until its next export: settle first, and take the
        # lowest reading per series as the baseline (Serve's health probe adds a lane at times).
        baseline: dict[str, float] = {}
        settle_until = time.monotonic() + 3 * interval_s + 1
        while time.monotonic() < settle_until:
            for k, v in (await asyncio.to_thread(queue_depths, metrics_url)).items():
                baseline[k] = min(v, baseline.get(k, v))
            await asyncio.sleep(0.2)
        seen_max = 0.0
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(send(session, base, call, time.perf_counter(), 600, count_images))
            t0 = time.monotonic()
            grown: tuple[str, float] | None = None  # the series that shows this request's lanes
            while time.monotonic() - t0 < 20 and grown is None and not task.done():
                await asyncio.sleep(0.2)
                now = await asyncio.to_thread(queue_depths, metrics_url)
                seen_max = max([seen_max, *now.values()])
                grown = next(((k, v) for k, v in now.items() if v - baseline.get(k, 0.0) >= call.images), None)
            answered = task.result().status if task.done() else None  # e.g. 503: not a disconnect at all
            task.cancel()  # the client goes away: aiohttp closes the connection
            t_gone = time.monotonic()
        empty_after = None
        while grown is not None and time.monotonic() - t_gone < 30:
            now = await asyncio.to_thread(queue_depths, metrics_url)
            if now.get(grown[0], 0.0) <= baseline.get(grown[0], 0.0):
                empty_after = time.monotonic() - t_gone
                break
            await asyncio.sleep(0.1)
        return {
            "lanes": call.images,
            "steps": steps,
            "warmup_s": warm.latency,
            "client_gave_up_after_s": t_gone - t0,
            "queue_depth_baseline": baseline.get(grown[0], 0.0) if grown else None,
            "queue_depth_before_disconnect": grown[1] - baseline.get(grown[0], 0.0) if grown else None,
            "answered_before_disconnect": answered,
            "queue_depth_max_seen": seen_max,  # what the gauge showed, should the lanes never appear
            "queue_empty_after_s": empty_after,
        }

    result = asyncio.run(scenario())
    short = one(base, Call("/v1/models/diffusion/generate", {"n": 1, "steps": 10, "seed": 6}, 1))
    return {
        **result,
        "next_10_step_request_s": short.latency if short.status == 200 else None,
        "metrics_report_interval_s": interval_s,
    }


def node_loss(seconds: float) -> dict[str, Any]:
    """A head and two worker nodes with a logical GPU each; the diffusion replica's node is killed."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.app import build_apps, model_deployment_name
    from deployments.local import apply_ray_environment, deploy, replica_ready, wait_ready
    from service.cards import discover

    os.environ["GENSERVE_REQUEST_TIMEOUT_S"] = str(DEADLINE_S)
    apply_ray_environment(stats_port=free_port(), haproxy_metrics_port=free_port())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    try:
        port = free_port()
        # One HAProxy, on the head: the nodes share this machine's ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        # an eighth of a logical GPU each: every shipped model's replica fits on the one worker left
        gpu = {"ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.125}}
        options = {model_deployment_name(p.name): dict(gpu) for p in discover(ROOT / "exported")}
        deploy(build_apps({"model_dir": str(ROOT / "exported"), "deployment_options": options}))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        node_id = replica_ready("diffusion")["node_id"]
        victim = next(n for n in workers if n.node_id == node_id)
        outcomes: list[Outcome] = []

        def load() -> None:
            outcomes.extend(asyncio.run(open_loop(url, mixed_call, 4.0, seconds, seed=7, timeout_s=CLIENT_TIMEOUT_S)))

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(seconds / 4)
        t_kill = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        # The old replica's process can answer for a moment after its raylet is gone, so recovery
        # is the time until a replica on another node reports ready and a request is served.
        new_node = node_id
        while new_node == node_id and time.monotonic() - t_kill < 180:
            try:
                new_node = replica_ready("diffusion", timeout_s=10)["node_id"]
            except Exception:
                time.sleep(0.25)
        probe = Call("/v1/models/diffusion/generate", {"n": 1, "steps": 5, "seed": 8}, 1)
        rec = probe_recovery(url, probe, t_kill)
        loader.join()
        return {
            "nodes": "head (2 CPUs, no GPU) + 2 workers (1 CPU, 1 logical GPU each)",
            "gpu_per_replica": gpu["ray_actor_options"]["num_gpus"],
            "diffusion_moved_to_other_worker": new_node != node_id and new_node in {n.node_id for n in workers},
            "recovery_s": rec,
            "load_req_per_s": 4.0,
            "load_seconds": seconds,
            **accounting(outcomes),
        }
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def run(args: argparse.Namespace) -> dict[str, Any]:
    overload_s = 20.0 if args.quick else args.overload_s
    fault_s = 20.0 if args.quick else args.fault_s
    report: dict[str, Any] = {
        "command": " ".join(["python -m loadtests.chaos", *args.argv]),
        "deadline_s": DEADLINE_S,
        "client_timeout_s": CLIENT_TIMEOUT_S,
    }
    os.environ.setdefault("RAY_metrics_report_interval_ms", "500")
    os.environ["GENSERVE_REQUEST_TIMEOUT_S"] = str(DEADLINE_S)
    with genserve() as running:
        url, metrics_url = running.url, running.metrics_url
        report["overload"] = overload(url, overload_s, args.factor)
        print("replica kill", flush=True)
        probe = Call("/v1/models/diffusion/generate", {"n": 1, "steps": 5, "seed": 9}, 1)
        report["replica_kill"] = kill_under_load(url, "model-diffusion", probe, 6.0, fault_s)
        print("ingress kill", flush=True)
        probe = Call("/v1/models/gan/generate", {"n": 1, "seed": 9}, 1)
        # The GAN replica is the HTTP edge of GAN requests: HAProxy sends them straight to it.
        report["ingress_kill"] = kill_under_load(url, "model-gan", probe, 6.0, fault_s)
        print("disconnect", flush=True)
        report["disconnect"] = disconnect(url, metrics_url)
    if args.node_loss:
        print("node loss", flush=True)
        report["node_loss"] = node_loss(fault_s)
    report["lost_total"] = sum(v.get("lost", 0) for v in report.values() if isinstance(v, dict))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="markdown report")
    parser.add_argument("--json", type=Path, help="JSON report")
    parser.add_argument("--overload-s", type=float, default=120.0)
    parser.add_argument("--fault-s", type=float, default=40.0, help="seconds of load around each kill")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of saturation")
    parser.add_argument("--node-loss", action="store_true", help="also run the multi-node worker-loss scenario")
    parser.add_argument("--quick", action="store_true", help="short scenarios: checks the harness")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.out:
        from loadtests.chaos_report import markdown

        args.out.write_text(markdown(report))


if __name__ == "__main__":
    main()
