"""One real Ray Serve instance for the integration tests (starting Ray takes 20-30 s here)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, metrics_url: str, model_dir: Path) -> None:
        self.url = url
        self.metrics_url = metrics_url
        self.model_dir = model_dir


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """genserve on loopback serving the shipped models in `exported/`."""
    import ray
    from ray import serve

    from deployments.local import start

    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    port, metrics_port = free_port(), free_port()
    haproxy_ports = (free_port(), free_port())
    url = start(
        str(SHIPPED), "127.0.0.1", port, metrics_port, dashboard_port=free_port(), haproxy_ports=haproxy_ports
    )
    try:
        yield Server(url, f"http://127.0.0.1:{metrics_port}/metrics", SHIPPED)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
