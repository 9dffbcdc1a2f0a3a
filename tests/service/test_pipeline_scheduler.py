"""A pipeline's scheduler config becomes plans that move a lane exactly as diffusers' own
DDIMScheduler and DPMSolverMultistepScheduler step it, for every spacing and prediction type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from service.errors import ModelLoadError
from service.pipeline_scheduler import PipelineSchedule, load_schedule
from service.samplers import x0_from_output

SD = {  # Stable Diffusion 1.x's scheduler settings
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}
REFERENCE = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}


def model_output(x: np.ndarray, x0: np.ndarray, alpha: float, sigma: float, prediction_type: str) -> np.ndarray:
    """What a network predicting clean image `x0` at x outputs (epsilon or v)."""
    eps = (x - alpha * x0) / sigma
    out = eps if prediction_type == "epsilon" else alpha * eps - sigma * x0
    return np.asarray(out, np.float32)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "leading"},
        {"prediction_type": "v_prediction"},
        {"beta_schedule": "linear", "beta_end": 0.02, "steps_offset": 0},
        {"set_alpha_to_one": True},
    ],
)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("steps", [1, 3, 10, 25])
def test_plans_step_as_diffusers(extra: dict[str, Any], sampler: str, steps: int) -> None:
    config = {**SD, **extra}
    ref = REFERENCE[sampler].from_config(config)
    ref.set_timesteps(steps)
    schedule = PipelineSchedule.model_validate(config)
    plan = schedule.plan(sampler, steps)  # type: ignore[arg-type]
    assert plan.timesteps.tolist() == ref.timesteps.tolist()
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    target = rng.uniform(-1, 1, x.shape)  # a model that believes in one clean image, give or take
    x_ref, x0_prev = torch.from_numpy(x.copy()), np.zeros_like(x)
    for i, t in enumerate(ref.timesteps):
        believed = target + 0.1 * rng.standard_normal(x.shape)
        alpha, sigma, kind = plan.alpha[i], plan.sigma[i], schedule.prediction_type
        out_ref = model_output(x_ref.numpy(), believed, alpha, sigma, kind)
        x_ref = ref.step(torch.from_numpy(out_ref), t, x_ref).prev_sample
        out = model_output(x, believed, alpha, sigma, kind)  # the same model, at genserve's lane state
        x0 = x0_from_output(out, x, np.float32(alpha), np.float32(sigma), kind)
        x, x0_prev = (plan.a[i] * x + plan.b[i] * x0 + plan.c[i] * x0_prev).astype(np.float32), x0
    assert np.abs(x - x_ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_noise_schedules_equal_diffusers(beta_schedule: str) -> None:
    """Every beta schedule's alpha_bar, to float32 rounding. (The cosine schedule is not in the
    trajectory test above: its alpha at t = 999 is 3e-5, where turning a float32 epsilon into
    the clean image loses the 1e-4 digits in any implementation.)"""
    config = {**SD, "beta_schedule": beta_schedule}
    want = DDIMScheduler.from_config(config).alphas_cumprod.numpy()
    got = PipelineSchedule.model_validate(config).alphas_cumprod
    assert np.abs(got - want).max() < 1e-6  # a few float32 ulps after 1,000 products


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clip_sample", True),
        ("thresholding", True),
        ("use_karras_sigmas", True),
        ("rescale_betas_zero_snr", True),
        ("final_sigmas_type", "sigma_min"),
        ("algorithm_type", "sde-dpmsolver++"),
        ("timestep_spacing", "karras"),
    ],
)
def test_settings_genserve_does_not_implement_are_refused_by_name(tmp_path: Path, key: str, value: Any) -> None:
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**SD, key: value}))
    with pytest.raises(ModelLoadError, match=f"scheduler_config.json: {key}"):
        load_schedule(path)


def test_a_config_without_the_optional_keys_loads(tmp_path: Path) -> None:
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "PNDMScheduler", "skip_prk_steps": True, **SD}))
    schedule = load_schedule(path)
    assert schedule.timesteps("ddim", 4).tolist() == [751, 501, 251, 1]
    assert schedule.timesteps("dpmpp_2m", 4).tolist() == [999, 749, 500, 250]
