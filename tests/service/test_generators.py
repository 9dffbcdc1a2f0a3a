"""GAN and VAE generation: batched calls, per-image seeds, truncation and temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.generators import generate_latent, job_latents, truncated_normal
from service.jobs import LatentJob
from service.noise import image_rng
from service.registry import LoadedModel, load_model


@pytest.fixture(scope="module", params=["tiny-gan", "tiny-vae"])
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> LoadedModel:
    return load_model(tiny_model_dir / request.param, device="cpu")


def test_each_job_gets_its_images_and_batching_does_not_change_them(model: LoadedModel) -> None:
    jobs = [LatentJob(seed=1, n=3, label=2), LatentJob(seed=2, n=1), LatentJob(seed=3, n=5, label=7, temperature=0.5)]
    together = generate_latent(model, jobs)
    assert [im.shape for im in together] == [(3, 1, 28, 28), (1, 1, 28, 28), (5, 1, 28, 28)]
    for job, images in zip(jobs, together, strict=True):
        np.testing.assert_array_equal(generate_latent(model, [job])[0], images)
    # Small chunks (several network calls) give the same pixels too.
    np.testing.assert_array_equal(np.concatenate(generate_latent(model, jobs, max_rows=2)), np.concatenate(together))


def test_image_i_of_a_request_does_not_depend_on_n() -> None:
    few = job_latents(LatentJob(seed=5, n=2), 8)
    many = job_latents(LatentJob(seed=5, n=6), 8)
    np.testing.assert_array_equal(few, many[:2])
    assert not np.array_equal(many[0], many[1])


def test_labels_change_the_images(model: LoadedModel) -> None:
    a, b = generate_latent(model, [LatentJob(seed=1, n=2, label=1), LatentJob(seed=1, n=2, label=8)])
    assert not np.array_equal(a, b)


def test_truncation_bounds_every_latent_entry() -> None:
    z = job_latents(LatentJob(seed=0, n=50, truncation=0.5), 64)
    assert np.abs(z).max() <= 0.5
    assert np.abs(job_latents(LatentJob(seed=0, n=50), 64)).max() > 0.5


def test_temperature_scales_the_prior() -> None:
    cold = job_latents(LatentJob(seed=0, n=200, temperature=0.25), 16)
    np.testing.assert_allclose(cold.std(), 0.25, rtol=0.1)
    np.testing.assert_allclose(cold, 0.25 * job_latents(LatentJob(seed=0, n=200), 16), rtol=1e-6)


def test_truncated_normal_redraws_only_outliers() -> None:
    z = truncated_normal(image_rng(1, 0), 10_000, 1.0)
    assert np.abs(z).max() <= 1.0 and z.std() > 0.4
