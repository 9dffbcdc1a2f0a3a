"""The images and docker-compose.yml run for real: the cpu image built with `make image-cpu`
(podman, on the local Debian base `make test` makes), then compose's CPU profile started with
podman-compose: a Ray head, a worker joining it over compose's network, Prometheus, Alertmanager
and its webhook receiver. The model replicas are placed on the worker (the head declares no
GPU), so every generate answered here was validated, authorised and run by a replica on another
node than the head. Grafana is left out: no registry here serves its image, and Debian has no
package for it (the dashboard's queries are proven against a real Prometheus in
tests/integration/test_monitoring.py).
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from loadtests.harness import free_port

pytestmark = pytest.mark.containers
ROOT = Path(__file__).resolve().parents[2]
KEY = "compose-test-key"
BASE = os.environ.get("GENSERVE_TEST_IMAGE_BASE", "localhost/debian:bookworm")
MONITORING_IMAGE = "genserve-monitoring:0.1.0"
SERVICES = ["ray-head", "ray-cpu-worker", "prometheus", "alertmanager", "alert-log"]
MODELS = ["gan", "vae", "diffusion", "distilled", "emoji-text", "emoji-category"]
BODIES = {  # the others: n and seed
    "emoji-text": {"n": 2, "seed": 7, "prompt": "red apple", "steps": 10},
    "emoji-category": {"n": 2, "seed": 7, "label": 3, "steps": 10},
}
FILES = {"emoji-text": ("PNG", (32, 32), "RGB"), "emoji-category": ("PNG", (32, 32), "RGB")}  # others: 28x28 grey


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    api: str
    prometheus: str
    alertmanager: str
    dashboard: str

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "podman-compose"), "-p", self.project, "--profile", "cpu", *args]
        return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def logs(self, service: str, lines: int = 60) -> str:
        out = self.podman("logs", "--tail", str(lines), self.container(service))
        return f"--- {service} logs ---\n{out.stdout}{out.stderr}"


def rlimits() -> dict[str, int]:
    """Open files and processes for the containers, at what the host allows: podman's defaults
    are above this machine's hard limits and are refused, and so is a process limit above the
    kernel's pid_max. HAProxy needs 10,276 open files."""
    nofile, nproc = resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    limits = {
        "nofile": 1048576 if nofile == resource.RLIM_INFINITY else nofile,
        "nproc": pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max),
    }
    assert limits["nofile"] >= 10276, f"this host allows {nofile} open files; HAProxy needs 10,276"
    return limits


def engine_config(directory: Path) -> Path:
    """podman's settings for these containers: runc with cgroupfs (crun fails under the hybrid
    cgroups of machines like this one) and the rlimits above."""
    path = directory / "containers.conf"
    ulimits = ", ".join(f'"{name}={n}:{n}"' for name, n in rlimits().items())
    path.write_text(
        f'[containers]\ndefault_ulimits = [{ulimits}]\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
    )
    return path


def build(env: dict[str, str], *targets: str) -> None:
    """The images through the Makefile's own targets, from the local base, with the host's CA
    bundle for pip (a TLS-intercepting proxy may stand between the build and the index). A
    build's RUN steps take rlimits from flags only, not from the engine config."""
    ulimits = " ".join(f"--ulimit {name}={n}:{n}" for name, n in rlimits().items())
    build_args = f"--network=host {ulimits} -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg HOST_CA=/host-ca.crt"
    out = subprocess.run(
        ["make", *targets, "CONTAINER=podman", f"BASE={BASE}", f"IMAGE_BUILD_ARGS={build_args}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make test` installs it (scripts/container_setup.sh)")
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        pytest.fail(f"no base image {BASE}: `bash scripts/container_setup.sh {BASE}` makes it")
    ports = {
        name: free_port() for name in ("GENSERVE_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "RAY_DASHBOARD_PORT")
    }
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(engine_config(tmp_path_factory.mktemp("podman"))),
        "GENSERVE_API_KEYS": KEY,
        "PROMETHEUS_IMAGE": MONITORING_IMAGE,
        "ALERTMANAGER_IMAGE": MONITORING_IMAGE,
        **{name: str(port) for name, port in ports.items()},
    }
    build(env, "image-cpu", "image-monitoring")
    running = Stack(
        project=f"genserve-test-{os.getpid()}",
        env=env,
        api=f"http://127.0.0.1:{ports['GENSERVE_PORT']}",
        prometheus=f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
        alertmanager=f"http://127.0.0.1:{ports['ALERTMANAGER_PORT']}",
        dashboard=f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}",
    )
    try:
        up = running.compose("up", "-d", *SERVICES)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{running.api}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (
                "not ready after 300 s\n" + running.logs("ray-head") + running.logs("ray-cpu-worker")
            )
            time.sleep(2)
        yield running
    finally:
        running.compose("down", "-v", "-t", "5")


def generate(stack: Stack, model: str, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(
        f"{stack.api}/v1/models/{model}/generate",
        json=BODIES.get(model, {"n": 2, "seed": 7}),
        headers=headers,
        timeout=120,
    )


def test_every_family_answers_with_the_key_and_refuses_without(stack: Stack) -> None:
    catalog = requests.get(f"{stack.api}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert catalog.status_code == 200
    assert {m["id"] for m in catalog.json()["data"]} == set(MODELS)
    for model in MODELS:
        ok = generate(stack, model, KEY)
        assert ok.status_code == 200, (model, ok.text)
        images = [Image.open(io.BytesIO(base64.b64decode(i["image_base64"]))) for i in ok.json()["images"]]
        assert [(im.format, im.size, im.mode) for im in images] == [FILES.get(model, ("PNG", (28, 28), "L"))] * 2, model
        assert generate(stack, model, KEY).json()["images"] == ok.json()["images"], f"{model}: same seed, same pixels"
        for bad in (None, "not-the-key"):
            refused = generate(stack, model, bad)
            assert refused.status_code == 401, (model, bad, refused.text)
            assert refused.json()["error"]["code"] == "unauthorized"


def test_model_replicas_run_on_the_worker_and_report_their_provider(stack: Stack) -> None:
    """Placement read from Ray's state API inside the head: every model's replica (its own HTTP
    edge, holding its own copy of the keys) is on the worker node. The catalog asks for a quarter
    CPU and nothing else, so Ray may place it on either node (a CI run found it on the worker): it
    only has to be alive, wherever it is."""
    script = (
        "import json, ray\n"
        "from ray.util.state import list_actors, list_nodes\n"
        "ray.init(address='auto', logging_level='ERROR')\n"
        "head = [n.node_id for n in list_nodes() if n.is_head_node][0]\n"
        "print(json.dumps({a.class_name: a.node_id != head for a in list_actors(filters=[('state', '=', 'ALIVE')])"
        " if a.class_name.startswith('ServeReplica')}))\n"
    )
    out = stack.podman("exec", stack.container("ray-head"), "python", "-c", script)
    assert out.returncode == 0, out.stderr[-3000:]
    on_worker = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ServeReplica:genserve:catalog" in on_worker, on_worker
    on_worker.pop("ServeReplica:genserve:catalog")
    assert on_worker == {
        **{f"ServeReplica:model-{m}:model-{m}": True for m in MODELS},
    }
    ready = requests.get(f"{stack.api}/readyz", timeout=30).json()
    assert ready["providers"] == dict.fromkeys(MODELS, "CPUExecutionProvider")


def prometheus_query(stack: Stack, query: str) -> list[dict[str, Any]]:
    r = requests.get(f"{stack.prometheus}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def test_prometheus_scrapes_head_and_worker_with_the_shipped_rules(stack: Stack) -> None:
    worker_ip = stack.podman(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", stack.container("ray-cpu-worker")
    ).stdout.strip()
    assert worker_ip, "no address for the worker container"
    for model in MODELS:
        assert generate(stack, model, KEY).status_code == 200
    deadline = time.monotonic() + 120
    series: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        series = prometheus_query(stack, 'sum by (model, instance) (ray_genserve_requests_total{outcome="ok"})')
        if {s["metric"]["model"] for s in series} == set(MODELS):
            break
        time.sleep(3)
    assert {s["metric"]["model"] for s in series} == set(MODELS), series
    assert {s["metric"]["instance"].split(":")[0] for s in series} == {worker_ip}, "requests counted by the worker"
    targets = requests.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    up = {t["labels"]["instance"].split(":")[0] for t in targets if t["health"] == "up"}
    assert worker_ip in up and len(up) >= 2, targets  # the head's node too
    rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"GenserveHighErrorRatio", "GenserveTargetDown", "GenserveQueueSaturated"} <= names
    managers = requests.get(f"{stack.prometheus}/api/v1/alertmanagers", timeout=10).json()["data"]
    assert [m["url"] for m in managers["activeAlertmanagers"]] == ["http://alertmanager:9093/api/v2/alerts"]
    assert requests.get(f"{stack.alertmanager}/-/ready", timeout=10).status_code == 200


def test_only_the_api_is_published_beyond_loopback_and_health_checks_pass(stack: Stack) -> None:
    for service in SERVICES:
        lines = stack.podman("port", stack.container(service)).stdout.splitlines()  # "8000/tcp -> 0.0.0.0:18000"
        for inside, host in (line.split(" -> ") for line in lines if " -> " in line):
            api = service == "ray-head" and inside == "8000/tcp"
            assert api or host.startswith("127.0.0.1:"), f"{service} publishes {inside} on {host}"
        check = stack.podman("healthcheck", "run", stack.container(service))
        assert check.returncode == 0, (service, check.stdout, check.stderr, stack.logs(service))
    assert requests.get(f"{stack.dashboard}/api/version", timeout=10).status_code == 200  # loopback reaches it
    user = stack.podman("exec", stack.container("ray-head"), "id", "-u").stdout.strip()
    assert user == "1000", "the head runs as the image's non-root user"
