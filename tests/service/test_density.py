"""VAE scoring on the shipped VAE: the bounds against a direct computation, their order and
determinism, and the generative classifier; latent interpolation and encoding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_expit
from scipy.stats import multivariate_normal, norm

from service import density, latents
from service.generators import generate_latent
from service.jobs import LatentJob
from service.noise import image_rng
from service.registry import LoadedModel, load_model

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


@pytest.fixture(scope="module")
def vae() -> LoadedModel:
    return load_model(SHIPPED / "vae", device="cpu")


@pytest.fixture(scope="module")
def digits(vae: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """Twenty VAE digits (two of each label), quantised to 8 bits as an uploaded PNG would be."""
    labels = [y for y in range(10) for _ in range(2)]
    images = np.concatenate(generate_latent(vae, [LatentJob(100 + i, 1, y) for i, y in enumerate(labels)]))
    return np.round((images + 1) * 127.5) / 127.5 - 1, np.array(labels)


def test_a_one_sample_bound_equals_the_log_weight_computed_directly(
    vae: LoadedModel, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """IWAE with k = 1 is log p(x|z,y) + log p(z|y) - log q(z|x,y) at z = mu + sigma * eps, eps
    from the image's own noise source: recomputed here with scipy's densities (the prior: the
    Gaussian the card names)."""
    x, y = digits[0][:3], 4
    got = density.log_bounds(vae, x, [y], k=1, seed=11).iwae[:, 0]
    mu, logvar = density.posterior(vae, x, np.full(3, y))
    for i in range(3):
        eps = image_rng(11, i).standard_normal((1, mu.shape[1]))[0]
        sigma = np.exp(0.5 * logvar[i])
        z = mu[i] + sigma * eps
        logits = density.decoder_logits(vae, z[None].astype(np.float32), np.array([y])).ravel().astype(np.float64)
        on = ((x[i].ravel() + 1) / 2 >= 0.5).astype(np.float64)
        log_px = (on * log_expit(logits) + (1 - on) * log_expit(-logits)).sum()
        tril = vae.prior.scale_tril[y]  # type: ignore[union-attr]
        log_pz = multivariate_normal(vae.prior.mean[y], tril @ tril.T).logpdf(z)  # type: ignore[union-attr]
        want = log_px + log_pz - norm.logpdf(z, mu[i], sigma).sum()
        assert got[i] == pytest.approx(want, abs=1e-3)


def test_the_bounds_tighten_with_k_are_deterministic_and_do_not_depend_on_chunking(
    vae: LoadedModel, digits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = digits[0]
    b1 = density.log_bounds(vae, x, [3], k=1, seed=0).iwae.mean()
    b64 = density.log_bounds(vae, x, [3], k=64, seed=0)
    assert b64.iwae.mean() > b1 and b64.iwae.mean() > b64.elbo.mean()
    again = density.log_bounds(vae, x, [3], k=64, seed=0)
    assert np.array_equal(again.iwae, b64.iwae) and np.array_equal(again.elbo, b64.elbo)
    assert not np.array_equal(density.log_bounds(vae, x, [3], k=64, seed=1).iwae, b64.iwae)
    monkeypatch.setattr(density, "CHUNK_ROWS", 100)  # one image per network call, and a ragged one
    small = density.log_bounds(vae, x, [3], k=64, seed=0)
    np.testing.assert_allclose(small.iwae, b64.iwae, rtol=0, atol=1e-9)
    # an image's numbers depend on its index in the request and the seed, not on its neighbours
    alone = density.log_bounds(vae, x[5:6], [3], 64, 0).iwae[0]
    np.testing.assert_allclose(density.log_bounds(vae, x[[5, 0, 9]], [3], 64, 0).iwae[0], alone, atol=1e-9)


def test_marginal_bounds_and_bayes_rule(vae: LoadedModel, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    b = density.log_bounds(vae, x, list(range(10)), k=32, seed=0)
    prior = [0.1] * 10
    marg = density.marginal(b.iwae, prior)
    assert np.allclose(marg, np.log(np.exp(b.iwae - b.iwae.max(1, keepdims=True)).mean(1)) + b.iwae.max(1))
    assert (marg <= b.iwae.max(axis=1)).all() and (marg >= b.iwae.max(axis=1) - math.log(10)).all()
    p = density.classify(b.iwae, prior)
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    assert (p.argmax(axis=1) == y).mean() >= 0.9  # the VAE's own clear digits are classified as drawn
    skewed = density.classify(b.iwae, [0.91] + [0.01] * 9)
    assert (skewed[:, 0] >= p[:, 0] - 1e-12).all()  # a prior on label 0 raises its posterior everywhere


def test_bits_per_dim_and_binarisation() -> None:
    assert density.nats_to_bits_per_dim(-784 * math.log(2), 784) == pytest.approx(1.0)
    x = np.array([-1.0, -0.01, 0.0, 0.02, 1.0], dtype=np.float32)
    assert density.binarize(x, (-1.0, 1.0), 0.5).tolist() == [0, 0, 1, 1, 1]


def test_slerp_keeps_its_endpoints_and_the_norm_of_equal_norm_latents() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(16)
    b = rng.standard_normal(16)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    path = latents.slerp(a, b, 9)
    assert path.shape == (9, 16) and np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-9)
    lerp_mid = np.linalg.norm((a + b) / 2)
    assert lerp_mid < np.linalg.norm(path[4])  # a straight line cuts inside the sphere
    assert np.allclose(latents.slerp(a, a, 3), a)  # parallel endpoints: no division by sin(0)


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_a_seeds_first_frame_is_the_image_generate_gives_for_that_seed(family: str) -> None:
    model = load_model(SHIPPED / family, device="cpu")
    a, b = latents.seed_latent(model, 7, 2), latents.seed_latent(model, 8, 2)
    frames = latents.interpolate(model, a, b, 5, 2)
    want = generate_latent(model, [LatentJob(7, 1, 2), LatentJob(8, 1, 2)])
    np.testing.assert_allclose(frames[0], want[0][0], atol=1e-5)
    np.testing.assert_allclose(frames[-1], want[1][0], atol=1e-5)


def test_encode_gives_positive_spreads_and_reconstructions_resemble_their_inputs(
    vae: LoadedModel, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits[0]
    mean, std = latents.encode(vae, x, None)
    assert std is not None and mean.shape == std.shape == (20, 16) and (std > 0).all()
    rec = latents.decode(vae, mean, None)
    own = np.abs(rec - x).mean()
    shuffled = np.abs(rec - x[::-1]).mean()
    assert own < 0.5 * shuffled
