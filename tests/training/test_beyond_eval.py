"""The figures `genserve eval-density` and `genserve eval-edits` report: calibration, AUROC, the
out-of-distribution sets and the edit settings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.density_eval import auroc, calibration, out_of_distribution
from training.edit_eval import half_mask, other_labels


def test_auroc_agrees_with_scikit_learn_ties_included() -> None:
    rng = np.random.default_rng(0)
    inl, out = rng.normal(0, 1, 300).round(1), rng.normal(1, 1, 200).round(1)  # rounding makes ties
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[inl, out])
    assert auroc(inl, out) == pytest.approx(want, abs=1e-12)
    assert auroc(np.zeros(5), np.ones(5)) == 1.0 and auroc(np.ones(5), np.zeros(5)) == 0.0
    assert auroc(np.ones(5), np.ones(5)) == 0.5


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_classifier() -> None:
    labels = np.array([0, 0, 0, 1] * 25)
    honest = np.tile([[0.75, 0.25]], (100, 1))  # right 75% of the time at 75% confidence
    c = calibration(honest, labels)
    assert (
        c.accuracy == 0.75
        and c.ece == pytest.approx(0.0)
        and c.log_loss == pytest.approx(-np.log(0.75) * 0.75 - np.log(0.25) * 0.25)
    )
    proud = np.tile([[0.99, 0.01]], (100, 1))
    assert calibration(proud, labels).ece == pytest.approx(0.24)


def test_the_out_of_distribution_sets() -> None:
    rng = np.random.default_rng(1)
    digits = np.zeros((20, 1, 28, 28), np.uint8)
    digits[:, :, 6:22, 12:16] = rng.integers(128, 256, (20, 1, 16, 4))
    sets = out_of_distribution(digits)
    assert set(sets) == {"uniform noise", "shuffled pixels", "inverted", "sklearn 8x8 digits, upscaled"}
    for name, images in sets.items():
        assert images.shape == digits.shape and images.dtype == np.uint8, name
    assert np.array_equal(np.sort(sets["shuffled pixels"].reshape(20, -1)), np.sort(digits.reshape(20, -1)))
    assert np.array_equal(sets["inverted"], 255 - digits)
    small = sets["sklearn 8x8 digits, upscaled"]
    assert small[:, :, :4].max() == 0 and small[:, :, 24:].max() == 0 and small.max() > 200  # a 20x20 digit, centred


def test_edit_masks_and_switched_labels() -> None:
    top, left = half_mask("top", (1, 28, 28)), half_mask("left", (1, 28, 28))
    assert top[0, :14].min() == 1 and top[0, 14:].max() == 0 and left[0, :, :14].min() == 1 and left.sum() == 392
    labels = np.arange(1000) % 10
    new = other_labels(labels)
    assert (new != labels).all() and set(new.tolist()) == set(range(10))
