"""Sample-quality maths on classifier features: FID, precision/recall, label accuracy.

Pure numpy, so models are evaluated from their ONNX files without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
) -> Quality:
    """All figures for one set of generated images against the reference set."""
    p, r = precision_recall(real_features, fake_features, k)
    acc = None if predicted is None or requested is None else float((predicted == requested).mean())
    return Quality(frechet_distance(real_features, fake_features), p, r, acc, len(fake_features))


def unconditional_quality(
    real_features: np.ndarray, fake_features: np.ndarray, predicted: np.ndarray, classes: int, k: int = 3
) -> Quality:
    """FID, precision/recall and the class histogram of samples drawn without a label."""
    q = quality(real_features, fake_features, k=k)
    lo, hi, tv = class_shares(predicted, classes)
    return Quality(q.fid, q.precision, q.recall, None, q.n, lo, hi, tv)
