"""Sampler coefficient schedules checked against diffusers' schedulers and the DDPM textbook rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from service.samplers import SAMPLERS, SamplerPlan, ddim_plan, ddpm_plan, dpmpp_2m_plan, make_plan, x0_from_output
from service.schedules import alphas_cumprod_for, betas_for, spaced_timesteps

BETAS = betas_for("linear", 1000, 1e-4, 0.02)
ABAR = alphas_cumprod_for(BETAS)
SHAPE = (3, 1, 8, 8)


def fake_eps(x: np.ndarray, t: int) -> np.ndarray:
    """A deterministic stand-in for a network: depends on the sample and the timestep."""
    return np.tanh(0.7 * x + np.sin(t / 97.0)) * 0.9


def run_plan(plan: SamplerPlan, x: np.ndarray, noises: list[np.ndarray]) -> list[np.ndarray]:
    """Applies x_next = a x + b x0 + c x0_prev + d z step by step; returns every intermediate x."""
    x0_prev = np.zeros_like(x)
    out = []
    for i, t in enumerate(plan.timesteps):
        x0 = x0_from_output(fake_eps(x, int(t)), x, plan.alpha[i], plan.sigma[i], "epsilon")
        x = plan.a[i] * x + plan.b[i] * x0 + plan.c[i] * x0_prev + plan.d[i] * noises[i]
        x0_prev = x0
        out.append(x)
    return out


def noise(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE) for _ in range(n)]


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(steps: int, eta: float) -> None:
    ref = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, timestep_spacing="trailing"
    )
    ref.set_timesteps(steps)
    timesteps = ref.timesteps.numpy()
    np.testing.assert_array_equal(timesteps, spaced_timesteps(steps, 1000, "trailing"))
    zs = noise(steps)
    x = np.random.default_rng(1).standard_normal(SHAPE)
    ours = run_plan(ddim_plan(ABAR, timesteps, eta), x.copy(), zs)
    for i, t in enumerate(ref.timesteps):
        # Each step from the same input, so float32 rounding in diffusers does not compound.
        x_in = x if i == 0 else ours[i - 1]
        eps = torch.from_numpy(fake_eps(x_in, int(t)).astype(np.float32))
        z = torch.from_numpy(zs[i].astype(np.float32))
        got = ref.step(eps, t, torch.from_numpy(x_in.astype(np.float32)), eta=eta, variance_noise=z).prev_sample.numpy()
        np.testing.assert_allclose(got, ours[i], atol=1e-5 * max(1.0, float(np.abs(ours[i]).max())))


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 20, 25])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_dpmpp_2m_matches_diffusers(steps: int, spacing: str) -> None:
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing=spacing,
    )
    ref.set_timesteps(steps)
    timesteps = ref.timesteps.numpy()
    plan = dpmpp_2m_plan(ABAR, timesteps)
    x = np.random.default_rng(2).standard_normal(SHAPE)
    ours = run_plan(plan, x.copy(), noise(steps))
    prev_x0 = np.zeros(SHAPE)
    for i, t in enumerate(ref.timesteps):
        x_in = x if i == 0 else ours[i - 1]
        eps = torch.from_numpy(fake_eps(x_in, int(t)).astype(np.float32))
        got = ref.step(eps, t, torch.from_numpy(x_in.astype(np.float32))).prev_sample.numpy()
        np.testing.assert_allclose(got, ours[i], atol=1e-5 * max(1.0, float(np.abs(ours[i]).max())))
        prev_x0 = x0_from_output(fake_eps(x_in, int(t)), x_in, plan.alpha[i], plan.sigma[i], "epsilon")
    # The last step lands on x0_hat (sigma = 0), the first-order rule.
    np.testing.assert_allclose(ours[-1], prev_x0, atol=1e-12)


def test_ddpm_1000_steps_is_the_textbook_ancestral_rule() -> None:
    """Ho et al. 2020, Algorithm 2: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z."""
    timesteps = spaced_timesteps(1000, 1000)
    np.testing.assert_array_equal(timesteps, np.arange(999, -1, -1))
    zs = noise(1000, seed=3)
    x = np.random.default_rng(4).standard_normal(SHAPE)
    ours = run_plan(ddpm_plan(ABAR, timesteps), x.copy(), zs)[-1]
    alphas = 1 - BETAS
    for i, t in enumerate(timesteps):
        eps = fake_eps(x, int(t))
        mean = (x - BETAS[t] / np.sqrt(1 - ABAR[t]) * eps) / np.sqrt(alphas[t])
        var = (1 - ABAR[t - 1]) / (1 - ABAR[t]) * BETAS[t] if t > 0 else 0.0
        x = mean + np.sqrt(var) * zs[i]
    np.testing.assert_allclose(ours, x, atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 999, 1000])
def test_any_step_count_gives_a_finite_plan_ending_on_the_clean_image(sampler: str, steps: int) -> None:
    plan = make_plan(sampler, steps, ABAR)  # type: ignore[arg-type]
    assert plan.num_steps == steps
    assert np.all(np.diff(plan.timesteps) < 0), "timesteps must strictly descend"
    for arr in (plan.a, plan.b, plan.c, plan.d):
        assert np.all(np.isfinite(arr))
    assert plan.d[-1] == 0.0 and plan.a[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_perfect_denoiser_recovers_the_clean_image() -> None:
    """If the network knew the true noise, every sampler must return the original image."""
    x0 = np.random.default_rng(5).uniform(-1, 1, SHAPE)
    for sampler in SAMPLERS:
        plan = make_plan(sampler, 20, ABAR)  # type: ignore[arg-type]
        x = np.random.default_rng(6).standard_normal(SHAPE)
        x0_prev = np.zeros_like(x)
        for i in range(plan.num_steps):
            x0_hat = x0  # exact clean-image prediction
            x = plan.a[i] * x + plan.b[i] * x0_hat + plan.c[i] * x0_prev
            x0_prev = x0_hat
        np.testing.assert_allclose(x, x0, atol=1e-6, err_msg=sampler)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_spacing_gives_distinct_in_range_timesteps(spacing: str) -> None:
    for n in (1, 7, 10, 333, 1000):
        ts = spaced_timesteps(n, 1000, spacing)  # type: ignore[arg-type]
        assert len(ts) == n and len(set(ts.tolist())) == n
        assert ts.min() >= 0 and ts.max() <= 999
    assert spaced_timesteps(10, 1000, "trailing")[0] == 999


def test_out_of_range_step_counts_are_refused() -> None:
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="num_steps"):
            spaced_timesteps(bad, 1000)


def test_v_prediction_and_sample_conversions_invert_the_forward_process() -> None:
    rng = np.random.default_rng(7)
    x0, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    a, s = np.sqrt(ABAR[400]), np.sqrt(1 - ABAR[400])
    xt = a * x0 + s * eps
    np.testing.assert_allclose(x0_from_output(eps, xt, a, s, "epsilon"), x0, atol=1e-10)
    np.testing.assert_allclose(x0_from_output(a * eps - s * x0, xt, a, s, "v_prediction"), x0, atol=1e-10)
    np.testing.assert_allclose(x0_from_output(x0, xt, a, s, "sample"), x0)
