"""Moving in a latent space: a GAN's or VAE's latents, a diffusion model's starting noise;
encode, reconstruct, interpolate.

Interpolation is spherical (slerp), as for Gaussian latents a straight line passes through
latents of atypically small norm (White, 2016); for a GAN or VAE it runs on the standard-normal
noise that the model's prior maps to latents. A seed's endpoint is the latent `generate` draws
for image 0 of a request with that seed and label, so frame 0 is exactly the image `generate`
returns.
"""

from __future__ import annotations

import numpy as np

from service.generators import job_latents, resolve_label
from service.jobs import LatentJob
from service.noise import image_rng
from service.registry import LoadedModel

PARALLEL_COS = 0.9995  # nearly parallel endpoints: slerp's sin(omega) vanishes, so lerp instead


def slerp(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """`frames` points from a to b, both ends included: (frames, d). Shoemake's slerp formula on
    the latents as they are (it follows the great circle when their norms are equal, as two
    Gaussian latents' nearly are)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    t = np.linspace(0.0, 1.0, frames)[:, None]
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return (1 - t) * a64 + t * b64
    cos = float(np.clip(a64 @ b64 / (na * nb), -1.0, 1.0))
    if cos > PARALLEL_COS:
        return (1 - t) * a64 + t * b64
    omega = np.arccos(cos)
    out = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    out[0], out[-1] = a64, b64  # exact endpoints, whatever the rounding
    return out  # type: ignore[no-any-return]


def seed_latent(model: LoadedModel, seed: int, label: int | None, truncation: float | None = None) -> np.ndarray:
    """The latent `generate` draws for image 0 of a request with `seed` and `label`."""
    assert model.card.latent_dim is not None and model.prior is not None
    eps = job_latents(LatentJob(seed, 1, label, truncation=truncation), model.card.latent_dim)
    z: np.ndarray = model.prior.sample(eps, np.array([resolve_label(model, label)]))[0]
    return z


def interpolate(model: LoadedModel, a: np.ndarray, b: np.ndarray, frames: int, label: int | None) -> np.ndarray:
    """Images (frames, C, H, W) from latent a to latent b, both ends included: slerp between the
    noise that draws them under the model's prior (`service.priors`), where the Gaussian geometry
    slerp assumes holds, then back to latents."""
    assert model.prior is not None
    ys = np.full(2, resolve_label(model, label))
    ea, eb = model.prior.whiten(np.stack([a, b]), ys)
    path = slerp(ea, eb, frames)
    z = model.prior.sample(path, np.full(frames, ys[0]))
    z[0], z[-1] = a, b  # exact endpoints, whatever the rounding
    return decode(model, z, label)


def seed_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The starting noise a diffusion sample draws for image 0 of a request with `seed`, flat."""
    return image_rng(seed, 0).standard_normal(shape).reshape(-1)


def decode(model: LoadedModel, z: np.ndarray, label: int | None) -> np.ndarray:
    """Latents (n, d) -> images (n, C, H, W) in the card's value range."""
    roles = model.card.onnx.inputs
    labels = np.full(len(z), resolve_label(model, label), dtype=np.int64)
    out = model.onnx.run(model.card.onnx.output, {roles["latent"]: z.astype(np.float32), roles["label"]: labels})
    return out.astype(np.float32)


def encode(model: LoadedModel, x: np.ndarray, label: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """q(z | x, y) for images in network range: means (n, d) and standard deviations (n, d),
    the latter None where the card names no log-variance output."""
    card = model.card
    assert model.encoder is not None and card.encoder is not None
    roles = card.encoder.inputs
    labels = np.full(len(x), resolve_label(model, label), dtype=np.int64)
    feeds = {roles["sample"]: x, roles["label"]: labels}
    if card.density is None:
        return model.encoder.run(card.encoder.output, feeds).astype(np.float64), None
    mu, logvar = model.encoder.run_all([card.encoder.output, card.density.encoder_logvar], feeds)
    return mu.astype(np.float64), np.exp(0.5 * logvar.astype(np.float64))
