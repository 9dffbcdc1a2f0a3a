"""One real Ray Serve instance for the integration tests (starting Ray takes 20-30 s here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


class Server:
    def __init__(self, url: str, metrics_url: str, model_dir: Path) -> None:
        self.url = url
        self.metrics_url = metrics_url
        self.model_dir = model_dir


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """genserve on loopback serving the shipped models in `exported/`."""
    from loadtests.harness import genserve

    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    with genserve(SHIPPED) as running:
        yield Server(running.url, running.metrics_url, SHIPPED)
