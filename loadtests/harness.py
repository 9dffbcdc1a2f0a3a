"""Starting, polling and stopping the servers a load test drives: one place for the bench, chaos,
scale-out and the integration tests.

- `free_port()`: a free loopback port, outside the kernel's ephemeral range;
- `wait_http(url)`: polls until a URL answers 200;
- `process(cmd, ready_url)`: a peer server in a subprocess, for the duration of a `with`;
- `genserve(...)`: genserve on a local Ray (HAProxy, then the model replicas), on loopback, for the
  duration of a `with`; yields its base URL and metrics URL. Call
  `deployments.loopback.keep_ray_on_loopback()` before anything imports ray.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deployments.app import ServedApp

ROOT = Path(__file__).resolve().parents[1]


# Ports handed out here lie above Ray's worker ports (10002-19999 by default), below Serve's
# direct-ingress replica ports (30000-31000) and the kernel's ephemeral range: a port the kernel
# picked (bind to 0) is free only until some other process's outgoing connection or listener
# takes it, which once left a Ray node's metrics agent with "address already in use" while
# another Ray ran beside it. Nothing takes ports from here unasked, so a port found free stays
# free until the caller binds it.
PORT_RANGE_START = 20000
PORT_RANGE_END = 30000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free TCP port on loopback, outside the kernel's ephemeral range (drawn at random, so two
    callers rarely draw the same one)."""
    end = min(PORT_RANGE_END, _ephemeral_start())
    for _ in range(200):
        port = random.randrange(PORT_RANGE_START, end)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE_START}-{end - 1}")


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    """Returns once `url` answers 200; raises after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


@contextmanager
def process(cmd: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """`cmd` running (its output in loadtests/results/) until the block ends; waits for `ready_url`."""
    results = ROOT / "loadtests" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = cmd[cmd.index("-m") + 1] if "-m" in cmd else Path(cmd[0]).name  # the module, or the program
    log = open(results / f"{name}-{int(time.time())}.log", "w")  # noqa: SIM115
    # Its own process group, ended whole: a server's children (Triton's server and backend stubs)
    # outlive a terminated parent and would keep its ports and some CPU through the next peers.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        wait_http(ready_url)
        yield
    finally:
        _signal_group(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        # Children handle SIGTERM after their parent: a second for the rest of the group, then SIGKILL,
        # and the block ends once the kernel has ended them (a busy machine delivers it late).
        deadline = time.monotonic() + 1.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        log.close()


def _group_alive(pgid: int) -> bool:
    """Whether a member of the process group still runs: zombies (ended, not yet reaped by
    whoever adopted them) do not count. Without /proc, whether any member exists at all."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while being read
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class Running:
    """A genserve started by `genserve()`."""

    url: str
    metrics_url: str
    # This Ray instance's own session folder: its Prometheus service-discovery file is there.
    # (/tmp/ray/session_latest names whichever instance on the machine started last.)
    session_dir: Path


@contextmanager
def genserve(
    model_dir: Path = ROOT / "exported", apps: list[ServedApp] | None = None, port: int | None = None
) -> Iterator[Running]:
    """genserve on a fresh local Ray, every port on loopback (free ports unless `port` is given);
    Serve and Ray are shut down when the block ends."""
    import ray
    from ray import serve

    from deployments.local import start

    port = port or free_port()
    metrics_port = free_port()
    url = start(
        str(model_dir),
        "127.0.0.1",
        port,
        metrics_port,
        dashboard_port=free_port(),
        apps=apps,
        haproxy_ports=(free_port(), free_port()),
    )
    try:
        from ray._private.worker import global_worker

        node = global_worker.node
        assert node is not None  # Ray is up: `start` returned
        session = Path(node.get_session_dir_path())
        yield Running(url, f"http://127.0.0.1:{metrics_port}/metrics", session)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
