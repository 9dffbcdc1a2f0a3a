"""Sample-quality maths on classifier features: FID, sFID, precision/recall, label accuracy.

Pure numpy, so models are evaluated from their ONNX files without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

BOOTSTRAP_ROUNDS = 100


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID (Heusel et al. 2017) between feature sets (N, D): ||mu_a-mu_b||^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Sa Sb)^1/2) = sum of sqrt eigenvalues of Sa^1/2 Sb Sa^1/2, which is symmetric PSD.
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ sb @ root_a)
    tr_sqrt = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def bootstrap_interval(
    stat: Callable[[np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float]:
    """A 95% interval for `stat(a, b)`: the estimate +- 1.96 standard deviations of the statistic
    over `rounds` resamples of the rows of both sets (with replacement).

    The spread of the resamples, not their position: FID is biased upward by a finite sample, and
    a resample (about 63% distinct rows) more so, so its resamples sit above the estimate (in 343
    dimensions, all of them) and percentile intervals would not hold it."""
    rng = np.random.default_rng(seed)
    point = stat(a, b)
    draws = [stat(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(rounds)]
    half = 1.96 * float(np.std(draws, ddof=1))
    return point - half, point + half


def spatial_features(maps: np.ndarray, channels: int = 7) -> np.ndarray:
    """sFID's features (Nash et al. 2021): the first `channels` channels of an intermediate
    (N, C, H, W) feature map, flattened, so that FID on them sees where strokes are, not only
    what the pooled features say the image is."""
    return maps[:, :channels].reshape(len(maps), -1).astype(np.float64)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.asarray(np.sqrt(np.clip(d, 0, None)))


def _coverage(queries: np.ndarray, support: np.ndarray, k: int) -> float:
    """Share of `queries` inside some k-NN ball of `support` (radius: distance to k-th neighbour)."""
    d_self = _pairwise(support, support)
    radii = np.sort(d_self, axis=1)[:, k]  # column 0 is the point itself
    return float((_pairwise(queries, support) <= radii[None, :]).any(1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds."""
    return _coverage(fake, real, k), _coverage(real, fake, k)


@dataclass(frozen=True)
class Quality:
    """The figures reported per model and setting."""

    fid: float
    precision: float
    recall: float
    label_accuracy: float | None
    n: int
    # Unconditional samples: the smallest and largest share of any class among the classifier's
    # predictions (uniform would be 1 / classes each), and the total variation from uniform.
    min_class_share: float | None = None
    max_class_share: float | None = None
    class_tv: float | None = None
    # FID's 95% bootstrap interval; sFID (spatial features) with its own interval.
    fid_lo: float | None = None
    fid_hi: float | None = None
    sfid: float | None = None
    sfid_lo: float | None = None
    sfid_hi: float | None = None

    def as_dict(self) -> dict[str, float]:
        out = {
            "fid": round(self.fid, 3),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "n": self.n,
        }
        if self.label_accuracy is not None:
            out["label_accuracy"] = round(self.label_accuracy, 4)
        for key in ("min_class_share", "max_class_share", "class_tv"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 4)
        for key in ("fid_lo", "fid_hi", "sfid", "sfid_lo", "sfid_hi"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 3)
        return out


def class_shares(predicted: np.ndarray, classes: int) -> tuple[float, float, float]:
    """(min share, max share, total variation from uniform) of the predicted classes."""
    shares = np.bincount(predicted, minlength=classes)[:classes] / max(len(predicted), 1)
    return float(shares.min()), float(shares.max()), float(0.5 * np.abs(shares - 1.0 / classes).sum())


def quality(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    predicted: np.ndarray | None = None,
    requested: np.ndarray | None = None,
    k: int = 3,
    *,
    spatial: tuple[np.ndarray, np.ndarray] | None = None,
    bootstrap: int = 0,
) -> Quality:
    """All figures for one set of generated images against the reference set.

    `spatial`: (real, generated) sFID features; `bootstrap`: resampling rounds for the intervals
    of FID (and sFID), none when 0."""
    p, r = precision_recall(real_features, fake_features, k)
    acc = None if predicted is None or requested is None else float((predicted == requested).mean())
    fid = frechet_distance(real_features, fake_features)
    fid_lo = fid_hi = sfid = sfid_lo = sfid_hi = None
    if bootstrap:
        fid_lo, fid_hi = bootstrap_interval(frechet_distance, real_features, fake_features, bootstrap)
    if spatial is not None:
        sfid = frechet_distance(*spatial)
        if bootstrap:
            sfid_lo, sfid_hi = bootstrap_interval(frechet_distance, *spatial, rounds=bootstrap)
    return Quality(
        fid, p, r, acc, len(fake_features),
        fid_lo=fid_lo, fid_hi=fid_hi, sfid=sfid, sfid_lo=sfid_lo, sfid_hi=sfid_hi,
    )  # fmt: skip


def unconditional_quality(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    predicted: np.ndarray,
    classes: int,
    k: int = 3,
    *,
    spatial: tuple[np.ndarray, np.ndarray] | None = None,
    bootstrap: int = 0,
) -> Quality:
    """FID, precision/recall and the class histogram of samples drawn without a label."""
    q = quality(real_features, fake_features, k=k, spatial=spatial, bootstrap=bootstrap)
    lo, hi, tv = class_shares(predicted, classes)
    return replace(q, min_class_share=lo, max_class_share=hi, class_tv=tv)
