"""Prometheus config and alert rules, checked by promtool (the Debian `prometheus` package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian prometheus package (.ci/run does)"
    return path


def test_prometheus_config_is_valid() -> None:
    out = subprocess.run(
        [promtool(), "check", "config", "prometheus.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 rules found" in out.stdout + out.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    dash = json.loads((MONITORING / "grafana" / "dashboards" / "genserve.json").read_text())
    assert dash["uid"] == "genserve" and len(dash["panels"]) >= 10
    for panel in dash["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for t in panel["targets"]:  # every genserve series follows the model picker
            for name, inner in re.findall(r"(ray_genserve_\w+)?\{([^}]*)\}", t["expr"]):
                if name or "ray_genserve" in inner:
                    assert 'model=~"$model"' in inner, (panel["title"], t["expr"])
            bare = re.search(r"ray_genserve_\w+(?=[\s)\[]|$)", re.sub(r"\{[^}]*\}", "{}", t["expr"]))
            assert bare is None, (panel["title"], t["expr"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["includeAll"] and variables["model"]["allValue"] == ".*"
    titles = " | ".join(p["title"] for p in dash["panels"])
    for wanted in ("GPU utilisation", "GPU memory", "Replica memory", "Error ratio", "Batch-size distribution",
                   "refusal limit"):  # fmt: skip
        assert wanted in titles, wanted
    provider = (MONITORING / "grafana" / "provisioning" / "dashboards" / "genserve.yml").read_text()
    assert "/var/lib/grafana/dashboards" in provider
    datasource = (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: prometheus" in datasource
