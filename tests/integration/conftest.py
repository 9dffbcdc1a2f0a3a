"""One real Ray Serve instance for the integration tests (starting Ray takes 20-30 s here)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


class Server:
    def __init__(self, url: str, metrics_url: str, model_dir: Path, keys_file: Path, session_dir: Path) -> None:
        self.url = url
        self.metrics_url = metrics_url
        self.session_dir = session_dir
        self.model_dir = model_dir
        self.keys_file = keys_file

    @contextlib.contextmanager
    def auth_on(self, key: str = "integration-key") -> Iterator[str]:
        """Auth on for the block: `key` written to the server's keys file, which every replica
        re-reads within a second (`service.auth.KeyRing`); off again after it."""
        try:
            self._rotate(f"{key}\n")
            yield key
        finally:
            self._rotate("")

    def _rotate(self, text: str) -> None:
        fresh = self.keys_file.with_suffix(".new")
        fresh.write_text(text)
        fresh.replace(self.keys_file)
        time.sleep(1.2)  # past every replica's re-check interval


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """genserve on loopback serving the shipped models in `exported/`. Auth is off (an empty
    keys file) unless a test turns it on with `server.auth_on()`."""
    from loadtests.harness import genserve

    keys_file = tmp_path_factory.mktemp("auth") / "api-keys"
    keys_file.write_text("")
    os.environ["GENSERVE_API_KEYS_FILE"] = str(keys_file)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    try:
        with genserve(SHIPPED) as running:
            yield Server(running.url, running.metrics_url, SHIPPED, keys_file, running.session_dir)
    finally:
        os.environ.pop("GENSERVE_API_KEYS_FILE", None)
