"""What the step scheduler needs from a diffusion model: the `Denoiser` protocol.

The scheduler (`service.scheduler`) owns lanes, fairness, admission, deadlines and the sampler
update; a denoiser owns everything model-specific: a request's lane shape and sampler plan, its
conditioning (computed once per request: a label index, or a prompt's text embeddings) and the
network call on a batch of lanes. `LabelDenoiser` is genserve's own single-graph diffusion
models (label-conditioned, `model.json` card); `service.text2image.TextDenoiser` is a
Stable-Diffusion-layout pipeline folder.

Rows of a network call: first one row per lane with the lane's conditioning, then one row per
guided lane (those in `guided`, in order) with its unconditional side; the scheduler mixes each
guided pair with the lane's guidance weight.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from service.generators import resolve_label
from service.jobs import DiffusionJob
from service.registry import LoadedModel
from service.samplers import SamplerPlan, make_plan


class Denoiser(Protocol):
    name: str
    prediction_type: str
    # True when `condition` is heavy (a text encoder): the scheduler runs it on its compute thread.
    heavy_condition: bool

    def lane_shape(self, job: DiffusionJob) -> tuple[int, ...]:
        """The shape of one lane's state (an image, or a latent) for this job."""
        ...

    def plan(self, job: DiffusionJob) -> SamplerPlan: ...

    def condition(self, job: DiffusionJob) -> Any:
        """The job's conditioning, once per request; raises ValueError for what the model cannot take."""
        ...

    def run(
        self, x: np.ndarray, timesteps: np.ndarray, conds: list[Any], guided: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        """The network's output for `len(x) + len(guided)` rows (see the module docstring)."""
        ...


class LabelDenoiser:
    """A single-graph diffusion model with a card: inputs sample, timestep, label (and, for a
    distilled model, each lane's step count)."""

    heavy_condition: bool = False

    def __init__(self, model: LoadedModel) -> None:
        if model.alphas_cumprod is None or model.card.schedule is None:
            raise ValueError(f"model {model.name!r} is not a diffusion model")
        self.model = model
        self.name = model.name
        self.prediction_type: str = model.card.schedule.prediction_type
        self.alphas_cumprod: np.ndarray = model.alphas_cumprod

    def lane_shape(self, job: DiffusionJob) -> tuple[int, ...]:
        return self.model.card.image_shape

    def plan(self, job: DiffusionJob) -> SamplerPlan:
        return make_plan(job.sampler, job.steps, self.alphas_cumprod, job.eta, job.spacing, job.start)

    def condition(self, job: DiffusionJob) -> int:
        return resolve_label(self.model, job.label)

    def run(
        self, x: np.ndarray, timesteps: np.ndarray, conds: list[Any], guided: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        card = self.model.card
        labels = np.array(conds, np.int64)
        null = card.null_label if card.null_label is not None else 0
        roles = card.onnx.inputs
        feeds = {
            roles["sample"]: np.concatenate([x, x[guided]]),
            roles["timestep"]: np.concatenate([timesteps, timesteps[guided]]),
            roles["label"]: np.concatenate([labels, np.full(len(guided), null, np.int64)]),
        }
        if "num_steps" in roles:  # a step-conditioned (distilled) model also takes each lane's step count
            feeds[roles["num_steps"]] = np.concatenate([counts, counts[guided]])
        return self.model.onnx.run(card.onnx.output, feeds).astype(np.float32)
