"""A real Prometheus scrapes the running app through Ray's service discovery; every dashboard
panel's query returns data after real traffic and every alert expression evaluates."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from loadtests.harness import free_port
from service.images import png_bytes
from tests.integration.conftest import Server
from tests.monitoring.test_rules import MONITORING

pytestmark = pytest.mark.integration
RATE_WINDOW = "30s"


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped prometheus.yml and alert rules, scraping every second instead of every five,
    and reading the test server's own service-discovery file: the shipped config's
    /tmp/ray/session_latest follows whichever Ray instance on the machine started last, and a
    test that starts another one (a scale-out cluster, chaos) would move the scrape off this
    server mid-test, leaving its instant gauges without data."""
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(MONITORING / "alerts.yml")]
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            assert sd["files"] == ["/tmp/ray/session_latest/prom_metrics_service_discovery.json"], sd
            sd["files"] = [str(server.session_dir / "prom_metrics_service_discovery.json")]
            sd["refresh_interval"] = "1s"
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        "prometheus",
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(work / "prometheus.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_target(url, work / "prometheus.log")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for_target(url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            targets = requests.get(f"{url}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            if any(t["health"] == "up" for t in targets):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"Prometheus found no healthy Ray target: {log.read_text()[-2000:]}")


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def traffic(server: Server, stop: threading.Event) -> None:
    """Mixed requests, with a bad one in each round so error panels have data."""
    bodies = [
        ("gan/generate", {"n": 4}),
        ("vae/generate", {"n": 2, "label": 1}),
        ("diffusion/generate", {"n": 2, "steps": 10}),
        ("diffusion/generate", {"n": 1, "steps": 20, "label": 3, "guidance": 2.0}),
        ("gan/generate", {"n": 0}),
        ("vae/score", {"images": [DIGIT], "k": 8}),
        ("gan/interpolate", {"from_seed": 1, "to_seed": 2, "frames": 4}),
    ]
    while not stop.is_set():
        threads = [
            threading.Thread(
                target=requests.post, args=(f"{server.url}/v1/models/{route}",), kwargs={"json": b, "timeout": 60}
            )
            for route, b in bodies
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


DIGIT = base64.b64encode(png_bytes(np.full((28, 28, 1), 255, np.uint8))).decode("ascii")


def dashboard_queries() -> list[tuple[str, str]]:
    """Every panel's query as Grafana sends it with the defaults: all models, a 30 s window."""
    dash = json.loads((MONITORING / "grafana" / "dashboards" / "genserve.json").read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_WINDOW).replace("$model", ".*"))
        for p in dash["panels"]
        for t in p["targets"]
    ]


def needs_gpu(title: str) -> bool:
    """Ray exports GPU series from GPU nodes only; this machine has none, so those panels are
    checked to evaluate, not to have data."""
    return "(GPU nodes only)" in title


def test_every_panel_returns_data_and_every_alert_evaluates(server: Server, prometheus: str) -> None:
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(server, stop))
    sender.start()
    try:
        missing: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(5)
            missing = [
                f"{title}: {expr}"
                for title, expr in dashboard_queries()
                if not query(prometheus, expr) and not needs_gpu(title)
            ]
            if not missing:
                break
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        scrapes = [(t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"]) for t in targets]
        assert not missing, "panels without data:\n" + "\n".join(missing) + f"\ntargets: {scrapes}"
    finally:
        stop.set()
        sender.join()
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    alerts = [r for g in rules for r in g["rules"]]
    assert len(alerts) == 6
    for rule in alerts:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        query(prometheus, rule["query"])  # evaluates without error
