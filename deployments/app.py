"""`build_app(args) -> Application`: one deployment per model folder, the family choosing the class.

Named by `import_path: deployments.app:build_app` in `serve_config.yaml`; `args` there (or
GENSERVE_* environment variables) set the model directory, device and ONNX Runtime threads.
Per-deployment options in the YAML's `deployments:` list override the defaults set here.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.ingress import Ingress
from deployments.replicas import REPLICA_CLASSES, ReplicaClass
from service.registry import check_models
from service.settings import Settings

# Defaults for a CPU machine: fractional CPUs so that every replica fits on 2 cores.
REPLICA_CPUS = 0.2
INGRESS_CPUS = 0.1


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def build_app(
    args: dict[str, Any] | None = None, replica_classes: dict[str, type[ReplicaClass]] | None = None
) -> Application:
    """The genserve application for every healthy model folder in the model directory.

    `args` holds `Settings` fields, and optionally `deployment_options`: deployment name ->
    options for `.options()` (num_gpus, autoscaling_config, ...), the programmatic twin of the
    YAML's per-deployment overrides. `replica_classes` (family -> class) swaps a family's
    replica class; the benchmark's comparison variants use it.
    """
    classes = {**REPLICA_CLASSES, **(replica_classes or {})}
    args = dict(args or {})
    overrides: dict[str, dict[str, Any]] = args.pop("deployment_options", {})
    settings = Settings(**args)
    # A broken model folder is left out and reported by /readyz; the healthy ones are served.
    cards, broken = check_models(settings.model_dir)
    handles = {}
    for name, card in cards.items():
        cls = classes[card.family]
        user_config: dict[str, Any] = (
            {"max_batch": settings.max_batch, "max_queued_images": settings.max_queued_images}
            if card.family == "diffusion"
            else {"max_batch_images": settings.max_batch, "batch_wait_timeout_s": 0.005}
        )
        deployment = serve.deployment(
            name=model_deployment_name(name),
            ray_actor_options={"num_cpus": REPLICA_CPUS},
            # Requests wait in Serve's router only briefly: beyond 64 the caller gets a fast 503
            # (back-pressure) rather than a wait the replica's admission control cannot see.
            max_ongoing_requests=256,
            max_queued_requests=64,
            user_config=user_config,
        )(cls)
        if model_deployment_name(name) in overrides:
            deployment = deployment.options(**overrides[model_deployment_name(name)])
        handles[name] = deployment.bind(str(settings.model_dir.resolve()), name, settings.device, settings.ort_threads)
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": INGRESS_CPUS}, max_ongoing_requests=512)(
        Ingress
    )
    app: Application = ingress.bind(handles, cards, broken, settings.request_timeout_s)
    return app
