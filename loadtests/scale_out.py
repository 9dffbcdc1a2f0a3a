"""Scale-out walked on one machine: a multi-node Ray cluster whose extra nodes declare logical
GPUs, model replicas asking for `num_gpus` landing on them, and the diffusion deployment
autoscaling up under sustained load and back down after it.

    python loadtests/scale_out.py --out docs/scale-out.md

Prints a JSON summary (placement, times) and, with --out, writes it as markdown.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import ray
import requests
from ray import serve
from ray.cluster_utils import Cluster

from deployments.app import build_apps, model_deployment_name
from deployments.local import apply_ray_environment, deploy, replica_ready, wait_ready
from loadtests.harness import free_port
from service.cards import discover

GPU_NODES = 2
DIFFUSION = model_deployment_name("diffusion")


def running_replicas(deployment: str) -> int:
    status = serve.status().applications[deployment].deployments[deployment]  # app and deployment share a name
    return sum(int(n) for state, n in status.replica_states.items() if str(state).endswith("RUNNING"))


def load(url: str, stop: threading.Event, sent: list[int]) -> None:
    while not stop.is_set():
        r = requests.post(
            f"{url}/v1/models/diffusion/generate", json={"n": 4, "steps": 50, "sampler": "ddim"}, timeout=300
        )
        sent.append(r.status_code)


def wait_for(predicate: Any, timeout: float) -> float | None:
    """Seconds until `predicate()` holds, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


def run(model_dir: str, upscale_timeout: float, downscale_timeout: float) -> dict[str, Any]:
    apply_ray_environment(stats_port=free_port(), haproxy_metrics_port=free_port())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(GPU_NODES)]
    ray.init(address=cluster.address)
    try:
        port = free_port()
        # One HAProxy, on the head: the nodes share this machine's ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        gpu = {"ray_actor_options": {"num_cpus": 0.1, "num_gpus": 0.25}}
        options = {model_deployment_name(p.name): dict(gpu) for p in discover(Path(model_dir))}
        options[DIFFUSION]["autoscaling_config"] = {
            "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
            "upscale_delay_s": 2, "downscale_delay_s": 5, "metrics_interval_s": 1, "look_back_period_s": 3,
        }  # fmt: skip
        deploy(build_apps({"model_dir": model_dir, "deployment_options": options}))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        gpu_node_ids = {n.node_id for n in gpu_nodes}
        placement = {}
        for name in options:
            info = replica_ready(name.removeprefix("model-"))
            placement[name] = {"on_gpu_node": info["node_id"] in gpu_node_ids, "provider": info["provider"]}
        served = {
            m: requests.post(
                f"{url}/v1/models/{m}/generate",
                json={"n": 2, "steps": 10} if m == "diffusion" else {"n": 2},
                timeout=120,
            ).status_code
            for m in (p.name for p in discover(Path(model_dir)))
        }
        stop, sent = threading.Event(), list[int]()
        workers = [threading.Thread(target=load, args=(url, stop, sent)) for _ in range(6)]
        t_load = time.monotonic()
        for w in workers:
            w.start()
        up = wait_for(lambda: running_replicas(DIFFUSION) >= 2, upscale_timeout)
        peak = running_replicas(DIFFUSION)
        stop.set()
        for w in workers:
            w.join()
        load_seconds = time.monotonic() - t_load
        down = wait_for(lambda: running_replicas(DIFFUSION) == 1, downscale_timeout)
        return {
            "nodes": {"head": "2 CPUs, 0 GPUs", "workers": f"{GPU_NODES} x (1 CPU, 1 logical GPU)"},
            "placement": placement,
            "served": served,
            "upscale_seconds": up,
            "peak_replicas": peak,
            "load_seconds": round(load_seconds, 1),
            "load_requests": len(sent),
            "load_non_200": sum(1 for s in sent if s != 200),
            "downscale_seconds_after_load": down,
        }
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def markdown(result: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {'yes' if p['on_gpu_node'] else 'no'} | {p['provider']} | {result['served'].get(name.removeprefix('model-'))} |"
        for name, p in result["placement"].items()
    )
    up, down = result["upscale_seconds"], result["downscale_seconds_after_load"]
    return f"""# Scale-out on one machine

Command: `python loadtests/scale_out.py --out docs/scale-out.md` (also run by
`tests/integration/test_scale_out.py`). A Ray cluster of a head ({result["nodes"]["head"]}) and
{result["nodes"]["workers"]}, all on this machine; every model deployment asks for
`num_gpus: 0.25`. With no physical GPU, ONNX Runtime falls back to the CPU provider.

| deployment | replica on a GPU node | ONNX provider | first request |
|---|---|---|---|
{rows}

Autoscaling of `model-diffusion` (min 1, max 3, target 1 ongoing request, upscale delay 2 s,
downscale delay 5 s) under 6 closed-loop clients sending 4-image 50-step DDIM requests:

| measured | value |
|---|---|
| time from load start to 2 running replicas | {f"{up:.1f} s" if up is not None else "not reached"} |
| peak running replicas | {result["peak_replicas"]} |
| load duration, requests sent, non-200 answers | {result["load_seconds"]} s, {result["load_requests"]}, {result["load_non_200"]} |
| time from load end back to 1 replica | {f"{down:.1f} s" if down is not None else "not reached"} |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", default="exported")
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--json", help="write the JSON summary here")
    parser.add_argument("--upscale-timeout", type=float, default=120)
    parser.add_argument("--downscale-timeout", type=float, default=120)
    args = parser.parse_args()
    result = run(str(Path(args.model_dir).resolve()), args.upscale_timeout, args.downscale_timeout)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(markdown(result))


if __name__ == "__main__":
    main()
