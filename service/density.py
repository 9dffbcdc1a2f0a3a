"""Scoring images with a VAE: log-likelihood bounds, and the generative classifier p(y|x).

For a conditional VAE with encoder q(z | x, y), decoder p(x | z, y) (Bernoulli pixels) and prior
p(z | y) (the model's `service.priors.LatentPrior`: N(0, I), or the Gaussian per label its card
names; samples are drawn from the same one), for each image x and label y:

- ELBO(x, y) = E_q[log p(x | z, y)] - KL(q(z | x, y) || p(z | y)), the expectation estimated
  with the k posterior samples and the KL in closed form;
- IWAE_k(x, y) = log (1/k) sum_j p(x | z_j, y) p(z_j | y) / q(z_j | x, y) (Burda et al., 2016),
  a tighter lower bound on log p(x | y) that grows with k.

Marginal bounds over labels: log p(x) >= logsumexp_y [log p(y) + bound(x, y)]. The classifier is
Bayes' rule on the IWAE bounds: p(y | x) = softmax_y [log p(y) + IWAE_k(x, y)].

Pixels are scored as binary (see `service.cards.DensitySpec`); the encoder sees the grey image it
was trained on (any proposal q gives a valid bound). The k noise draws of image i come from
`image_rng(seed, i)` and are shared by every label (common random numbers: the label comparison
is not blurred by independent noise), so a result depends only on (image, label, k, seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.noise import image_rng
from service.priors import LOG_2PI
from service.registry import LoadedModel

# Decoder rows per network call: large enough to keep the call efficient, small enough that a
# deadline or a departed client is noticed within a fraction of a second.
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Bounds:
    """Per image and label, lower bounds on log p(x | y) in nats: arrays (n, labels)."""

    elbo: np.ndarray
    iwae: np.ndarray


def nats_to_bits_per_dim(log_p: np.ndarray | float, dims: int) -> np.ndarray:
    """A log-likelihood (nats) as a negative log-likelihood in bits per dimension."""
    return -np.asarray(log_p, dtype=np.float64) / (dims * math.log(2))


def binarize(x: np.ndarray, value_range: tuple[float, float], threshold: float) -> np.ndarray:
    """Network-range pixels -> {0, 1} float32, on where the intensity is at least `threshold`."""
    lo, hi = value_range
    return ((x - lo) / (hi - lo) >= threshold).astype(np.float32)


def bernoulli_log_prob(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum over pixels of log Bernoulli(x | sigmoid(logits)), per row; stable for any logit."""
    lg = logits.reshape(len(logits), -1).astype(np.float64)
    return (x.reshape(len(x), -1) * lg - np.logaddexp(0.0, lg)).sum(axis=1)  # type: ignore[no-any-return]


def posterior(model: LoadedModel, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q(z | x, y): means and log-variances (n, latent_dim) for images in network range."""
    card = model.card
    assert model.encoder is not None and card.encoder is not None and card.density is not None
    roles = card.encoder.inputs
    mu, logvar = model.encoder.run_all(
        [card.encoder.output, card.density.encoder_logvar], {roles["sample"]: x, roles["label"]: labels}
    )
    return mu.astype(np.float64), logvar.astype(np.float64)


def decoder_logits(model: LoadedModel, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    card = model.card
    assert card.density is not None
    roles = card.onnx.inputs
    return model.onnx.run(card.density.decoder_logits, {roles["latent"]: z, roles["label"]: labels})


def log_bounds(
    model: LoadedModel,
    x: np.ndarray,
    labels: list[int],
    k: int,
    seed: int,
    check: Callable[[], None] = lambda: None,
) -> Bounds:
    """ELBO and IWAE_k bounds (n, len(labels)) for images `x` (n, C, H, W) in network range.

    `check` runs between network calls and may raise (a deadline passed, the client left)."""
    card, prior = model.card, model.prior
    assert card.density is not None and card.latent_dim is not None and prior is not None
    n, d = len(x), card.latent_dim
    xb = binarize(x, card.image.value_range, card.density.binarize_at)
    eps = np.stack([image_rng(seed, i).standard_normal((k, d)) for i in range(n)])  # (n, k, d)
    elbo = np.empty((n, len(labels)))
    iwae = np.empty((n, len(labels)))
    per_call = max(1, CHUNK_ROWS // k)  # images per decoder call
    for col, y in enumerate(labels):
        ys = np.full(n, y, dtype=np.int64)
        mu, logvar = posterior(model, x, ys)
        check()
        sigma = np.exp(0.5 * logvar)
        kl = prior.kl(mu, logvar, y)  # (n,)
        for start in range(0, n, per_call):
            sl = slice(start, min(n, start + per_call))
            z = mu[sl, None, :] + sigma[sl, None, :] * eps[sl]  # (m, k, d)
            m = z.shape[0]
            logits = decoder_logits(model, z.reshape(m * k, d).astype(np.float32), np.full(m * k, y, dtype=np.int64))
            check()
            target = np.repeat(xb[sl], k, axis=0)
            log_px = bernoulli_log_prob(logits, target).reshape(m, k)
            log_pz = prior.log_prob(z, y)
            log_qz = -0.5 * (eps[sl] ** 2 + LOG_2PI + logvar[sl, None, :]).sum(axis=2)
            log_w = log_px + log_pz - log_qz
            iwae[sl, col] = np.logaddexp.reduce(log_w, axis=1) - math.log(k)
            elbo[sl, col] = log_px.mean(axis=1) - kl[sl]
    return Bounds(elbo, iwae)


def marginal(bounds: np.ndarray, prior: list[float]) -> np.ndarray:
    """Per-label bounds (n, labels) -> bounds on log p(x) = log sum_y p(y) p(x | y): (n,)."""
    return np.logaddexp.reduce(bounds + np.log(np.asarray(prior))[None, :], axis=1)  # type: ignore[no-any-return]


def classify(iwae: np.ndarray, prior: list[float]) -> np.ndarray:
    """p(y | x) by Bayes' rule on IWAE bounds (n, labels): rows sum to 1."""
    logits = iwae + np.log(np.asarray(prior))[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
