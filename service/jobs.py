"""The job types: a validated request as a frozen dataclass, what the HTTP edge hands a replica.

Pure data (no ONNX Runtime, no replica state), so the HTTP edge depends on these and the
schemas only.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def rows(self) -> int:
        """Network rows per image per step."""
        return network_rows(self.label, self.guidance)

    @property
    def cost(self) -> int:
        """Network rows over the whole request: n x steps x rows."""
        return self.n * self.steps * self.rows


Job = LatentJob | DiffusionJob
