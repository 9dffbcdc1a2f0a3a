"""docker-compose and the KubeRay manifest: no engine or cluster runs here, so check what can be
checked: every file they build from or mount exists, ports agree, GPU requests are where the
model replicas land, and the RayService serve config equals serve_config.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_builds_and_mounts_only_files_that_exist() -> None:
    services = compose()["services"]
    assert {"ray-head", "ray-gpu-worker", "prometheus", "alertmanager", "alert-log", "grafana"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for src in re.findall(r"^COPY (\S+)", dockerfile.read_text(), re.M):
                assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts {src}, which does not exist"
        assert "healthcheck" in svc, f"{name} has no health check"


def test_compose_gpu_worker_reserves_an_nvidia_device() -> None:
    devices = compose()["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_ports_agree_across_compose_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert "${GENSERVE_PORT:-8000}:8000" in services["ray-head"]["ports"]
    head_script = (ROOT / "docker" / "head.sh").read_text()
    assert "--metrics-export-port=8080" in head_script and "serve deploy deployments/serve_config.yaml" in head_script
    assert '"--metrics-export-port=8080"' in (ROOT / "docker" / "Dockerfile").read_text()
    prom = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    sd_file = prom["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    assert sd_file.startswith("/tmp/ray/") and "ray-tmp:/tmp/ray:ro" in services["prometheus"]["volumes"]
    datasource = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:${PROMETHEUS_PORT:-9090}:9090" in services["prometheus"]["ports"]


def test_only_the_api_is_published_beyond_loopback_and_alerts_reach_the_receiver() -> None:
    services = compose()["services"]
    api = "${GENSERVE_PORT:-8000}:8000"
    assert api in services["ray-head"]["ports"]  # the API is meant to be reached
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port == api or port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    prom = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "alertmanager" in services and "alert-log" in services
    routing = yaml.safe_load((ROOT / "monitoring" / "alertmanager.yml").read_text())
    assert routing["receivers"][0]["webhook_configs"][0]["url"] == "http://alert-log:5001/"
    assert services["alert-log"]["command"][-2:] == ["--port", "5001"]


def test_rayservice_mirrors_serve_config_and_puts_gpus_on_workers() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    shipped = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    assert embedded["applications"] == shipped["applications"]
    ServeDeploySchema.parse_obj(embedded)
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    workers = cluster["workerGroupSpecs"][0]
    assert workers["maxReplicas"] > workers["minReplicas"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_auth_is_on_in_compose_and_on_the_cluster() -> None:
    head_env = compose()["services"]["ray-head"]["environment"]
    assert head_env["GENSERVE_API_KEYS"].startswith("${GENSERVE_API_KEYS:?")
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    env = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "GENSERVE_API_KEYS",
        "valueFrom": {"secretKeyRef": {"name": "genserve-api-keys", "key": "keys"}},
    } in env


def test_every_node_runs_the_serve_mode_that_was_benchmarked() -> None:
    """HAProxy ingress, throughput mode and the wrapper's settings on the head and on every
    worker, in compose and on the cluster, equal to what `make serve` runs with."""
    from deployments.local import ray_environment

    shipped = dict(
        line.split("=", 1) for line in (ROOT / "docker" / "serve.env").read_text().splitlines() if "=" in line
    )
    local = ray_environment(loopback=False)
    for key in (
        "RAY_SERVE_ENABLE_HA_PROXY",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED",
        "GENSERVE_MAX_BODY_BYTES",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED",
    ):
        assert shipped[key] == local[key], key
    assert shipped["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/app/deployments/haproxy/haproxy-genserve"
    assert (ROOT / "deployments" / "haproxy" / "haproxy-genserve").stat().st_mode & 0o111
    assert int(shipped["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"]) > 120, "above the request deadline"
    services = compose()["services"]
    nodes = ("ray-head", "ray-gpu-worker", "ray-cpu-worker")
    assert {services[s]["env_file"] for s in nodes} == {"docker/serve.env"}
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in shipped} == shipped
        assert "GENSERVE_API_KEYS" in env


def test_one_dockerfile_makes_head_and_worker_match_and_run_as_a_user_with_a_health_check() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert stages == [("${BASE}", "cpu"), ("cpu", "gpu")]  # the gpu image is the cpu image plus CUDA
    assert re.search(r"^ARG BASE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert text.rstrip().count("USER ray") == 2 and text.rstrip().split("USER ")[-1].startswith("ray")
    assert "HEALTHCHECK" in text and "wget" in text  # wget: KubeRay's default probes run it
    assert '"onnxruntime-gpu[cuda,cudnn]"' in text  # CUDA wheels matched to ORT's own CUDA build
    pins = dict(line.split("==") for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))  # fmt: skip
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert pins["ray"] == manifest["spec"]["rayClusterConfig"]["rayVersion"]
    assert "onnxruntime-gpu" in pins
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "weights"} <= set(ignored)


def test_images_are_named_alike_by_make_compose_and_the_rayservice_and_keys_reach_every_node() -> None:
    makefile = (ROOT / "Makefile").read_text()
    tag = re.search(r"^IMAGE_TAG \?= (\S+)$", makefile, re.M).group(1)  # type: ignore[union-attr]
    targets = re.search(
        r"^image-cpu image-gpu: image-%:\n\t.* --target \$\* -t genserve-\$\*:\$\(IMAGE_TAG\) ", makefile, re.M
    )
    assert targets and re.search(r"^images: image-cpu image-gpu$", makefile, re.M)
    built = {f"genserve-cpu:{tag}", f"genserve-gpu:{tag}"}
    services = compose()["services"]
    nodes = ("ray-head", "ray-gpu-worker", "ray-cpu-worker")
    assert {services[s]["image"] for s in nodes} == built
    assert all("GENSERVE_API_KEYS" in services[s]["environment"] for s in nodes)
    text = (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text()
    cluster = yaml.safe_load(text)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    assert {p["template"]["spec"]["containers"][0]["image"] for p in pods} == built
    for pod in pods:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["GENSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "genserve-api-keys"
        assert (
            env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"]["value"] == "1"
        )
    assert "kubectl create secret generic genserve-api-keys --from-literal=keys=" in text  # how to make it


def test_step_level_models_scale_on_queued_work_wherever_they_are_deployed() -> None:
    """Every diffusion-family application in the Serve config (and so in the RayService, which
    mirrors it) names genserve's queued-work policy, and the path imports."""
    from ray._common.utils import import_module_and_attr

    from deployments.autoscaling import QueuedWorkPolicy
    from service.cards import discover, load_card

    families = {folder.name: load_card(folder).family for folder in discover(ROOT / "exported")}
    shipped = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    checked = 0
    for app in shipped["applications"]:
        model = app.get("args", {}).get("model")
        if families.get(model) != "diffusion":
            continue
        policy = app["deployments"][0]["autoscaling_config"]["policy"]
        _, target = import_module_and_attr(policy["policy_function"])
        assert target is QueuedWorkPolicy and QueuedWorkPolicy(**policy["policy_kwargs"]).target_backlog_s > 0
        checked += 1
    assert checked == sum(f == "diffusion" for f in families.values()) >= 2  # every one: digits, distilled, emoji
