"""The latent prior: sampling and whitening invert each other, the log-density and the KL agree
with scipy and a direct matrix computation, bad prior files are refused, and a VAE card's prior
is what generation and interpolation draw from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from service import latents
from service.cards import load_card
from service.errors import ModelLoadError
from service.generators import generate_latent
from service.jobs import LatentJob
from service.noise import image_rng
from service.priors import LatentPrior
from service.registry import load_model

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


def random_prior(rows: int = 3, d: int = 4, seed: int = 0) -> LatentPrior:
    rng = np.random.default_rng(seed)
    tril = np.tril(rng.normal(size=(rows, d, d)) * 0.3)
    idx = np.arange(d)
    tril[:, idx, idx] = rng.uniform(0.5, 1.5, size=(rows, d))
    return LatentPrior(rng.normal(size=(rows, d)), tril)


def test_sample_and_whiten_invert_each_other_per_label() -> None:
    prior = random_prior()
    eps = np.random.default_rng(1).standard_normal((6, 4))
    labels = np.array([0, 1, 2, 2, 1, 0])
    z = prior.sample(eps, labels)
    np.testing.assert_allclose(
        z, prior.mean[labels] + np.einsum("nij,nj->ni", prior.scale_tril[labels], eps), rtol=1e-6
    )
    np.testing.assert_allclose(prior.whiten(z, labels), eps, atol=1e-5)


def test_the_log_density_is_the_gaussian_with_covariance_l_l_transposed() -> None:
    prior = random_prior()
    z = np.random.default_rng(2).standard_normal((5, 4))
    for y in range(prior.rows):
        cov = prior.scale_tril[y] @ prior.scale_tril[y].T
        want = multivariate_normal(prior.mean[y], cov).logpdf(z)
        np.testing.assert_allclose(prior.log_prob(z, y), want, rtol=1e-10)


def test_the_closed_form_kl_matches_the_matrix_formula() -> None:
    prior = random_prior()
    rng = np.random.default_rng(3)
    mu, logvar = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)) * 0.5
    for y in range(prior.rows):
        cov = prior.scale_tril[y] @ prior.scale_tril[y].T
        prec = np.linalg.inv(cov)
        for i in range(4):
            q = np.diag(np.exp(logvar[i]))
            diff = prior.mean[y] - mu[i]
            want = 0.5 * (
                np.trace(prec @ q) + diff @ prec @ diff - 4 + np.linalg.slogdet(cov)[1] - np.linalg.slogdet(q)[1]
            )
            assert prior.kl(mu, logvar, y)[i] == pytest.approx(want, rel=1e-10)


def test_the_standard_prior_is_n_0_i() -> None:
    prior = LatentPrior.standard(2, 3)
    eps = np.random.default_rng(4).standard_normal((2, 3))
    np.testing.assert_array_equal(prior.sample(eps, np.array([0, 1])), eps.astype(np.float32))
    np.testing.assert_allclose(prior.log_prob(eps, 1), norm.logpdf(eps).sum(axis=1))
    mu, logvar = eps, eps * 0.1
    np.testing.assert_allclose(prior.kl(mu, logvar, 0), 0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(axis=1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, t: (m, t[:, :3]), "scale_tril has shape"),
        (lambda m, t: (m, t + np.triu(np.ones_like(t), 1)), "not lower-triangular"),
        (lambda m, t: (m, -t), "positive diagonal"),
        (lambda m, t: (m * np.nan, t), "non-finite"),
    ],
)
def test_a_malformed_prior_is_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    p = random_prior()
    with pytest.raises(ValueError, match=message):
        LatentPrior(*change(p.mean, p.scale_tril))


@pytest.fixture
def shifted_vae(tmp_path: Path) -> Path:
    """The shipped VAE folder with a prior of our own: random means and factors, one per label input."""
    folder = tmp_path / "vae"
    shutil.copytree(SHIPPED / "vae", folder)
    card = json.loads((folder / "model.json").read_text())
    rows, d = 11, card["latent_dim"]
    prior = random_prior(rows, d, seed=5)
    prior.save(folder / "custom-prior.npz")
    card["prior"] = {"file": "custom-prior.npz"}
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_generation_draws_from_the_cards_prior(shifted_vae: Path) -> None:
    model = load_model(shifted_vae, device="cpu")
    assert model.prior is not None and model.card.prior is not None
    images = generate_latent(model, [LatentJob(9, 2, 3)])[0]
    prior = random_prior(11, 16, seed=5)  # what the fixture wrote
    for i in range(2):
        eps = image_rng(9, i).standard_normal(16)  # image i's own noise, as under N(0, I)
        z = prior.mean[3] + prior.scale_tril[3] @ eps
        np.testing.assert_allclose(latents.decode(model, z[None], 3)[0], images[i], atol=1e-4)
    # The same noise under N(0, I) (the shipped card with its prior removed) gives other images.
    plain = load_model(SHIPPED / "vae", device="cpu")
    plain.prior = LatentPrior.standard(11, model.card.latent_dim or 0)
    assert np.abs(generate_latent(plain, [LatentJob(9, 2, 3)])[0] - images).max() > 0.1


def test_interpolation_between_seeds_starts_and_ends_at_their_images(shifted_vae: Path) -> None:
    model = load_model(shifted_vae, device="cpu")
    a, b = latents.seed_latent(model, 7, 2), latents.seed_latent(model, 8, 2)
    frames = latents.interpolate(model, a, b, 5, 2)
    want = generate_latent(model, [LatentJob(7, 1, 2), LatentJob(8, 1, 2)])
    np.testing.assert_allclose(frames[0], want[0][0], atol=1e-5)
    np.testing.assert_allclose(frames[-1], want[1][0], atol=1e-5)
    # Between them the path follows the prior: the middle frame decodes mean + L slerp(eps_a, eps_b).
    ys = np.array([2, 2])
    ea, eb = model.prior.whiten(np.stack([a, b]), ys)  # type: ignore[union-attr]
    mid = model.prior.sample(latents.slerp(ea, eb, 5)[2:3], ys[:1])  # type: ignore[union-attr]
    np.testing.assert_allclose(frames[2], latents.decode(model, mid, 2)[0], atol=1e-5)


def test_a_prior_that_disagrees_with_the_card_names_its_file(shifted_vae: Path) -> None:
    random_prior(4, 16).save(shifted_vae / "custom-prior.npz")  # 4 label inputs; the card has 11
    with pytest.raises(ModelLoadError, match=r"custom-prior\.npz.*4 label inputs"):
        load_model(shifted_vae, device="cpu")
    np.savez(shifted_vae / "custom-prior.npz", mean=np.zeros((11, 16)))
    with pytest.raises(ModelLoadError, match=r"lacks array\(s\) \['scale_tril'\]"):
        load_model(shifted_vae, device="cpu")


def test_only_gan_and_vae_cards_name_a_prior() -> None:
    card = json.loads((SHIPPED / "diffusion" / "model.json").read_text())
    card["prior"] = {"file": "prior.npz"}
    with pytest.raises(ValueError, match="`prior` is for gan and vae cards only"):
        type(load_card(SHIPPED / "diffusion")).model_validate(card)
