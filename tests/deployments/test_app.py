"""The app builder and the production config, without starting Ray."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import build_app, model_deployment_name
from deployments.ingress import json_depth
from service.cards import discover

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deployments" / "serve_config.yaml"


def test_serve_config_is_valid_and_names_every_shipped_model() -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "deployments.app:build_app"
    names = {d.name for d in app.deployments}
    shipped = {model_deployment_name(p.name) for p in discover(ROOT / "exported")}
    assert shipped <= names and "ingress" in names
    for d in app.deployments:
        if d.name.startswith("model-"):
            assert 0 < d.ray_actor_options.num_gpus < 1, "model replicas share a GPU fractionally"
            assert d.autoscaling_config["max_replicas"] > d.autoscaling_config["min_replicas"]
            assert d.max_queued_requests > 0 and d.user_config


def test_build_app_makes_one_deployment_per_model(tiny_model_dir: Path) -> None:
    app = build_app({"model_dir": str(tiny_model_dir)})
    handles = app._bound_deployment.init_args[0]
    assert set(handles) == {"tiny-gan", "tiny-vae", "tiny-diffusion"}
    deployment = handles["tiny-diffusion"]._bound_deployment
    assert deployment.name == "model-tiny-diffusion"
    assert deployment._deployment_config.user_config["max_batch"] == 64
    assert deployment.ray_actor_options["num_cpus"] < 1


def test_json_depth_counts_nesting() -> None:
    assert json_depth({"n": 1}) == 1
    assert json_depth({"n": {"a": [1]}}) == 3


def test_broken_model_folders_are_left_out_and_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    for name in ("tiny-gan", "tiny-vae", "tiny-diffusion"):
        shutil.copytree(tiny_model_dir / name, tmp_path / name)
    (tmp_path / "tiny-vae" / "model.onnx").write_bytes(b"not an onnx file")
    card = json.loads((tmp_path / "tiny-diffusion" / "model.json").read_text())
    card["onnx"]["inputs"]["timestep"] = "time"
    (tmp_path / "tiny-diffusion" / "model.json").write_text(json.dumps(card))
    app = build_app({"model_dir": str(tmp_path)})
    handles, cards, broken = app._bound_deployment.init_args[:3]
    assert set(handles) == set(cards) == {"tiny-gan"}
    assert "tiny-vae/model.onnx: ONNX Runtime cannot load it" in broken["tiny-vae"]
    assert "input 'time' (role timestep) is not in the graph" in broken["tiny-diffusion"]


def test_replica_errors_come_back_with_their_status_and_retry_after() -> None:
    from deployments.ingress import from_error
    from deployments.replicas import ReplicaResult
    from service.errors import DeadlineExceeded, GenserveError, Overloaded

    busy = ReplicaResult.failed(Overloaded("queue full", retry_after=2.4)).error()
    assert busy is not None
    resp = from_error(busy)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
    late = ReplicaResult.failed(DeadlineExceeded("too slow")).error()
    assert late is not None and from_error(late).status_code == 504
    broken = ReplicaResult.failed(GenserveError("network call failed")).error()
    assert broken is not None and from_error(broken).status_code == 500
    assert ReplicaResult([b"png"]).error() is None
