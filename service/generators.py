"""GAN and VAE generation: many requests' images in one batched network call.

Each image draws its latent from its own generator, seeded from (request seed, image index),
so a request's images do not depend on what else shares the batch.
"""

from __future__ import annotations

import numpy as np

from service.jobs import LatentJob
from service.noise import image_rng
from service.registry import LoadedModel

# Far beyond what any accepted truncation needs (see service.jobs.MIN_TRUNCATION).
MAX_REDRAWS = 100_000


def truncated_normal(rng: np.random.Generator, size: int, bound: float) -> np.ndarray:
    """Standard normal draws with every entry beyond +-bound redrawn (BigGAN's truncation trick).

    The redraws are bounded: a bound too small to finish (the API refuses below MIN_TRUNCATION)
    raises instead of computing forever."""
    z = rng.standard_normal(size)
    for _ in range(MAX_REDRAWS):
        out = np.abs(z) > bound
        if not out.any():
            return z
        z[out] = rng.standard_normal(int(out.sum()))
    raise ValueError(f"truncation {bound} is too small: entries still outside after {MAX_REDRAWS} redraws")


def job_latents(job: LatentJob, latent_dim: int) -> np.ndarray:
    """(n, latent_dim) float32 noise for one job: the latents under N(0, I), which the model's
    prior maps to its own (`service.priors.LatentPrior.sample`)."""
    rows = []
    for i in range(job.n):
        rng = image_rng(job.seed, i)
        if job.truncation is not None:
            rows.append(truncated_normal(rng, latent_dim, job.truncation))
        else:
            rows.append(rng.standard_normal(latent_dim) * job.temperature)
    return np.stack(rows).astype(np.float32)


def resolve_label(model: LoadedModel, label: int | None) -> int:
    """A request's label as the network's label input: None means the card's null label."""
    if label is not None:
        return label
    if model.card.null_label is None:
        raise ValueError(f"model {model.name!r} has no null label, so a label is required")
    return model.card.null_label


def generate_latent(model: LoadedModel, jobs: list[LatentJob], max_rows: int = 256) -> list[np.ndarray]:
    """Images (n, C, H, W) in the card's value range for each job, from batched network calls."""
    assert model.card.latent_dim is not None and model.prior is not None
    eps = np.concatenate([job_latents(j, model.card.latent_dim) for j in jobs])
    labels = np.concatenate([np.full(j.n, resolve_label(model, j.label), dtype=np.int64) for j in jobs])
    z = model.prior.sample(eps, labels)
    roles = model.card.onnx.inputs
    chunks = [
        model.onnx.run(
            model.card.onnx.output, {roles["latent"]: z[i : i + max_rows], roles["label"]: labels[i : i + max_rows]}
        )
        for i in range(0, len(z), max_rows)
    ]
    images = np.concatenate(chunks).astype(np.float32)
    bounds = np.cumsum([j.n for j in jobs])[:-1]
    return list(np.split(images, bounds))
