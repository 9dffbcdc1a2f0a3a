"""The latent prior p(z | y) of a GAN or VAE: one Gaussian N(mean_y, L_y L_y^T) per label input.

A model trained against N(0, I) samples from it as it is (the standard prior: zero means,
identity factors). A VAE's card may name a fitted prior instead (`ModelCard.prior`): a Gaussian
per label fitted to the training digits' posterior samples after training ("ex-post density
estimation", Ghosh et al., 2020). Its posteriors never filled N(0, I): sampling the standard
prior decodes its holes, the fitted one lands where the decoder was trained.

Everything that reads the prior reads this one object, so generation, interpolation and the
likelihood bounds agree: images are drawn as z = mean_y + L_y eps from the per-image noise eps
that `service.generators.job_latents` draws, interpolation runs in eps space (`whiten` maps a
latent there), and `log_prob` / `kl` are the terms the bounds in `service.density` need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LOG_2PI = math.log(2 * math.pi)
PRIOR_ARRAYS = ("mean", "scale_tril")  # the names in a prior file (.npz)


@dataclass(frozen=True)
class LatentPrior:
    """Means (rows, d) and lower-triangular scale factors (rows, d, d), one row per label input."""

    mean: np.ndarray
    scale_tril: np.ndarray
    inverse: np.ndarray = field(init=False, repr=False)  # the factors' inverses, computed once

    def __post_init__(self) -> None:
        rows, d = self.mean.shape
        if self.scale_tril.shape != (rows, d, d):
            raise ValueError(f"scale_tril has shape {self.scale_tril.shape}; the means imply {(rows, d, d)}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.scale_tril).all()):
            raise ValueError("the prior has non-finite entries")
        if np.any(np.triu(self.scale_tril, 1)):
            raise ValueError("scale_tril is not lower-triangular")
        if not (np.diagonal(self.scale_tril, axis1=1, axis2=2) > 0).all():
            raise ValueError("scale_tril needs a positive diagonal")
        object.__setattr__(self, "inverse", np.linalg.inv(self.scale_tril))

    @classmethod
    def standard(cls, rows: int, d: int) -> LatentPrior:
        """N(0, I) under every label."""
        return cls(np.zeros((rows, d)), np.broadcast_to(np.eye(d), (rows, d, d)).copy())

    @classmethod
    def load(cls, path: Path) -> LatentPrior:
        """A prior file: an .npz holding `mean` and `scale_tril` (read without pickle)."""
        with np.load(path, allow_pickle=False) as f:
            missing = [a for a in PRIOR_ARRAYS if a not in f.files]
            if missing:
                raise ValueError(f"lacks array(s) {missing}")
            return cls(f["mean"].astype(np.float64), f["scale_tril"].astype(np.float64))

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean.astype(np.float32), scale_tril=self.scale_tril.astype(np.float32))

    @property
    def rows(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    def sample(self, eps: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Noise eps (n, d) under labels (n,) -> latents z = mean_y + L_y eps, float32."""
        z = self.mean[labels] + np.einsum("nij,nj->ni", self.scale_tril[labels], eps.astype(np.float64))
        return np.asarray(z, dtype=np.float32)

    def whiten(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The inverse of `sample`: latents (n, d) -> the noise (n, d) that draws them."""
        return np.einsum("nij,nj->ni", self.inverse[labels], z.astype(np.float64) - self.mean[labels])  # type: ignore[no-any-return]

    def log_prob(self, z: np.ndarray, label: int) -> np.ndarray:
        """log p(z | y) for latents z (..., d) under one label: (...)."""
        u = (z - self.mean[label]) @ self.inverse[label].T
        log_det = np.log(np.diagonal(self.scale_tril[label])).sum()
        return -0.5 * (u**2).sum(axis=-1) - log_det - 0.5 * self.dim * LOG_2PI  # type: ignore[no-any-return]

    def kl(self, mu: np.ndarray, logvar: np.ndarray, label: int) -> np.ndarray:
        """KL(N(mu, diag exp(logvar)) || p(z | y)) in closed form, for posteriors (n, d): (n,)."""
        precision_diag = (self.inverse[label] ** 2).sum(axis=0)  # diag of Sigma^-1 = L^-T L^-1
        u = (mu - self.mean[label]) @ self.inverse[label].T
        log_det = 2 * np.log(np.diagonal(self.scale_tril[label])).sum()
        trace = (np.exp(logvar) * precision_diag).sum(axis=1)
        return 0.5 * (trace + (u**2).sum(axis=1) - self.dim + log_det - logvar.sum(axis=1))  # type: ignore[no-any-return]
