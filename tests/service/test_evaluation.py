"""FID and precision/recall maths against independent references."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from service.evaluation import frechet_distance, precision_recall, quality


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_fid_matches_the_scipy_sqrtm_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 16))
    b = rng.standard_normal((500, 16)) @ rng.uniform(0.5, 1.5, (16, 16)) * 0.3 + 0.4
    np.testing.assert_allclose(frechet_distance(a, b), scipy_fid(a, b), rtol=1e-6)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    a = np.random.default_rng(1).standard_normal((400, 8))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 1.0) > frechet_distance(a, a + 0.5) > 0.2


def test_precision_and_recall_separate_fidelity_from_coverage() -> None:
    rng = np.random.default_rng(2)
    real = rng.standard_normal((600, 2))
    corner = real[real[:, 0] > 1.0]
    collapsed = corner + rng.normal(0, 0.01, corner.shape)  # on the manifold, covering one corner of it
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.3
    far = rng.standard_normal((600, 2)) + 8.0
    p_far, r_far = precision_recall(real, far)
    assert p_far == 0.0 and r_far == 0.0
    p_same, r_same = precision_recall(real, rng.standard_normal((600, 2)))
    assert p_same > 0.8 and r_same > 0.8


def test_label_accuracy_is_the_share_of_matching_labels() -> None:
    f = np.random.default_rng(3).standard_normal((100, 4))
    q = quality(f, f, np.array([1, 2, 3, 4] * 25), np.array([1, 2, 3, 0] * 25))
    assert q.label_accuracy == 0.75 and q.n == 100


def test_class_shares_measure_how_far_samples_are_from_uniform() -> None:
    from service.evaluation import class_shares, unconditional_quality

    assert class_shares(np.repeat(np.arange(10), 10), 10) == (0.1, 0.1, 0.0)
    lo, hi, tv = class_shares(np.array([0] * 50 + [1] * 50), 10)
    assert (lo, hi) == (0.0, 0.5) and abs(tv - 0.8) < 1e-12
    f = np.random.default_rng(0).standard_normal((100, 4))
    q = unconditional_quality(f, f, np.array([3] * 100), 10)
    assert q.label_accuracy is None and q.max_class_share == 1.0
    assert {"min_class_share", "max_class_share", "class_tv"} <= set(q.as_dict())


def test_the_fid_interval_is_as_wide_as_fids_spread_over_fresh_samples() -> None:
    """The bootstrap from one pair of sets against the real thing: FID between fresh pairs drawn
    from the same two distributions, 60 times."""
    from service.evaluation import bootstrap_interval

    rng = np.random.default_rng(4)
    mix = rng.uniform(0.6, 1.2, (8, 8))

    def pair() -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((400, 8)), rng.standard_normal((400, 8)) @ mix * 0.5 + 0.2

    lo, hi = bootstrap_interval(frechet_distance, *pair(), rounds=200)
    fresh = [frechet_distance(*pair()) for _ in range(60)]
    spread = np.quantile(fresh, 0.975) - np.quantile(fresh, 0.025)
    assert 0.5 < (hi - lo) / spread < 2.0


def test_sfid_takes_the_first_channels_of_the_spatial_map() -> None:
    from service.evaluation import spatial_features

    maps = np.arange(2 * 9 * 3 * 3, dtype=np.float32).reshape(2, 9, 3, 3)
    out = spatial_features(maps)
    assert out.shape == (2, 63) and out.dtype == np.float64
    np.testing.assert_array_equal(out[1], maps[1, :7].ravel())


def test_quality_reports_intervals_and_sfid_only_when_asked() -> None:
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 0.3
    plain = quality(real, fake)
    assert plain.fid_lo is None and plain.sfid is None and "sfid" not in plain.as_dict()
    full = quality(real, fake, spatial=(real[:, :2], fake[:, :2]), bootstrap=50)
    assert full.fid == plain.fid
    assert full.fid_lo is not None and full.fid_hi is not None and full.fid_lo < full.fid < full.fid_hi
    assert full.sfid == frechet_distance(real[:, :2], fake[:, :2])
    assert {"fid_lo", "fid_hi", "sfid", "sfid_lo", "sfid_hi"} <= set(full.as_dict())
