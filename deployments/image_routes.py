"""Routes beyond sampling, on the model's own replica: score and classify images (a VAE with a
`density` card block), encode and reconstruct them (a VAE with an encoder), interpolate between
seeds (GAN, VAE) or images (VAE). Diffusion's image-to-image and inpainting are generate
requests with an input image (`deployments.routes`); only their body limits are here.

Each request is validated (the schemas in `service.schemas`, images decoded and checked by
`service.inputs` before any network call), then computed in a worker thread in chunks: between
chunks the work stops once the deadline passes or the client leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, Request

from deployments.http import MAX_BODY_BYTES, parse_request
from service import density, latents
from service.cards import ModelCard
from service.images import base64_text, encode_images
from service.inputs import MAX_IMAGE_BASE64_CHARS, decode_image, decode_images, to_network
from service.registry import LoadedModel
from service.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    ImageScore,
    ImagesResponse,
    InterpolateRequest,
    ReconstructRequest,
    ScoreRequest,
    ScoreResponse,
    Timings,
)
from service.settings import Limits

T = TypeVar("T")
Check = Callable[[], None]
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (401, 404, 413, 422, 504)}
JSON_OVERHEAD_BYTES = 4096


class ComputeBackend(Protocol):
    """What these routes need of a replica: its loaded model, and a way to run work off the
    event loop that stops (via the `check` it passes in) at the deadline or when the client leaves."""

    @property
    def model(self) -> LoadedModel: ...

    async def compute(self, fn: Callable[[Check], T], deadline: float, route: str) -> T: ...


def routes_for(card: ModelCard) -> list[str]:
    """The routes beyond `/generate` that a model's card supports."""
    return [r for r in card.routes() if r != "/generate"]


def body_limits(card: ModelCard, limits: Limits) -> dict[str, int]:
    """Body limits of the image-taking routes: room for the most images a request may send."""
    images = limits.max_input_images * (MAX_IMAGE_BASE64_CHARS + 16) + JSON_OVERHEAD_BYTES
    pair = 2 * (MAX_IMAGE_BASE64_CHARS + 16) + JSON_OVERHEAD_BYTES
    sizes = {"/score": images, "/classify": images, "/encode": images, "/reconstruct": images, "/interpolate": pair}
    sizes |= {"/img2img": pair, "/inpaint": pair}
    if card.family == "diffusion":
        sizes["/interpolate"] = MAX_BODY_BYTES
    return {route: sizes[route] for route in routes_for(card)}


def _timings(started: float) -> Timings:
    took = time.monotonic() - started
    return Timings(queue_seconds=0.0, compute_seconds=took, total_seconds=took)


def _images(model: LoadedModel, images: np.ndarray, started: float, req: Any) -> ImagesResponse:
    """Network output as the answer to `req` (its grid, output_format and quality)."""
    files, tiled = encode_images(images, model.card.image.value_range, req.grid, req.output_format, req.quality)
    return ImagesResponse(
        model=model.card.name,
        output_format=req.output_format,
        images=[base64_text(f) for f in files],
        grid_base64=base64_text(tiled) if tiled is not None else None,
        timings=_timings(started),
    )


def add_image_routes(app: FastAPI, backend: ComputeBackend, timeout_s: float, limits: Limits) -> None:
    """Adds the routes `routes_for(card)` lists to a model replica's app."""
    model = backend.model
    card = model.card
    routes = routes_for(card)

    async def parsed(request: Request, schema: type[Any]) -> tuple[Any, float, float]:
        deadline = time.time() + timeout_s
        return parse_request(await request.body(), schema, card, limits), deadline, time.monotonic()

    def images_of(texts: list[str]) -> np.ndarray:
        return to_network(decode_images(texts, card), card)

    if "/score" in routes:

        @app.post("/score", response_model=ScoreResponse, responses=ERRORS)
        async def score(request: Request) -> ScoreResponse:
            req, deadline, started = await parsed(request, ScoreRequest)
            dims = int(np.prod(card.image_shape))

            def work(check: Check) -> list[ImageScore]:
                x = images_of(req.images)
                labels = [req.label] if req.label is not None else list(range(len(card.labels)))
                b = density.log_bounds(model, x, labels, req.k, req.seed, check)
                elbo, iwae = (b.elbo[:, 0], b.iwae[:, 0]) if req.label is not None else (
                    density.marginal(b.elbo, card.label_prior()), density.marginal(b.iwae, card.label_prior()))  # fmt: skip
                e_bpd, i_bpd = density.nats_to_bits_per_dim(elbo, dims), density.nats_to_bits_per_dim(iwae, dims)
                return [
                    ImageScore(
                        index=i,
                        elbo=float(elbo[i]),
                        iwae=float(iwae[i]),
                        elbo_bits_per_dim=float(e_bpd[i]),
                        iwae_bits_per_dim=float(i_bpd[i]),
                    )
                    for i in range(len(x))
                ]

            scores = await backend.compute(work, deadline, "score")
            return ScoreResponse(
                model=card.name, label=req.label, k=req.k, seed=req.seed, dims=dims, scores=scores,
                timings=_timings(started),
            )  # fmt: skip

    if "/classify" in routes:

        @app.post("/classify", response_model=ClassifyResponse, responses=ERRORS)
        async def classify(request: Request) -> ClassifyResponse:
            req, deadline, started = await parsed(request, ClassifyRequest)

            def work(check: Check) -> tuple[np.ndarray, np.ndarray]:
                b = density.log_bounds(
                    model, images_of(req.images), list(range(len(card.labels))), req.k, req.seed, check
                )
                return density.classify(b.iwae, card.label_prior()), b.iwae

            probs, iwae = await backend.compute(work, deadline, "classify")
            return ClassifyResponse(
                model=card.name, labels=card.labels, k=req.k, seed=req.seed,
                probabilities=probs.tolist(), predicted=probs.argmax(axis=1).tolist(), iwae=iwae.tolist(),
                timings=_timings(started),
            )  # fmt: skip

    if "/encode" in routes:

        @app.post("/encode", response_model=EncodeResponse, responses=ERRORS)
        async def encode(request: Request) -> EncodeResponse:
            req, deadline, started = await parsed(request, EncodeRequest)

            def work(check: Check) -> tuple[np.ndarray, np.ndarray | None]:
                return latents.encode(model, images_of(req.images), req.label)

            mean, std = await backend.compute(work, deadline, "encode")
            return EncodeResponse(
                model=card.name, label=req.label, mean=mean.tolist(), std=None if std is None else std.tolist(),
                timings=_timings(started),
            )  # fmt: skip

        @app.post("/reconstruct", response_model=ImagesResponse, responses=ERRORS)
        async def reconstruct(request: Request) -> ImagesResponse:
            req, deadline, started = await parsed(request, ReconstructRequest)

            def work(check: Check) -> ImagesResponse:
                mean, _ = latents.encode(model, images_of(req.images), req.label)
                check()
                return _images(model, latents.decode(model, mean, req.label), started, req)

            return await backend.compute(work, deadline, "reconstruct")

    if "/interpolate" in routes and card.family != "diffusion":  # diffusion's is in deployments.routes

        @app.post("/interpolate", response_model=ImagesResponse, responses=ERRORS)
        async def interpolate(request: Request) -> ImagesResponse:
            req, deadline, started = await parsed(request, InterpolateRequest)

            def work(check: Check) -> ImagesResponse:
                if req.from_image is not None:
                    pair = np.stack([decode_image(req.from_image, card, "from_image"),
                                     decode_image(req.to_image, card, "to_image")])  # fmt: skip
                    (a, b), _ = latents.encode(model, to_network(pair, card), req.label)
                    check()
                else:
                    a, b = (latents.seed_latent(model, s, req.label) for s in (req.from_seed, req.to_seed))
                frames = latents.interpolate(model, a, b, req.frames, req.label)
                return _images(model, frames, started, req)

            return await backend.compute(work, deadline, "interpolate")
