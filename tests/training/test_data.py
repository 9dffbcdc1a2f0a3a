"""The fixed MNIST split: deterministic, stratified, disjoint, scaled to [-1, 1]."""

from __future__ import annotations

import numpy as np

from training.data import N_HELDOUT, N_TRAIN, SPLIT_SEED, load_raw, load_split, stratified_indices


def test_split_sizes_range_and_determinism() -> None:
    a, b = load_split(), load_split()
    assert a.train_x.shape == (N_TRAIN, 1, 28, 28) and a.heldout_x.shape == (N_HELDOUT, 1, 28, 28)
    assert a.train_x.dtype == np.float32 and a.train_x.min() == -1.0 and a.train_x.max() == 1.0
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.heldout_y, b.heldout_y)


def test_split_is_disjoint_and_stratified() -> None:
    _, y = load_raw()
    train, held = stratified_indices(y, N_HELDOUT, SPLIT_SEED)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == len(y) == 5000
    share_all = np.bincount(y, minlength=10) / len(y)
    share_held = np.bincount(y[held], minlength=10) / len(held)
    np.testing.assert_allclose(share_held, share_all, atol=0.002)


def test_another_seed_gives_another_split() -> None:
    _, y = load_raw()
    assert not np.array_equal(stratified_indices(y, 100, 1)[1], stratified_indices(y, 100, 2)[1])
