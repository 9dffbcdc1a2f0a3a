"""A pipeline folder's `scheduler/scheduler_config.json` as genserve sampler plans.

A Stable-Diffusion-layout folder states its noise schedule in diffusers' scheduler config
(whichever scheduler class wrote it: the keys that define the schedule are shared). genserve
turns it into the same per-step coefficients (`service.samplers.SamplerPlan`) as its own
models, following diffusers' rules for where each sampler's steps fall, so a lane here moves
exactly as diffusers' scheduler would move it:

- `ddim`: `DDIMScheduler` — `leading` spacing by default (plus `steps_offset`), each step going
  to t - T // steps, the last one to alpha_bar[0] (or 1 with `set_alpha_to_one`);
- `dpmpp_2m`: `DPMSolverMultistepScheduler` (order 2, midpoint, `dpmsolver++`, final sigma
  zero) — `linspace` spacing by default over steps + 1 points, the last dropped;
- `ddpm`: `DDPMScheduler`'s ancestral step on DDIM's timesteps.

A config key that changes the maths in a way genserve does not implement (Karras sigmas,
thresholding, sample clipping, zero-terminal-SNR rescaling, another DPM-Solver variant) is
refused at load with a message naming the key, rather than silently sampling differently.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from service.errors import ModelLoadError, read_json_object
from service.samplers import SamplerName, SamplerPlan, ddim_plan, ddpm_plan, dpmpp_2m_plan
from service.schedules import Spacing

PredictionType = Literal["epsilon", "v_prediction", "sample"]

# Keys whose non-default values change the maths; genserve implements only the defaults.
_UNSUPPORTED: dict[str, Any] = {
    "thresholding": False,
    "clip_sample": False,
    "rescale_betas_zero_snr": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "variance_type": None,
}
# The spacing each diffusers scheduler class uses when the config does not name one.
DEFAULT_SPACING: dict[SamplerName, Spacing] = {"ddim": "leading", "ddpm": "leading", "dpmpp_2m": "linspace"}


class PipelineSchedule(BaseModel):
    """The schedule keys of a diffusers scheduler config (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_betas: list[float] | None = None
    prediction_type: PredictionType = "epsilon"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    timestep_spacing: Spacing | None = None

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """alpha_bar_t in float32 arithmetic, as diffusers builds it."""
        T = self.num_train_timesteps
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, np.float32)
        elif self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, T, dtype=np.float32)
        elif self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=np.float32) ** 2
        else:  # squaredcos_cap_v2: the cosine schedule, betas capped at 0.999
            f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
            betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], np.float32)
        return np.cumprod(np.float32(1.0) - betas, dtype=np.float32).astype(np.float64)

    def timesteps(self, sampler: SamplerName, steps: int) -> np.ndarray:
        """The training timesteps `sampler` visits in `steps` steps, descending, as diffusers sets them."""
        T = self.num_train_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, {T}], got {steps}")
        spacing = self.timestep_spacing or DEFAULT_SPACING[sampler]
        ts: np.ndarray
        if sampler == "dpmpp_2m":  # DPMSolverMultistepScheduler.set_timesteps
            if spacing == "linspace":
                ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
            elif spacing == "leading":
                ts = (np.arange(0, steps + 1) * (T // (steps + 1))).round()[::-1][:-1] + self.steps_offset
            else:
                ts = np.arange(T, 0, -T / steps).round() - 1
        elif spacing == "linspace":  # DDIMScheduler / DDPMScheduler.set_timesteps
            ts = np.linspace(0, T - 1, steps).round()[::-1]
        elif spacing == "leading":
            ts = (np.arange(0, steps) * (T // steps)).round()[::-1] + self.steps_offset
        else:
            ts = np.round(np.arange(T, 0, -T / steps)) - 1
        return np.asarray(ts, np.int64)

    def plan(self, sampler: SamplerName, steps: int, eta: float = 0.0) -> SamplerPlan:
        """`steps` steps of `sampler` on this schedule, coefficient by coefficient as diffusers steps."""
        abar = self.alphas_cumprod
        ts = self.timesteps(sampler, steps)
        if sampler == "dpmpp_2m":
            return dpmpp_2m_plan(abar, ts)
        prev = ts - self.num_train_timesteps // steps
        final = 1.0 if self.set_alpha_to_one else float(abar[0])
        abar_next = np.where(prev >= 0, abar[np.clip(prev, 0, None)], final)
        if sampler == "ddim":
            return ddim_plan(abar, ts, eta, abar_next)
        return ddpm_plan(abar, ts, abar_next)


def load_schedule(path: Path) -> PipelineSchedule:
    """Reads a scheduler config, refusing keys whose maths genserve does not implement."""
    raw = read_json_object(path)
    for key, default in _UNSUPPORTED.items():
        if key in raw and raw[key] != default:
            raise ModelLoadError(
                f"{path}: {key} = {raw[key]!r} is not supported (genserve samples with {key} = {default!r})"
            )
    algorithm = raw.get("algorithm_type", "dpmsolver++")
    if algorithm != "dpmsolver++":
        raise ModelLoadError(
            f"{path}: algorithm_type {algorithm!r} is not supported (genserve's DPM-Solver is dpmsolver++)"
        )
    try:
        return PipelineSchedule.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelLoadError(f"{path}: {where}: {first['msg']}") from None
