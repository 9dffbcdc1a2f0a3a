"""`make bench`: genserve against what users would run instead, side by side in one run.

Starts each server in turn on this machine and drives the same workloads at each:
a closed loop at concurrency 32 for saturation throughput, then open-loop Poisson arrivals at
a ladder of rates for latency at equal offered load. Peers:

- plain:     FastAPI + ONNX Runtime, one network call per request (`loadtests/baseline_server.py`)
- triton:    the same models behind Triton's dynamic batcher via PyTriton (`loadtests/triton_server.py`),
             when `.venv-pytriton` exists (`make bench` builds it)
- genserve:  the app `make serve` runs, serving the models every peer serves (gan, diffusion)
- nobatch:   genserve with batching off (max batch 1)
- window:    genserve whose GAN batches wait up to 5 ms for company (a fixed window, as Serve's
             `@serve.batch` does), against genserve's default of no wait while a slot is free
- reqlevel:  genserve with request-level diffusion batching (`loadtests/variants.py`)
- inline-metrics: genserve recording each metric with Ray as it happens, on the request's own
             thread (before `deployments.metrics.Recorder`; saturation only)
- fastapi-router: genserve whose generate route goes through FastAPI's router, as before
             `deployments.http.DirectRoutes` (saturation only)
- empty:     genserve's route shape with no model work, and plain uvicorn likewise: the stack ceilings
- all-models: genserve serving every model in exported/, as `make serve` does (saturation only):
             what the idle replicas of the other models cost the two under test
- ray-defaults: genserve on a Ray started with Serve's own housekeeping settings where genserve
             changes them (`deployments.local.ray_environment`; saturation only)

Then the rounds: genserve, plain and Triton restarted and saturated again on the four workloads,
in alternating order (`--rounds`, 3 with the main run), genserve and plain running their latency
ladders too; the throughput and p99 targets are judged on the median of the rounds' ratios, since
on this shared machine a figure moves by more than a target's margin from one draw to the next.

Also measured in the same run: the in-process library at the HTTP requests' batch size (the
serving overhead), this machine's matrix-multiply peak and the diffusion network's FLOPs (how
close serving gets to the compute limit). Writes JSON and markdown.

    python -m loadtests.bench --json docs/benchmarks.json --out docs/benchmarks.md [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from deployments.loopback import keep_ray_on_loopback
from loadtests.bench_ratios import ratios
from loadtests.harness import free_port, genserve, process
from loadtests.loadgen import Call, Outcome, closed_loop, count_images, open_loop, summarize

keep_ray_on_loopback()  # one machine: every Ray port on loopback (before ray is imported)

ROOT = Path(__file__).resolve().parents[1]
MIXED_STEPS = (10, 20, 50, 200)
CONCURRENCY = 32
ORT_THREADS = 2  # this machine's cores; every peer gets the same
BATCH_WINDOW_S = 0.005  # the "window" variant: what GAN batches waited before service/batcher.py
# Serve's defaults for the housekeeping settings genserve changes (deployments/local.py): the
# `ray-defaults` peer runs on a Ray started with these.
SERVE_HOUSEKEEPING_DEFAULTS = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1",
    "RAY_SERVE_HAPROXY_NBTHREAD": "4",
}
# The models the workloads use: Triton serves these two; the plain server loads every folder, but
# in its one process an idle model costs nothing, where in genserve each is a replica of its own.
PEER_MODELS = ("gan", "diffusion")


@contextmanager
def model_folder(names: tuple[str, ...]) -> Iterator[Path]:
    """A model directory holding only `names` (links to the shipped folders): genserve serves
    the models the workloads use, with no idle replicas of the others beside them (the
    `all-models` peer measures what those cost)."""
    with tempfile.TemporaryDirectory(prefix="genserve-bench-models-") as d:
        for name in names:
            (Path(d) / name).symlink_to(ROOT / "exported" / name, target_is_directory=True)
        yield Path(d)


def peer_args(models: Path) -> dict[str, Any]:
    """`build_apps` arguments for genserve as every peer runs: the models in `models`, the peers' threads."""
    return {"model_dir": str(models), "ort_threads": ORT_THREADS}


@contextmanager
def plain_server(port: int = 8100, empty: bool = False) -> Iterator[str]:
    """The plain FastAPI + ONNX Runtime peer (`--empty`: its route shape with no model work)."""
    cmd = [sys.executable, "-m", "loadtests.baseline_server", "--port", str(port), *(["--empty"] if empty else [])]
    with process(cmd, f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"


TRITON_PY = ROOT / ".venv-pytriton" / "bin" / "python"


@contextmanager
def triton_server(port: int = 8200) -> Iterator[str]:
    """The Triton peer, PyTriton in its own environment (`.venv-pytriton`)."""
    cmd = [str(TRITON_PY), "-m", "loadtests.triton_server", "--http-port", str(port), "--threads", str(ORT_THREADS)]
    with process(cmd, f"http://127.0.0.1:{port}/v2/health/ready", {"PYTHONPATH": str(ROOT)}):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def genserve_server(models: Path, port: int = 8300) -> Iterator[str]:
    """genserve, the app `make serve` runs, on a fresh local Ray serving the models in `models`."""
    from deployments.app import build_apps

    with genserve(apps=build_apps(peer_args(models)), port=port) as running:
        yield running.url


@contextmanager
def fresh_genserve() -> Iterator[str]:
    """genserve on the models every peer serves (`PEER_MODELS`)."""
    with model_folder(PEER_MODELS) as models, genserve_server(models) as url:
        yield url


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    n: int
    steps: tuple[int, ...] = ()  # diffusion: drawn uniformly per request
    rates: tuple[float, ...] = ()  # open-loop requests/s
    about: str = ""
    seconds: float | None = None  # per point, when the default is too short for this mix

    def request(self, rng: Any) -> tuple[dict[str, Any], str]:
        body: dict[str, Any] = {"n": self.n, "label": rng.randrange(10), "seed": rng.randrange(2**31)}
        tag = ""
        if self.steps:
            body["steps"] = rng.choice(self.steps)
            tag = str(body["steps"])
        return body, tag


WORKLOADS = {
    w.name: w
    for w in (
        Workload("gan-1", "gan", 1, rates=(25, 50, 100), about="GAN, 1 image per request (stack-bound)"),
        Workload("gan-8", "gan", 8, rates=(10, 25, 50), about="GAN, 8 images per request"),
        Workload(
            "diffusion-20", "diffusion", 1, (20,), rates=(5, 10, 15), about="diffusion, 1 image, 20 DPM-Solver++ steps"
        ),
        Workload(
            "mixed",
            "diffusion",
            1,
            MIXED_STEPS,
            rates=(2.0, 4.0, 5.0),
            about="diffusion, 1 image, 10/20/50/200 steps mixed (a 200-step image takes seconds: longer points)",
            seconds=40.0,
        ),
    )
}


def genserve_call(w: Workload) -> Callable[[Any], Call]:
    def make(rng: Any) -> Call:
        body, tag = w.request(rng)
        return Call(f"/v1/models/{w.model}/generate", body, w.n, tag)

    return make


def triton_call(w: Workload) -> Callable[[Any], Call]:
    def make(rng: Any) -> Call:
        body, tag = w.request(rng)
        rows = [body["seed"] + i for i in range(w.n)]

        def tensor(name: str, values: list[int]) -> dict[str, Any]:
            return {"name": name, "shape": [len(values), 1], "datatype": "INT64", "data": values}

        inputs = [tensor("seed", rows), tensor("label", [body["label"]] * w.n)]
        if w.steps:
            inputs.append(tensor("steps", [body["steps"]] * w.n))
        return Call(f"/v2/models/{w.model}/infer", {"inputs": inputs}, w.n, tag)

    return make


def triton_images(body: dict[str, Any]) -> int:
    outputs = body.get("outputs") or [{}]
    return len(outputs[0].get("data", []))


@dataclass
class Peer:
    name: str
    about: str
    workloads: tuple[str, ...]
    kind: str = "genserve"  # request shape: genserve or triton
    saturation_only: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarted: list[str] = field(default_factory=list)  # workloads its server was restarted before


def tag_summaries(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    return {t: summarize(outcomes, t).as_dict() for t in sorted({o.tag for o in outcomes if o.tag}, key=int)}


def process_label(p: Any) -> str:
    """A short name for a process on this machine: Ray's actor titles, or the command."""
    try:
        title = " ".join(p.cmdline())
    except Exception:
        return "gone"
    for key in (
        "ServeReplica:",
        "haproxy",
        "ServeController",
        "ProxyActor",
        "raylet",
        "gcs_server",
        "dashboard",
        "tritonserver",
        "triton_python_backend_stub",
        "loadtests.bench",
        "baseline_server",
        "triton_server",
    ):
        if key in title:
            if key == "ServeReplica:":  # ServeReplica:<app>:<deployment>[.<method>]
                return title.split(key)[1].split()[0].split(":")[-1].split(".")[0]
            return key
    return "other"


def cpu_profile(fn: Callable[[], list[Outcome]]) -> tuple[list[Outcome], dict[str, float]]:
    """Runs `fn` and returns CPU milliseconds per served request, per process kind on this machine."""
    import psutil

    def snapshot() -> dict[int, tuple[str, float]]:
        snap = {}
        for p in psutil.process_iter():
            try:
                t = p.cpu_times()
                snap[p.pid] = (process_label(p), t.user + t.system)
            except Exception:
                continue
        return snap

    before = snapshot()
    outcomes = fn()
    after = snapshot()
    served = max(1, sum(o.status == 200 for o in outcomes))
    per: dict[str, float] = {}
    for pid, (label, cpu) in after.items():
        used = cpu - before.get(pid, (label, 0.0))[1]
        if used > 0.01:
            per[label] = per.get(label, 0.0) + used * 1000 / served
    return outcomes, dict(sorted(per.items(), key=lambda kv: -kv[1]))


# A latency point runs until at least this many arrivals are due (and never shorter than the
# saturation point), so its p99 is not just the slowest request: 12 s at 5 diffusion requests/s
# once held 44 requests, whose p99 is whichever one a hiccup of this shared machine hit.
MIN_POINT_REQUESTS = 200


def point_seconds(point_s: float, rate: float, quick: bool) -> float:
    """How long the open-loop point at `rate` runs (`MIN_POINT_REQUESTS`)."""
    return point_s if quick else max(point_s, MIN_POINT_REQUESTS / rate)


def _request_shape(kind: str, w: Workload) -> tuple[Callable[[Any], Call], Callable[[dict[str, Any]], int]]:
    """The calls a peer of request shape `kind` takes for `w`, and how to count images in an answer."""
    return (triton_call(w), triton_images) if kind == "triton" else (genserve_call(w), count_images)


def saturate(kind: str, base: str, w: Workload, point_s: float, quick: bool) -> Callable[[], list[Outcome]]:
    """Warms the server at `base` up on `w`, then returns the saturation run: a closed loop of
    `CONCURRENCY` clients for `point_s` (left to the caller to run, so it can be profiled)."""
    make, images_of = _request_shape(kind, w)
    asyncio.run(closed_loop(base, make, 4, 2.0 if quick else 5.0, seed=99, images_of=images_of))
    return functools.partial(asyncio.run, closed_loop(base, make, CONCURRENCY, point_s, seed=1, images_of=images_of))


def _point_s(w: Workload, seconds: float, quick: bool) -> float:
    return seconds if quick or w.seconds is None else w.seconds


def latency_ladder(name: str, kind: str, base: str, w: Workload, point_s: float, quick: bool) -> list[dict[str, Any]]:
    """Open-loop Poisson arrivals at each of `w`'s rates (`point_seconds` long), every answer waited for."""
    make, images_of = _request_shape(kind, w)
    ladder = []
    for rate in w.rates:
        at_s = point_seconds(point_s, rate, quick)
        out = asyncio.run(open_loop(base, make, rate, at_s, seed=2, images_of=images_of, timeout_s=120))
        s = summarize(out)
        ladder.append({"rate": rate, "seconds": at_s, "summary": s.as_dict(), "tags": tag_summaries(out)})
        print(
            f"  {name:9s} {w.name:13s} {rate:6.1f} req/s offered: p99 {s.p99 or 0:.3f}s ok {s.ok}/{s.sent}", flush=True
        )
    return ladder


def drive(peer: Peer, base: str, seconds: float, quick: bool) -> None:
    """Runs every workload of `peer` against `base`: warm-up, closed loop, open-loop ladder;
    the closed loop also records CPU time per served request for each process on the machine."""
    for wname in peer.workloads:
        drive_workload(peer, base, wname, seconds, quick)


def drive_workload(peer: Peer, base: str, wname: str, seconds: float, quick: bool) -> bool:
    """One workload of `drive`, its results in `peer.results`; False when the server answered
    none of the saturation run's requests (its ladder is then not run)."""
    w = WORKLOADS[wname]
    point_s = _point_s(w, seconds, quick)
    sat, profile = cpu_profile(saturate(peer.kind, base, w, point_s, quick))
    entry: dict[str, Any] = {
        "saturation": summarize(sat).as_dict(),
        "saturation_tags": tag_summaries(sat),
        "cpu_ms_per_request": profile,
    }
    print(f"  {peer.name:9s} {wname:13s} saturation {entry['saturation']['images_per_s']:8.1f} img/s", flush=True)
    answered: bool = entry["saturation"]["ok"] > 0
    entry["ladder"] = (
        [] if peer.saturation_only or not answered else latency_ladder(peer.name, peer.kind, base, w, point_s, quick)
    )
    peer.results[wname] = entry
    return answered


# A server that stops answering mid-run (PyTriton's Python backend has aborted under load here,
# a lock_exception in libtriton_python.so) is restarted, at most this many times per server and
# round, and the workload it failed is run again on the fresh one; the restart is recorded.
RESTARTS = 1


def on_live_server(
    start: Callable[[], AbstractContextManager[str]], workloads: tuple[str, ...], run: Callable[[str, str], bool]
) -> list[str]:
    """`run(base, workload)` for each workload in turn on a server from `start()` (its base URL);
    when `run` says the server answered nothing, the server is restarted (up to `RESTARTS`
    times) and that workload run again. Returns the workloads a restart came before."""
    todo, restarts = list(workloads), list[str]()
    while todo:
        with start() as base:
            while todo:
                if not run(base, todo[0]) and len(restarts) < RESTARTS:
                    print(f"  no answer on {todo[0]}: restarting the server", flush=True)
                    restarts.append(todo[0])
                    break
                todo.pop(0)
    return restarts


# The rounds: on this shared machine one server's images/s moves by more than the targets'
# margins between runs, and by a few percent within one depending on when it ran, and so does a
# p99 at a given rate. So after the main run genserve and its peers run again, restarted, in
# alternating order (round 2 reverses the main run's order, round 3 repeats it, ...): every
# server its saturation points, and genserve and plain (the p99 target's pair) their latency
# ladders too. The throughput and p99 targets are judged on the median of the rounds' ratios.
ROUND_WORKLOADS = ("gan-1", "gan-8", "diffusion-20", "mixed")
ROUND_LADDERS = ("genserve", "plain")


def round_order(k: int, names: tuple[str, ...]) -> tuple[str, ...]:
    """The order of round `k` (1 is the main run, in `names`' order): even rounds run it reversed."""
    return tuple(reversed(names)) if k % 2 == 0 else names


def repeat_rounds(
    servers: dict[str, tuple[str, Callable[[], AbstractContextManager[str]]]], rounds: int, seconds: float, quick: bool
) -> list[dict[str, Any]]:
    """Rounds 2..`rounds`: each server in `servers` (name -> its request shape and a context
    manager that starts it and yields its base URL) started afresh, warmed up and saturated on
    every `ROUND_WORKLOADS`; those in `ROUND_LADDERS` also run each workload's latency ladder."""
    out = []
    for k in range(2, rounds + 1):
        order = round_order(k, tuple(servers))
        print(f"round {k}: {', '.join(order)}", flush=True)
        measured: dict[str, dict[str, Any]] = {}
        ladders: dict[str, dict[str, Any]] = {}
        restarted: dict[str, list[str]] = {}
        for name in order:
            kind, start = servers[name]

            def run(
                base: str,
                wname: str,
                name: str = name,
                kind: str = kind,
                measured: dict[str, dict[str, Any]] = measured,
                ladders: dict[str, dict[str, Any]] = ladders,
            ) -> bool:
                w = WORKLOADS[wname]
                point_s = _point_s(w, seconds, quick)
                sat = summarize(saturate(kind, base, w, point_s, quick)())
                measured.setdefault(name, {})[wname] = sat.as_dict()
                print(f"  {name:9s} {wname:13s} saturation {sat.images_per_s:8.1f} img/s", flush=True)
                if name in ROUND_LADDERS and sat.ok > 0:
                    ladders.setdefault(name, {})[wname] = latency_ladder(name, kind, base, w, point_s, quick)
                return sat.ok > 0

            if again := on_live_server(start, ROUND_WORKLOADS, run):
                restarted[name] = again
        entry = {"round": k, "order": list(order), "saturation": measured, "ladder": ladders}
        out.append(entry | ({"restarted": restarted} if restarted else {}))
    return out


def _library_once(model: Any, n: int) -> None:
    """One request's work in process: n images (diffusion: 20 steps) and their PNGs."""
    from service.generators import generate_latent
    from service.images import encode_pngs
    from service.jobs import DiffusionJob, LatentJob
    from service.scheduler import StepScheduler

    async def sample() -> np.ndarray:
        s = StepScheduler(model, max_batch=64)
        res = await s.submit(DiffusionJob(seed=0, n=n, steps=20, label=3))
        await s.close()
        return res.images

    if model.card.family == "diffusion":
        images = asyncio.run(sample())
    else:
        images = generate_latent(model, [LatentJob(seed=0, n=n, label=3)])[0]
    encode_pngs(images, model.card.image.value_range)


def library_rates(batches: dict[str, int], seconds: float) -> dict[str, float]:
    """Images/s of the in-process library (network + PNG encoding) at the HTTP requests' batch size."""
    from service.registry import load_model

    out = {}
    for name, n in batches.items():
        model = load_model(ROOT / "exported" / name, device="cpu", intra_op_threads=ORT_THREADS)
        once = functools.partial(_library_once, model, n)
        once()
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            once()
            count += n
        out[name] = count / (time.perf_counter() - t0)
    return out


def http_rates(base: str, batches: dict[str, int], seconds: float) -> dict[str, float]:
    """Images/s over HTTP, one client, requests of the same batch size (no cross-request batching)."""
    out = {}
    for name, n in batches.items():
        body = {"n": n, "label": 3, "seed": 0, **({"steps": 20} if name == "diffusion" else {})}
        call = Call(f"/v1/models/{name}/generate", body, n)

        def same(_rng: Any, c: Call = call) -> Call:
            return c

        asyncio.run(closed_loop(base, same, 1, 2.0))
        out[name] = summarize(asyncio.run(closed_loop(base, same, 1, seconds))).images_per_s
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deployments.app import build_apps, model_deployment_name
    from loadtests.flops import flops_per_row, matmul_peak
    from loadtests.variants import empty_app, inline_metrics_app, request_level_app, routed_app, spinning_app
    from service.settings import Settings

    seconds = 3.0 if args.quick else args.seconds
    (ROOT / "loadtests" / "results").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join(["python -m loadtests.bench", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "seconds_per_point": seconds,
            "min_requests_per_point": 0 if args.quick else MIN_POINT_REQUESTS,
            "concurrency": CONCURRENCY,
            "ort_threads": ORT_THREADS,
        },
        "workloads": {k: {"about": w.about, "rates": w.rates, "seconds": w.seconds} for k, w in WORKLOADS.items()},
    }
    print("matrix-multiply peak and network FLOPs", flush=True)
    diff_feeds: dict[str, np.ndarray] = {
        "x": np.zeros((1, 1, 28, 28), np.float32),
        "t": np.zeros(1, np.float32),
        "label": np.zeros(1, np.int64),
    }
    report["compute"] = {
        "matmul_gflops": matmul_peak(2.0 if args.quick else 6.0),
        "diffusion_mflop_per_row": flops_per_row(ROOT / "exported/diffusion/model.onnx", diff_feeds) / 1e6,
    }
    overhead_batches = {"gan": 64, "diffusion": 16}
    report["library_images_per_s"] = library_rates(overhead_batches, 2.0 if args.quick else 8.0)

    peers: list[Peer] = []
    plain = Peer("plain", "FastAPI + ONNX Runtime, no batching", ("gan-1", "gan-8", "diffusion-20", "mixed"))
    print("plain FastAPI + ONNX Runtime", flush=True)
    with plain_server() as url:
        drive(plain, url, seconds, args.quick)
    peers.append(plain)
    plain_empty = Peer("plain-empty", "plain uvicorn + FastAPI, no model work", ("gan-1",), saturation_only=True)
    with plain_server(8101, empty=True) as url:
        drive(plain_empty, url, seconds, args.quick)
    peers.append(plain_empty)

    # name -> (request shape, server) for the rounds, in the main run's order
    round_servers: dict[str, tuple[str, Callable[[], AbstractContextManager[str]]]] = {
        "plain": ("genserve", plain_server)
    }
    if TRITON_PY.exists() and not args.no_triton:
        print("PyTriton (Triton dynamic batcher)", flush=True)
        triton = Peer(
            "triton",
            "Triton dynamic batcher via PyTriton",
            ("gan-1", "gan-8", "diffusion-20", "mixed"),
            kind="triton",
        )
        restarted = on_live_server(
            triton_server, triton.workloads, lambda url, w: drive_workload(triton, url, w, seconds, args.quick)
        )
        triton.restarted = restarted
        peers.append(triton)
        round_servers["triton"] = ("triton", triton_server)
    else:
        report["triton_skipped"] = "no .venv-pytriton (make bench builds it with Debian's python3)"
    round_servers["genserve"] = ("genserve", fresh_genserve)

    from deployments.local import deploy, wait_ready

    print("genserve (Ray Serve)", flush=True)
    with ExitStack() as stack:
        models = stack.enter_context(model_folder(PEER_MODELS))
        base_args = peer_args(models)
        url = stack.enter_context(genserve_server(models))
        gs = Peer(
            "genserve",
            f"genserve, the app `make serve` runs, on a model folder holding the models every peer serves "
            f"({', '.join(PEER_MODELS)}), with GENSERVE_ORT_THREADS={ORT_THREADS} like every peer",
            ("gan-1", "gan-8", "diffusion-20", "mixed"),
        )
        drive(gs, url, seconds, args.quick)
        peers.append(gs)
        report["http_images_per_s"] = http_rates(url, overhead_batches, 2.0 if args.quick else 8.0)
        settings = Settings(ort_threads=ORT_THREADS)  # the defaults build_apps(base_args) also uses
        window = {
            model_deployment_name("gan"): {
                "user_config": {
                    "max_batch_images": settings.max_batch,
                    "batch_wait_timeout_s": BATCH_WINDOW_S,
                    "max_queued_images": settings.max_queued_images,
                }
            }
        }
        every_model = build_apps({**base_args, "model_dir": str(ROOT / "exported")})
        variants = [
            (
                Peer("nobatch", "genserve, max batch 1", ("gan-1", "gan-8", "diffusion-20")),
                build_apps({**base_args, "max_batch": 1}),
            ),
            (
                Peer(
                    "window",
                    f"genserve, GAN batches wait up to {BATCH_WINDOW_S * 1000:g} ms for company (a fixed batch window)",
                    ("gan-1", "gan-8"),
                ),
                build_apps({**base_args, "deployment_options": window}),
            ),
            (Peer("reqlevel", "genserve, request-level diffusion batching", ("mixed",)), request_level_app(base_args)),
            (
                Peer(
                    "spinning",
                    "genserve, the session of a lone diffusion lane spinning between calls (ONNX Runtime's default)",
                    ("diffusion-20",),
                ),
                spinning_app(base_args),
            ),
            (
                Peer(
                    "inline-metrics",
                    "genserve handing each metric record to Ray as it is made, on the request's thread",
                    ("gan-1", "diffusion-20"),
                    saturation_only=True,
                ),
                inline_metrics_app(base_args),
            ),
            (
                Peer(
                    "fastapi-router",
                    "genserve answering generate through FastAPI's router and its OpenTelemetry check, as "
                    "before the direct route",
                    ("gan-1",),
                    saturation_only=True,
                ),
                routed_app(base_args),
            ),
            (
                Peer("empty", "genserve route shape, no model work", ("gan-1",), saturation_only=True),
                empty_app(base_args),
            ),
            (
                Peer(
                    "all-models",
                    f"genserve serving every model in exported/ ({len(every_model) - 1}), as `make serve` does",
                    ("gan-1", "diffusion-20"),
                    saturation_only=True,
                ),
                every_model,
            ),
        ]
        for peer, app in variants:
            print(f"genserve variant: {peer.name}", flush=True)
            deploy(app)
            wait_ready(url)
            drive(peer, url, seconds, args.quick)
            peers.append(peer)
    # A fresh Ray: Serve reads these settings when its controller and HAProxy manager start.
    print("genserve variant: ray-defaults", flush=True)
    defaults = Peer(
        "ray-defaults",
        "genserve on Serve's default housekeeping (controller loop every 0.1 s, HAProxy logging each request "
        "to Ray's HAProxyManager for Serve's HTTP metrics, HAProxy on 4 threads)",
        ("gan-1", "diffusion-20"),
        saturation_only=True,
    )
    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, SERVE_HOUSEKEEPING_DEFAULTS))
        models = stack.enter_context(model_folder(PEER_MODELS))
        drive(defaults, stack.enter_context(genserve_server(models, free_port())), seconds, args.quick)
    peers.append(defaults)
    report["peers"] = {
        p.name: {"about": p.about, "results": p.results} | ({"restarted": p.restarted} if p.restarted else {})
        for p in peers
    }
    report["settings"] |= {"rounds": args.rounds, "round_order": list(round_servers)}
    report["rounds"] = repeat_rounds(round_servers, args.rounds, seconds, args.quick)
    report["ratios"] = ratios(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--out", type=Path, help="markdown report")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per measured point")
    parser.add_argument("--quick", action="store_true", help="3 s points: checks the harness, not a measurement")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of genserve, plain and Triton, the main run included"
    )
    parser.add_argument("--before", type=Path, help="an earlier run's JSON, shown beside this one in the report")
    args = parser.parse_args()
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    if args.out:
        from loadtests.bench_report import write

        write(report, json.loads(args.before.read_text()) if args.before else None, args.out)
    print(json.dumps(report["ratios"], indent=1))


if __name__ == "__main__":
    main()
