"""The per-image noise source: every image draws from its own generator, never a shared stream."""

from __future__ import annotations

import numpy as np


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The noise source of image `index` of a request with `seed`: independent of batching."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
