"""Noise schedules and timestep spacings for the diffusion models.

The served diffusion model is trained with the DDPM linear beta schedule (Ho et al. 2020:
beta_1 = 1e-4 to beta_T = 0.02, T = 1000) and predicts the noise epsilon. The card records
both, so a model trained differently states it and the samplers follow the card.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

BetaSchedule = Literal["linear", "cosine"]
Spacing = Literal["leading", "trailing", "linspace"]


def betas_for(schedule: BetaSchedule, num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Per-step betas (float64): `linear` as in DDPM, `cosine` as in Nichol & Dhariwal 2021."""
    if schedule == "linear":
        # float32 first, as diffusers builds it, so sampler tests compare like with like.
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32).astype(np.float64)
    steps = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    f = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.asarray(np.clip(1 - f[1:] / f[:-1], 0, 0.999), dtype=np.float64)


def alphas_cumprod_for(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    return np.asarray(np.cumprod(1.0 - betas), dtype=np.float64)


def spaced_timesteps(num_steps: int, num_train_timesteps: int, spacing: Spacing = "trailing") -> np.ndarray:
    """The `num_steps` training timesteps a sampler visits, in descending order.

    `trailing` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", table 2) always starts at t = T - 1, so few-step sampling starts from pure noise;
    `leading` and `linspace` are diffusers' other two options. All give distinct integers.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    T = num_train_timesteps
    if spacing == "trailing":
        ts = (np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)[:num_steps]
    elif spacing == "leading":
        ratio = T // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64)
    else:
        ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
    return ts
