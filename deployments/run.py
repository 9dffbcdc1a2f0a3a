"""`make serve`: Ray Serve on this machine, every model in the model directory, on loopback.

Starts a local Ray (CPU unless a GPU is present), runs the app from `deployments.app`, waits
until every model answers, prints an example request, and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import urllib.request

from deployments.loopback import keep_ray_on_loopback

if "ray" not in sys.modules:
    keep_ray_on_loopback()  # `make serve`: before ray is imported (other entry points call it first)

import ray
from ray import serve
from ray.serve import Application

from deployments.app import build_app

EXAMPLE = {"n": 4, "label": 3, "steps": 20, "sampler": "dpmpp_2m", "seed": 42}


def wait_ready(url: str, timeout_s: float = 180.0) -> dict[str, object]:
    """Polls /readyz until every model is ready; raises with the last status otherwise."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10) as r:
                body: dict[str, object] = json.loads(r.read())
                if body.get("ready"):
                    return body
                last = body
        except Exception as e:
            last = e
        time.sleep(1.0)
    raise RuntimeError(f"genserve not ready after {timeout_s:.0f}s: {last}")


# Workers inherit these from the driver (set them in the environment to override):
# - On a busy 2-core machine Serve's proxy can take longer than the 5 s default to report ready,
#   and the controller then kills and restarts it in a loop.
# - Serve's throughput mode: gRPC between proxy and replicas and between replicas, user code on
#   the replica's own event loop, buffered request logs. On this 2-core machine it raised the
#   empty-deployment ceiling and GAN requests/s (docs/benchmarks.md). HTTP still enters through
#   Serve's proxy on `port`.
RAY_ENV_DEFAULTS = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}


class _DriverLoop:
    """One event loop on a daemon thread for Serve handles used from synchronous driver code:
    in Serve's throughput mode a handle's router and its controller updates live on the loop that
    first used it, so that loop has to keep running."""

    loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        if cls.loop is None:
            cls.loop = asyncio.new_event_loop()
            threading.Thread(target=cls.loop.run_forever, name="serve-handles", daemon=True).start()
        return cls.loop


def replica_ready(deployment: str, timeout_s: float = 30.0) -> dict[str, str]:
    """`ready()` of one replica of `deployment`, called from synchronous driver code."""

    async def call() -> dict[str, str]:
        handle = serve.get_deployment_handle(deployment, app_name="genserve")
        info: dict[str, str] = await asyncio.wait_for(handle.ready.remote(), timeout_s)
        return info

    return asyncio.run_coroutine_threadsafe(call(), _DriverLoop.get()).result(timeout_s + 5)


def deploy(app: Application, access_log: bool = False) -> None:
    """Runs (or replaces) the genserve application on the running Serve instance."""
    logging = {"enable_access_log": access_log}
    serve.run(app, name="genserve", route_prefix="/", blocking=False, logging_config=logging)


def start(
    model_dir: str,
    host: str,
    port: int,
    metrics_port: int,
    dashboard_port: int = 8265,
    app: Application | None = None,
    access_log: bool = False,
) -> str:
    """Starts Ray and the app (`build_app` on `model_dir` unless `app` is given); returns the base URL.

    Ray's dashboard (on loopback) also writes the Prometheus service-discovery file that
    `monitoring/prometheus.yml` reads.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _metrics_export_port=metrics_port,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": access_log})
    deploy(app or build_app({"model_dir": model_dir}), access_log)
    url = f"http://{host}:{port}"
    wait_ready(url)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", default="exported")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics export port")
    parser.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard (loopback only)")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs CPU per request)")
    args = parser.parse_args()
    url = start(
        args.model_dir, args.host, args.port, args.metrics_port, args.dashboard_port, access_log=args.access_log
    )
    print(f"\ngenserve is ready at {url} (OpenAPI: {url}/docs, metrics: http://127.0.0.1:{args.metrics_port}/metrics)")
    print("Try:\n")
    print(
        f"  curl -s {url}/v1/models/diffusion/generate -H 'content-type: application/json' \\\n    -d '{json.dumps(EXAMPLE)}'"
    )
    print(
        "\nor decode the first image to a file:\n\n"
        f"  curl -s {url}/v1/models/diffusion/generate -H 'content-type: application/json' -d '{json.dumps(EXAMPLE)}' \\\n"
        "    | python3 -c 'import sys, json, base64; "
        'open("digit.png", "wb").write(base64.b64decode(json.load(sys.stdin)["images"][0]["png_base64"]))\'\n'
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


if __name__ == "__main__":
    main()
