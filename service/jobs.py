"""The job types: a validated request as a frozen dataclass, what the HTTP edge hands a replica.

Pure data (no ONNX Runtime, no replica state), so the HTTP edge depends on these and the
schemas only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.samplers import SamplerName
from service.schedules import Spacing

# The smallest GAN truncation the API accepts: an entry is kept with probability ~0.8 x bound,
# so at 0.05 the redraws of a 64-image request end within a few hundred rounds.
MIN_TRUNCATION = 0.05


def network_rows(label: int | None, guidance: float) -> int:
    """Network rows one image takes per step: two when guided (the label's row and the null
    label's row of classifier-free guidance), else one."""
    return 2 if label is not None and guidance != 1.0 else 1


@dataclass(frozen=True)
class LatentJob:
    """One request to a GAN or VAE, already validated.

    `label` is a card label index or None (unconditional); `truncation` (GAN) resamples latent
    entries beyond +-truncation; `temperature` (VAE) scales the prior's standard deviation.
    """

    seed: int
    n: int
    label: int | None = None
    truncation: float | None = None
    temperature: float = 1.0


@dataclass(frozen=True)
class Edit:
    """What image-to-image and inpainting add to a diffusion job (arrays (C, H, W), network range).

    `strength` in (0, 1]: the share of the plan's steps that run, starting from `image` noised to
    the first of them (SDEdit); 1 starts from pure noise, exactly as a plain sample does.
    `mask` (1 = regenerate, 0 = keep): after every step the kept pixels are set to `image` noised
    to the next step's level (RePaint without resampling), and to `image` itself after the last."""

    image: np.ndarray = field(repr=False, compare=False)
    strength: float = 1.0
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DiffusionJob:
    """One validated diffusion request; `deadline` is a `time.monotonic()` instant or None."""

    seed: int
    n: int
    steps: int
    sampler: SamplerName = "dpmpp_2m"
    label: int | None = None
    guidance: float = 1.0
    eta: float = 0.0
    spacing: Spacing = "trailing"
    deadline: float | None = None
    edit: Edit | None = None
    # (n, C, H, W): each image's starting noise instead of its first draw (interpolation between
    # seeds); the rest of its noise still comes from (seed, index).
    initial: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Text-to-image: the prompt every image follows, the one guidance steers away from (the
    # unconditional row of classifier-free guidance when empty), and the image (height, width)
    # when the model allows several sizes.
    prompt: str | None = None
    negative_prompt: str = ""
    size: tuple[int, int] | None = None
    # A replica's health probe (1 image, 1 step): admitted while the queue has room but promised
    # nothing, so it never makes a request wait or be refused; short lanes run first, so it
    # finishes at the next iteration anyway.
    probe: bool = False

    @property
    def rows(self) -> int:
        """Network rows per image per step."""
        if self.prompt is not None:  # guidance mixes the prompt's row with the negative prompt's
            return 1 if self.guidance == 1.0 else 2
        return network_rows(self.label, self.guidance)

    @property
    def start(self) -> int:
        """The plan step the lanes start at: 0, or later for image-to-image below strength 1."""
        return 0 if self.edit is None else start_step(self.steps, self.edit.strength)

    @property
    def cost(self) -> int:
        """Network rows over the whole request: n x steps run x rows."""
        return self.n * (self.steps - self.start) * self.rows


def start_step(steps: int, strength: float) -> int:
    """Image-to-image runs the last round(strength x steps) of `steps` (at least one)."""
    return steps - max(1, min(steps, round(strength * steps)))


Job = LatentJob | DiffusionJob
