"""`genserve eval-density`: the VAE as a density model, a classifier and an anomaly detector,
on the 1,000 held-out digits (never seen in training), through the serving library
(`service.density`, `service.latents`), as the server computes them.

- Test-set negative log-likelihood: the marginal IWAE bound (k = 1024, uniform label prior),
  in nats and bits per dimension, pixels scored as binary (`service.cards.DensitySpec`).
- Generative classifier p(y|x) (Bayes' rule on the k = 1024 conditional bounds): accuracy,
  expected calibration error (15 equal-width confidence bins) and label log-loss, beside the
  discriminative evaluation classifier's on the same digits.
- Anomaly detection: bits/dim (k = 128) as the score, AUROC of the held-out digits against
  uniform noise, the digits with their pixels shuffled, the digits inverted, and scikit-learn's
  8x8 digits upscaled to 20x20 and centred in 28x28 (MNIST's own layout).
- Pictures under docs/figures/: bits/dim histograms, interpolation strips (GAN and VAE between
  seeds, VAE between two held-out digits) and reconstructions.

Writes the card's `quality.density`, the model's report, and docs/density.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service import density, latents
from service.images import grid, to_uint8
from service.registry import LoadedModel, load_model
from service.runtime import OnnxModel
from training.data import load_split
from training.evaluate import write_reports

SEED = 2024
ECE_BINS = 15
CHUNK_IMAGES = 25  # images per log_bounds call: a progress bar that moves, each chunk its own seed


@dataclass(frozen=True)
class Calibration:
    accuracy: float
    ece: float
    log_loss: float


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Calibration:
    """Accuracy, expected calibration error (equal-width confidence bins) and mean -log p(true label)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = sum(
        abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
        for b in range(bins)
        if (which == b).any()
    )
    log_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)).mean()
    return Calibration(float(correct.mean()), float(ece), float(log_loss))


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(score of an outlier > score of an inlier), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([inliers, outliers])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[len(inliers) :].sum() - len(outliers) * (len(outliers) + 1) / 2
    return float(u / (len(inliers) * len(outliers)))


def bounds(model: LoadedModel, x: np.ndarray, k: int, what: str) -> density.Bounds:
    """Per-label bounds for every image, in chunks (each chunk's noise from its own seed)."""
    labels = list(range(len(model.card.labels)))
    parts = []
    for start in tqdm(range(0, len(x), CHUNK_IMAGES), desc=f"{what} (k={k})", unit="chunk"):
        parts.append(density.log_bounds(model, x[start : start + CHUNK_IMAGES], labels, k, SEED + start))
    return density.Bounds(np.concatenate([p.elbo for p in parts]), np.concatenate([p.iwae for p in parts]))


def out_of_distribution(heldout: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 1, 28, 28) uint8 sets a digit model should find unlikely; `heldout` is uint8 too."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(SEED)
    n = len(heldout)
    flat = heldout.reshape(n, -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(heldout.shape)
    small = load_digits().images[:n]  # (n, 8, 8), values 0..16
    upscaled = np.zeros((len(small), 1, 28, 28), dtype=np.uint8)
    for i, im in enumerate(small):
        big = Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((20, 20), Image.Resampling.BILINEAR)
        upscaled[i, 0, 4:24, 4:24] = np.asarray(big)
    return {
        "uniform noise": rng.integers(0, 256, heldout.shape, dtype=np.uint8),
        "shuffled pixels": shuffled,
        "inverted": 255 - heldout,
        "sklearn 8x8 digits, upscaled": upscaled,
    }


def to_range(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def histogram(path: Path, series: dict[str, np.ndarray], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    # Log scale: out-of-distribution images can score billions of times worse than digits.
    values = np.concatenate(list(series.values()))
    bins = np.logspace(np.log10(values.min()), np.log10(values.max()), 90)
    for name, v in series.items():
        ax.hist(v, bins=bins, alpha=0.55, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(f"bits per dimension (IWAE, k = {k}; lower = more likely; log scale)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def strip(path: Path, rows: list[np.ndarray], scale: int = 3) -> None:
    """Rows of (n, 1, 28, 28) images in [-1, 1] as one picture, each row one strip."""
    ncols = max(len(r) for r in rows)
    tiles = np.concatenate(
        [np.concatenate([to_uint8(r), np.zeros((ncols - len(r), 28, 28, 1), np.uint8)]) for r in rows]
    )
    picture = grid(tiles, ncols=ncols)[:, :, 0]
    Image.fromarray(picture).resize(
        (picture.shape[1] * scale, picture.shape[0] * scale), Image.Resampling.NEAREST
    ).save(path)


def latent_pictures(model_dir: Path, model: LoadedModel, x: np.ndarray, y: np.ndarray, figures: Path) -> None:
    """Interpolation strips (GAN and VAE between seeds, VAE between held-out digits of two
    labels) and VAE reconstructions of one held-out digit per label."""
    rows = []
    for family in ("gan", "vae"):
        m = load_model(model_dir / family, device="cpu")
        for a, b, label in ((1, 2, 3), (3, 4, 7)):
            ends = [latents.seed_latent(m, seed, label) for seed in (a, b)]
            rows.append(latents.interpolate(m, *ends, 10, label))
    strip(figures / "interpolation-seeds.png", rows)
    first = {d: int(np.flatnonzero(y == d)[0]) for d in range(10)}
    img_rows = []
    for i, j in ((first[1], first[7]), (first[3], first[8]), (first[4], first[9])):
        mean, _ = latents.encode(model, x[[i, j]], None)
        frames = latents.interpolate(model, mean[0], mean[1], 8, None)
        img_rows.append(np.concatenate([x[i : i + 1], frames, x[j : j + 1]]))
    strip(figures / "interpolation-vae-images.png", img_rows)
    picks = list(first.values())
    mean, _ = latents.encode(model, x[picks], None)
    strip(figures / "reconstruction-vae.png", [x[picks], latents.decode(model, mean, None)])


def run(model_dir: Path, name: str, k: int, k_ood: int, report: Path, figures: Path) -> dict[str, float]:
    model = load_model(model_dir / name, device="cpu", intra_op_threads=2)
    card = model.card
    dims = int(np.prod(card.image_shape))
    split = load_split()
    x, y = split.heldout_x, split.heldout_y
    prior = card.label_prior()

    test = bounds(model, x, k, "held-out digits")
    nll = -density.marginal(test.iwae, prior)
    nll_elbo = -density.marginal(test.elbo, prior)
    gen = calibration(density.classify(test.iwae, prior), y)
    clf = OnnxModel(model_dir / "_evaluation" / "classifier.onnx", device="cpu", intra_op_threads=2)
    logits = clf.run("logits", {"image": x}).astype(np.float64)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    disc = calibration(soft / soft.sum(axis=1, keepdims=True), y)

    pixels = np.rint((x + 1) * 127.5).astype(np.uint8)
    sets = {"held-out digits": pixels, **out_of_distribution(pixels)}
    bpd = {
        what: density.nats_to_bits_per_dim(density.marginal(bounds(model, to_range(p), k_ood, what).iwae, prior), dims)
        for what, p in sets.items()
    }
    inl = bpd["held-out digits"]
    aurocs = {what: auroc(inl, v) for what, v in bpd.items() if what != "held-out digits"}

    figures.mkdir(parents=True, exist_ok=True)
    histogram(figures / "density-bits-per-dim.png", bpd, k_ood)
    latent_pictures(model_dir, model, x, y, figures)

    measured = {
        "test_nll_nats": float(nll.mean()),
        "test_bits_per_dim": float(density.nats_to_bits_per_dim(-nll.mean(), dims)),
        "test_bits_per_dim_elbo": float(density.nats_to_bits_per_dim(-nll_elbo.mean(), dims)),
        "k": float(k),
        "classifier_accuracy": gen.accuracy,
        "classifier_ece": gen.ece,
        "classifier_log_loss": gen.log_loss,
        "discriminative_accuracy": disc.accuracy,
        "discriminative_ece": disc.ece,
        **{f"auroc_{_slug(w)}": v for w, v in aurocs.items()},
    }
    path = model_dir / name / "model.json"
    stored = json.loads(path.read_text())
    stored.setdefault("quality", {})["density"] = {k: round(v, 5) for k, v in measured.items()}
    path.write_text(json.dumps(stored, indent=2) + "\n")
    latent_prior = "N(0, I)"
    if card.prior is not None:
        latent_prior = f"a Gaussian per label (`{card.prior.file}`, the card's `prior`; {card.prior.fitted})"
    report.write_text(markdown(name, measured, aurocs, bpd, k, k_ood, figures, report.parent, latent_prior))
    write_reports(model_dir / name)
    return measured


def _num(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 1e6 else f"{v:.2e}"


def _slug(what: str) -> str:
    return what.split(",")[0].replace(" ", "_").lower()


def markdown(
    name: str,
    m: dict[str, float],
    aurocs: dict[str, float],
    bpd: dict[str, np.ndarray],
    k: int,
    k_ood: int,
    figures: Path,
    docs: Path,
    latent_prior: str = "N(0, I)",
) -> str:
    rel = figures.relative_to(docs) if figures.is_relative_to(docs) else figures
    lines = [
        f"# Beyond sampling: the {name} model as a density, a classifier and an anomaly detector",
        "",
        "Made by `genserve eval-density` (`training/density_eval.py`) on the 1,000 held-out digits, through the",
        "same code the `/score` and `/classify` routes run. Pixels are scored as binary (on at intensity >= 0.5):",
        "the decoder's Bernoulli likelihood is a distribution over binary images, so the bounds are",
        "log-probabilities. Bits per dimension = nats / (784 ln 2).",
        f"The latent prior p(z | y) in every bound is the one generation samples: {latent_prior}.",
        "",
        "## Test-set likelihood",
        "",
        "| bound | nats per image | bits per dimension |",
        "|---|---:|---:|",
        f"| IWAE, k = {k} (marginal over labels, uniform prior) | {m['test_nll_nats']:.2f} | {m['test_bits_per_dim']:.4f} |",
        f"| ELBO | {m['test_bits_per_dim_elbo'] * 784 * math.log(2):.2f} | {m['test_bits_per_dim_elbo']:.4f} |",
        "",
        "## Generative classifier p(y|x)",
        "",
        f"Bayes' rule on the conditional IWAE bounds (k = {k}), against the discriminative evaluation classifier",
        "(`exported/_evaluation/classifier.onnx`) on the same digits. ECE: 15 equal-width confidence bins.",
        "",
        "| classifier | accuracy | ECE | log-loss |",
        "|---|---:|---:|---:|",
        f"| generative ({name}, p(x\\|y) p(y)) | {m['classifier_accuracy']:.3f} | {m['classifier_ece']:.3f} | {m['classifier_log_loss']:.3f} |",
        f"| discriminative (evaluation classifier) | {m['discriminative_accuracy']:.3f} | {m['discriminative_ece']:.3f} | - |",
        "",
        "## Density as an anomaly score",
        "",
        f"Score: bits per dimension (IWAE, k = {k_ood}); AUROC of the held-out digits (inliers) against each set",
        "(1,000 images each; 1 = every outlier scores as less likely than every digit).",
        "",
        "| outliers | AUROC | median bits/dim |",
        "|---|---:|---:|",
        f"| (held-out digits themselves) | - | {_num(np.median(bpd['held-out digits']))} |",
        *(f"| {w} | {a:.4f} | {_num(np.median(bpd[w]))} |" for w, a in aurocs.items()),
        "",
        "The bounds are upper bounds on bits/dim. Far from the data the encoder's proposal q(z|x,y) is poor",
        "(inverted digits get posteriors that the prior finds absurd), so the bound there is very loose:",
        "such an image's true likelihood is higher than its score says, by an amount the bound cannot tell.",
        "Likelihood models are known to favour simple images; the sklearn digits, upscaled and blurred,",
        "are the set that overlaps the held-out digits most (the histogram's lowest band).",
        "",
        f"![bits per dimension]({rel}/density-bits-per-dim.png)",
        "",
        "## Latent space",
        "",
        "GAN (top two rows) and VAE (bottom two) between the latents of seeds 1 -> 2 (label 3) and 3 -> 4",
        "(label 7), spherical interpolation of the noise the prior maps to latents",
        "(`POST /v1/models/{name}/interpolate`):",
        "",
        f"![interpolation between seeds]({rel}/interpolation-seeds.png)",
        "",
        "VAE between held-out digits of two labels, 1 -> 7, 3 -> 8, 4 -> 9 (posterior means under the null",
        "label; the first and last columns are the inputs):",
        "",
        f"![interpolation between images]({rel}/interpolation-vae-images.png)",
        "",
        "One held-out digit per label (top) and its VAE reconstruction (bottom, `POST /v1/models/vae/reconstruct`):",
        "",
        f"![reconstructions]({rel}/reconstruction-vae.png)",
        "",
    ]
    return "\n".join(lines)
