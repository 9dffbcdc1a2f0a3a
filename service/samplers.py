"""Diffusion samplers as coefficient schedules.

Every step of every sampler here is, per sample,

    x_next = a * x + b * x0_hat + c * x0_hat_prev + d * z

where x0_hat is the model's estimate of the clean image at this step, x0_hat_prev the one
from the step before and z fresh standard-normal noise. A `SamplerPlan` holds (a, b, c, d) for
each of a lane's steps, so lanes at different steps, with different step counts and different
samplers, advance together in one vectorised update (see `service.scheduler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.schedules import Spacing, spaced_timesteps

SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]
SAMPLERS: tuple[SamplerName, ...] = ("ddpm", "ddim", "dpmpp_2m")


@dataclass(frozen=True)
class SamplerPlan:
    """One lane's whole trajectory: timesteps (descending) and float64 coefficients per step.

    `alpha` and `sigma` are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) at each visited
    timestep; they turn the network's output into x0_hat.
    """

    timesteps: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _alpha_sigma(
    alphas_cumprod: np.ndarray, timesteps: np.ndarray, abar_next: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha_bar at each timestep and at the one each step goes to: by default the next visited
    timestep, and 1.0 (the clean image) after the last."""
    abar = alphas_cumprod[timesteps]
    if abar_next is None:
        abar_next = np.append(abar[1:], 1.0)
    return abar, abar_next, np.zeros(len(timesteps))


def ddpm_plan(alphas_cumprod: np.ndarray, timesteps: np.ndarray, abar_next: np.ndarray | None = None) -> SamplerPlan:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any descending subsequence.

    The posterior q(x_s | x_t, x0) mean and its "fixed small" variance, with
    beta' = 1 - alpha_bar_t / alpha_bar_s; no noise on the final step. `abar_next` overrides
    alpha_bar_s per step (a diffusers pipeline's schedule, `service.pipeline_scheduler`).
    """
    abar, abar_s, c = _alpha_sigma(alphas_cumprod, timesteps, abar_next)
    alpha_ts = abar / abar_s
    beta_ts = 1.0 - alpha_ts
    a = np.sqrt(alpha_ts) * (1.0 - abar_s) / (1.0 - abar)
    b = np.sqrt(abar_s) * beta_ts / (1.0 - abar)
    var = (1.0 - abar_s) / (1.0 - abar) * beta_ts
    d = np.sqrt(np.clip(var, 1e-20, None))
    d[-1] = 0.0
    return SamplerPlan(timesteps, np.sqrt(abar), np.sqrt(1.0 - abar), a, b, c, d)


def ddim_plan(
    alphas_cumprod: np.ndarray, timesteps: np.ndarray, eta: float = 0.0, abar_next: np.ndarray | None = None
) -> SamplerPlan:
    """DDIM (Song et al. 2021, eq. 12): deterministic at eta = 0, DDPM-like noise at eta = 1."""
    abar, abar_s, c = _alpha_sigma(alphas_cumprod, timesteps, abar_next)
    std = eta * np.sqrt((1.0 - abar_s) / (1.0 - abar) * (1.0 - abar / abar_s))
    a = np.sqrt(np.clip(1.0 - abar_s - std**2, 0.0, None)) / np.sqrt(1.0 - abar)
    b = np.sqrt(abar_s) - a * np.sqrt(abar)
    return SamplerPlan(timesteps, np.sqrt(abar), np.sqrt(1.0 - abar), a, b, c, std)


def dpmpp_2m_plan(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> SamplerPlan:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, midpoint form), data prediction.

    First order on the first step (no history) and on the final step, which goes to
    sigma = 0, as diffusers' `lower_order_final` with `final_sigmas_type="zero"`.
    """
    abar = alphas_cumprod[timesteps]
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    lam = np.log(alpha) - np.log(sigma)
    n = len(timesteps)
    a, b, c, d = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        if i == n - 1:  # to sigma = 0: x_next = x0_hat
            b[i] = 1.0
            continue
        h = lam[i + 1] - lam[i]
        phi = -np.expm1(-h)  # 1 - e^{-h}
        a[i] = sigma[i + 1] / sigma[i]
        if i == 0:
            b[i] = alpha[i + 1] * phi
        else:
            r = (lam[i] - lam[i - 1]) / h
            b[i] = alpha[i + 1] * phi * (1.0 + 0.5 / r)
            c[i] = -alpha[i + 1] * phi * 0.5 / r
    return SamplerPlan(timesteps, alpha, sigma, a, b, c, d)


def make_plan(
    sampler: SamplerName,
    num_steps: int,
    alphas_cumprod: np.ndarray,
    eta: float = 0.0,
    spacing: Spacing = "trailing",
    start: int = 0,
) -> SamplerPlan:
    """The plan for `num_steps` steps of `sampler` on the model's noise schedule; with `start`,
    only its last `num_steps - start` steps (image-to-image starts mid-trajectory, from a noised
    image): a sampler with history begins that shorter plan at first order, as at any start."""
    if not 0 <= start < num_steps:
        raise ValueError(f"start {start} outside a {num_steps}-step plan")
    timesteps = spaced_timesteps(num_steps, len(alphas_cumprod), spacing)[start:]
    if sampler == "ddpm":
        return ddpm_plan(alphas_cumprod, timesteps)
    if sampler == "ddim":
        return ddim_plan(alphas_cumprod, timesteps, eta)
    if sampler == "dpmpp_2m":
        return dpmpp_2m_plan(alphas_cumprod, timesteps)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def x0_from_output(
    output: np.ndarray, x: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, prediction_type: str
) -> np.ndarray:
    """The network's output as an estimate of the clean image; alpha, sigma shaped (N, 1, 1, 1)."""
    if prediction_type == "epsilon":
        return np.asarray((x - sigma * output) / alpha)
    if prediction_type == "v_prediction":
        return np.asarray(alpha * x - sigma * output)
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction type {prediction_type!r}")
