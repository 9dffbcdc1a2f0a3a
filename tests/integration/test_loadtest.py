"""The Locust scenarios run headless against the real server and every request succeeds."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


def test_locust_mixed_scenario_runs_without_failures(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server.url, "--headless",
        "-u", "6", "-r", "6", "-t", "15s", "--csv", str(prefix), "--only-summary",
        "GanUser", "VaeUser", "DiffusionMixedUser",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10, out.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    assert {"gan n=4", "vae n=4", "diffusion 10"} <= set(rows)
