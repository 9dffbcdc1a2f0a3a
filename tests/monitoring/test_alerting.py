"""An alert end to end: a real Prometheus with the shipped rules finds a Ray target down, fires
GenserveTargetDown, sends it to a real Alertmanager with the shipped routing, which delivers it
to the shipped webhook receiver (`monitoring/alert_log.py`), which writes it down.

Only the timings change from what ships: scrape and evaluation every second, `for:` of one
second, Alertmanager's group_wait one second; the expressions, labels, annotations and routes are
the shipped ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from loadtests.harness import free_port, wait_http
from tests.monitoring.test_rules import MONITORING

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@contextmanager
def process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_down_target_pages_through_alertmanager_to_the_webhook(tmp_path: Path) -> None:
    assert ALERTMANAGER, "Alertmanager not found: install Debian's prometheus-alertmanager (make test does)"
    received = tmp_path / "alerts.jsonl"
    receiver_port, am_port, prom_port, dead_port = free_port(), free_port(), free_port(), free_port()

    routing = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    routing["route"]["group_wait"] = "1s"
    routing["receivers"][0]["webhook_configs"][0]["url"] = f"http://127.0.0.1:{receiver_port}/"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(routing))

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "1s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    # Ray's node list, as the head writes it, naming a node whose metrics port nothing answers.
    discovery = tmp_path / "prom_metrics_service_discovery.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{dead_port}"]}]))
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(discovery)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    with ExitStack() as stack:
        stack.enter_context(process(
            [sys.executable, str(MONITORING / "alert_log.py"), "--port", str(receiver_port), "--out", str(received)],
            tmp_path / "receiver.log",
        ))  # fmt: skip
        stack.enter_context(process(
            [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            tmp_path / "alertmanager.log",
        ))  # fmt: skip
        stack.enter_context(process(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log",
        ))  # fmt: skip
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", 60)
        alert = wait_for_alert(received, "GenserveTargetDown", 90, tmp_path)

    assert alert["status"] == "firing" and alert["receiver"] == "pager"
    assert alert["labels"] == {
        "alertname": "GenserveTargetDown",
        "instance": f"127.0.0.1:{dead_port}",
        "job": "ray",
        "severity": "page",
    }
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#genservetargetdown"
    assert "cannot scrape Ray's metrics" in alert["annotations"]["summary"]


def wait_for_alert(received: Path, name: str, timeout: float, logs: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if received.exists():
            for line in received.read_text().splitlines():
                alert: dict[str, Any] = json.loads(line)
                if alert["labels"].get("alertname") == name:
                    return alert
        time.sleep(0.5)
    tails = {f.name: f.read_text()[-1500:] for f in logs.glob("*.log")}
    raise AssertionError(f"no {name} alert reached the webhook in {timeout}s: {tails}")


def test_the_shipped_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool not found: it comes with Debian's prometheus-alertmanager"
    out = subprocess.run([amtool, "check-config", "alertmanager.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert out.returncode == 0 and "1 receivers" in out.stdout, out.stdout + out.stderr


def test_the_receiver_writes_each_alert_as_a_json_line(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "alerts.jsonl"
    with process([sys.executable, str(MONITORING / "alert_log.py"), "--port", str(port), "--out", str(out)],
                 tmp_path / "receiver.log"):  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                body = {"receiver": "pager", "alerts": [{"status": "firing", "labels": {"alertname": "A"}}] * 2}
                assert requests.post(f"http://127.0.0.1:{port}/", json=body, timeout=5).status_code == 200
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert requests.post(f"http://127.0.0.1:{port}/", data=b"not json", timeout=5).status_code == 400
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"receiver": "pager", "status": "firing", "labels": {"alertname": "A"}}] * 2
