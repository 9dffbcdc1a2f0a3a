"""The Serve applications: one per model folder, whose ingress is the model replica, and a catalog.

HAProxy routes by path prefix straight to the replicas of the application that owns it:

- `/v1/models/{name}...` -> application `model-{name}`: its one deployment `model-{name}` is
  both the HTTP edge and the model (a generate request crosses one Python process);
- everything else -> application `genserve` (deployment `catalog`): the model list, health,
  readiness, OpenAPI, 404s for names no model serves, and OpenAI's `/v1/images/generations`
  (the model is in the body, so the catalog hands it on through a deployment handle).

`build_apps` makes all of them for a model directory (`make serve`, tests, bench); a cluster's
`serve_config.yaml` names `build_model` once per model and `build_catalog` once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.metrics import CatalogMetrics
from deployments.replicas import REPLICA_CLASSES, ReplicaClass
from deployments.routes import Images, catalog_app
from service.cards import ModelCard
from service.errors import GenserveError
from service.jobs import Job
from service.registry import check_models
from service.settings import Settings

# Defaults for a CPU machine: fractional CPUs so that every replica fits on 2 cores.
REPLICA_CPUS = 0.2
CATALOG_CPUS = 0.1
CATALOG_APP = "genserve"


def model_app_name(model: str) -> str:
    """The Serve application (and its one deployment) of a model."""
    return f"model-{model}"


model_deployment_name = model_app_name


def model_route_prefix(model: str) -> str:
    return f"/v1/models/{model}"


@dataclass(frozen=True)
class ServedApp:
    """A Serve application with the name and route prefix it runs under."""

    name: str
    route_prefix: str
    app: Application


class Catalog:
    """The catalog deployment; its HTTP app is `deployments.routes.catalog_app`."""

    def __init__(self, cards: dict[str, ModelCard], broken: dict[str, str]) -> None:
        self.cards = cards
        self.broken = broken
        self.metrics = CatalogMetrics()
        self.handles: dict[str, DeploymentHandle[Any]] = {}

    def __serve_build_asgi_app__(self) -> FastAPI:
        timeout_s = Settings().request_timeout_s
        return catalog_app(
            self.cards, self.broken, self.probe, self.metrics.error, self.forward, timeout_s, self.stream
        )

    def _handle(self, name: str) -> DeploymentHandle[Any]:
        if name not in self.handles:
            self.handles[name] = serve.get_deployment_handle(model_deployment_name(name), app_name=model_app_name(name))
        return self.handles[name]

    async def probe(self, name: str) -> dict[str, str]:
        """The model's `ready()`: a 1-image request on one of its replicas."""
        info: dict[str, str] = await self._handle(name).ready.remote()
        return info

    async def forward(self, name: str, job: Job, deadline: float) -> tuple[list[bytes], float]:
        """A job the catalog validated (OpenAI's Images API), run by one of the model's replicas:
        its PNGs and seconds. The replica's own errors (overload, deadline) come back as they are."""
        try:
            out: Images = await self._handle(name).generate.remote(job, deadline, False)
        except GenserveError:
            raise
        except RayTaskError as e:
            if isinstance(e.cause, GenserveError):
                raise e.cause from None
            raise
        return out.pngs, out.total_seconds

    async def stream(self, name: str, job: Job, deadline: float, previews: int) -> AsyncIterator[dict[str, Any]]:
        """The replica's `generate_stream` events, through a streaming deployment handle."""
        events = self._handle(name).options(stream=True).generate_stream.remote(job, deadline, previews)
        assert isinstance(events, DeploymentResponseGenerator)
        try:
            async for event in events:
                yield event
        except RayTaskError as e:
            if isinstance(e.cause, GenserveError):
                raise e.cause from None
            raise


def _settings(args: dict[str, Any] | None) -> tuple[Settings, dict[str, dict[str, Any]]]:
    args = dict(args or {})
    overrides: dict[str, dict[str, Any]] = args.pop("deployment_options", {})
    args.pop("model", None)
    return Settings(**args), overrides


def model_application(
    card: ModelCard, settings: Settings, options: dict[str, Any] | None = None, cls: type[Any] | None = None
) -> Application:
    """One model's application: its replica class as a Serve ingress deployment."""
    cls = cls or REPLICA_CLASSES[card.family]
    user_config: dict[str, Any] = (
        {"max_batch": settings.max_batch, "max_queued_images": settings.max_queued_images}
        if card.family in ("diffusion", "text2image")
        else {
            "max_batch_images": settings.max_batch,
            "batch_wait_timeout_s": 0.0,
            "max_queued_images": settings.max_queued_images,
        }
    )
    deployment = serve.deployment(
        name=model_deployment_name(card.name),
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        # The replica's own admission answers overload with a JSON 503 (queued images, and for
        # diffusion the deadline); Serve's per-replica cap is only a last resort behind it.
        max_ongoing_requests=1024,
        max_queued_requests=256,
        health_check_period_s=10,
        health_check_timeout_s=30,
        user_config=user_config,
    )(serve.ingress()(cls))
    if options:
        deployment = deployment.options(**options)
    app: Application = deployment.bind(
        str(settings.model_dir.resolve()), card.name, settings.device, settings.ort_threads
    )
    return app


def catalog_application(
    cards: dict[str, ModelCard], broken: dict[str, str], options: dict[str, Any] | None = None
) -> Application:
    deployment = serve.deployment(
        name="catalog", ray_actor_options={"num_cpus": CATALOG_CPUS}, max_ongoing_requests=512
    )(serve.ingress()(Catalog))
    if options:
        deployment = deployment.options(**options)
    app: Application = deployment.bind(cards, broken)
    return app


def build_apps(
    args: dict[str, Any] | None = None, replica_classes: dict[str, type[ReplicaClass]] | None = None
) -> list[ServedApp]:
    """The catalog and one application per healthy model folder in the model directory.

    `args` holds `Settings` fields, and optionally `deployment_options`: deployment name ->
    options for `.options()` (num_gpus, autoscaling_config, ...). `replica_classes` (family ->
    class) swaps a family's replica class; the benchmark's comparison variants use it.
    """
    classes = {**REPLICA_CLASSES, **(replica_classes or {})}
    settings, overrides = _settings(args)
    # A broken model folder is left out and reported by /readyz; the healthy ones are served.
    cards, broken = check_models(settings.model_dir)
    apps = [ServedApp(CATALOG_APP, "/", catalog_application(cards, broken, overrides.get("catalog")))]
    for name, card in cards.items():
        app = model_application(card, settings, overrides.get(model_deployment_name(name)), classes[card.family])
        apps.append(ServedApp(model_app_name(name), model_route_prefix(name), app))
    return apps


def build_model(args: dict[str, Any]) -> Application:
    """`import_path` for one model's application in a Serve config: `args.model` names the folder."""
    settings, _ = _settings(args)
    cards, broken = check_models(settings.model_dir)
    name = args["model"]
    if name not in cards:
        raise ValueError(broken.get(name) or f"no model folder {name!r} in {settings.model_dir}")
    return model_application(cards[name], settings)


def build_catalog(args: dict[str, Any]) -> Application:
    """`import_path` for the catalog application in a Serve config."""
    settings, _ = _settings(args)
    cards, broken = check_models(settings.model_dir)
    return catalog_application(cards, broken)
