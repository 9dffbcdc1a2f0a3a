"""Scale-out on one machine (see loadtests/scale_out.py): GPU-asking replicas land on the nodes
that declare GPUs and serve; the diffusion deployment scales up under load and back down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_replicas_land_on_gpu_nodes_and_diffusion_autoscales_on_queued_work(tmp_path: Path) -> None:
    """The queued-work policy in real Serve: replicas report their backlog, the controller scales
    the diffusion deployment up under a step of heavy requests (few of them: 6 ongoing, under
    the shipped target of 16 that the default policy would wait for) and back down after it.
    Nothing is lost on the way: each request is answered 200 or refused with a Retry-After.
    The load lasts 15 s, or longer (up to 60 s) until the second replica runs: in a slow CI run
    (22 s per request) the second replica was not yet running when a 15 s step ended."""
    out = subprocess.run(
        [sys.executable, "loadtests/scale_out.py", "--policy", "queued", "--load-seconds", "15", "--until-upscale", "45",
         "--out", str(tmp_path / "scale-out.md"), "--json", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["placement"] and all(p["on_gpu_node"] for p in result["placement"].values()), result["placement"]
    assert all(code == 200 for code in result["served"].values()), result["served"]
    ((name, step),) = result["policies"].items()
    assert name.startswith("queued work")
    assert step["upscale_seconds"] is not None and step["peak_replicas"] >= 2, step
    # Every request was served, or refused at once by admission with a Retry-After (when the
    # machine is slow, one replica's queue can outgrow what it promises before the next is up).
    assert step["requests"] > step["non_200"] == step["refused_retry_after"], step
    assert step["downscale_seconds_after_load"] is not None
    assert "| time from load start to 2 running replicas |" in (tmp_path / "scale-out.md").read_text()
