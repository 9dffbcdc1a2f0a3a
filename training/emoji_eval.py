"""`genserve eval-emoji`: the emoji text-to-image model measured, through the serving library.

The yardstick is an evaluation classifier trained here on the emoji categories (smileys, animals,
food, ...) from the training emoji only (`genserve train emoji-classifier`, exported to
`exported/_evaluation/emoji-classifier.onnx`); its accuracy on the held-out emoji, which it has
never seen in any style, is stated beside every figure. Its 256-d penultimate features give:

- FID, precision and recall of generated images against the held-out drawings, with the
  training drawings in the model's place as the reference a perfect model of the training set
  would score;
- category accuracy: the share of images the classifier reads as the category asked for, for
  bare category prompts ("food & drink") and for name prompts;
- name retrieval: for a name prompt ("red apple"), whether the nearest drawing (of all 7,570,
  every vendor's style) to the generated image is a drawing of the named emoji (top-1), or one
  of the five nearest is (top-5); the same measure for real drawings (leave-one-out) is the
  ceiling the feature space allows. Training names measure fidelity, held-out names
  generalisation (a name the model never saw with a picture).

Generation runs the exported pipeline with `service.text2image.TextToImage` (step-level batched,
as served); no torch on that path. Seeds: 1234 + prompt index, images 0..n-1 of each request.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.evaluation import frechet_distance, precision_recall
from service.images import grid, to_uint8
from service.jobs import DiffusionJob
from service.registry import LoadedModel, load_model
from service.text2image import TextPipeline, TextToImage
from training.emoji_data import CATEGORIES, EmojiSplit, is_heldout, load_split, to_unit
from training.evaluate import FeatureNet, Setting, sample_diffusion
from training.train import TrainConfig, Trainer

EVAL_SEED = 1234
CLASSIFIER = Path("_evaluation") / "emoji-classifier.onnx"
SIZE = 32
SAMPLER, STEPS = "dpmpp_2m", 20
GRID_PROMPTS = (
    "red apple",
    "pizza",
    "heart",
    "cat face",
    "frog face",
    "rocket",
    "christmas tree",
    "fire",
    "dog face",
    "grinning face",
    "food & drink",
    "flags",
)  # fmt: skip (names, short names, two held-out names, two categories)


@dataclass(frozen=True)
class Counts:
    """How many images each measure draws (tests use fewer)."""

    per_name: int = 4
    train_names: int = 200
    per_category: int = 64
    grid_seeds: int = 8


class EmojiClassifier(nn.Module):
    """A small VGG-style net for (N, 3, 32, 32) images in [-1, 1]: category logits and its 256-d
    penultimate features (what FID, precision/recall and retrieval use)."""

    FEATURE_DIM = 256

    def __init__(self, classes: int = len(CATEGORIES)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]  # fmt: skip

        self.body = nn.Sequential(
            *block(3, 32), *block(32, 64), *block(64, 128),
            nn.Flatten(), nn.Linear(128 * 4 * 4, self.FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.FEATURE_DIM, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return self.head(self.dropout(f)), f


def train_emoji_classifier(cfg: TrainConfig, split: EmojiSplit | None = None) -> Trainer:
    """Categories of the training emoji's drawings, with shifts of up to 2 pixels and mirror
    images as augmentation (a category does not change under either)."""
    split = split or load_split(SIZE)
    images, emoji_of, _ = split.part(heldout=False)
    x = torch.from_numpy(to_unit(images))
    y = torch.from_numpy(split.category_of(emoji_of))
    torch.manual_seed(cfg.seed)
    clf = EmojiClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.lr, weight_decay=1e-4)
    trainer = Trainer(cfg, {"classifier": clf}, {"opt": opt})

    def step(xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        clf.train()
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
        flip = torch.rand(len(xb), generator=gen) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        logits, _ = clf(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == yb).float().mean().item()}

    trainer.run(step, x, y)
    return trainer


def export_emoji_classifier(checkpoint_path: Path, out: Path) -> float:
    """The classifier as `out/_evaluation/emoji-classifier.onnx` (inputs and outputs named as
    the digit classifier's, so `training.evaluate.FeatureNet` reads both); ORT-vs-torch error."""
    from training import checkpoint
    from training.export import _checked_export

    clf = EmojiClassifier()
    clf.load_state_dict(checkpoint.module_state(checkpoint.load_tensors(checkpoint_path), "classifier"))
    clf.eval()

    def inputs(batch: int) -> tuple[torch.Tensor]:
        return (torch.rand(batch, 3, SIZE, SIZE) * 2 - 1,)

    return _checked_export(clf, inputs, out / CLASSIFIER, ["image"], ["logits", "features"])


def sample(pipeline: TextPipeline, prompts: list[str], n: int, guidance: float, chunk: int = 96) -> np.ndarray:
    """`n` images per prompt, (len(prompts) * n, 3, S, S) in [0, 1], prompt-major; requests
    run concurrently through one `TextToImage`, so they share UNet calls as they do served."""
    jobs = [
        DiffusionJob(seed=EVAL_SEED + i, n=n, steps=STEPS, sampler=SAMPLER, guidance=guidance, prompt=p)
        for i, p in enumerate(prompts)
    ]

    async def go() -> list[np.ndarray]:
        service = TextToImage(pipeline, max_batch=64, max_queued_lanes=chunk * n)
        try:
            out: list[np.ndarray] = []
            for i in range(0, len(jobs), chunk):
                done = await asyncio.gather(*(service.generate(j) for j in jobs[i : i + chunk]))
                out.extend(r.images for r in done)
                print(f"  {min(i + chunk, len(jobs))}/{len(jobs)} prompts", flush=True)
            return out
        finally:
            await service.close()

    return np.concatenate(asyncio.run(go()))


def retrieval(queries: np.ndarray, wanted: np.ndarray, bank: np.ndarray, bank_emoji: np.ndarray,
              rows: np.ndarray | None = None) -> tuple[float, float]:  # fmt: skip
    """Top-1 and top-5 rate at which the named emoji is among the nearest drawings of `bank`
    (Euclidean, in the classifier's features). `rows`: the queries are these rows of the bank
    (real drawings), each left out of its own search."""
    d = (queries**2).sum(1)[:, None] - 2 * queries @ bank.T + (bank**2).sum(1)[None, :]
    if rows is not None:
        d[np.arange(len(rows)), rows] = np.inf
    nearest = np.argsort(d, axis=1)[:, :5]
    hits = bank_emoji[nearest] == wanted[:, None]
    return float(hits[:, 0].mean()), float(hits.any(axis=1).mean())


@dataclass(frozen=True)
class Row:
    """One line of the report: a set of images (generated or real) and its figures."""

    key: str
    what: str
    n: int
    category_accuracy: float
    fid: float | None = None  # against the held-out drawings (not for the held-out drawings themselves)
    precision: float | None = None
    recall: float | None = None
    top1: float | None = None
    top5: float | None = None

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {"n": self.n, "category_accuracy": round(self.category_accuracy, 4)}
        for key, value, digits in (("fid", self.fid, 3), ("precision", self.precision, 4),
                                   ("recall", self.recall, 4), ("name_top1", self.top1, 4),
                                   ("name_top5", self.top5, 4)):  # fmt: skip
            if value is not None:
                out[key] = round(value, digits)
        return out

    def cells(self) -> list[str]:
        def f(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        return [self.key, self.what, str(self.n), f(self.fid, ".2f"), f(self.precision, ".3f"), f(self.recall, ".3f"),
                f(self.category_accuracy, ".3f"), f(self.top1, ".3f"), f(self.top5, ".3f")]  # fmt: skip


def _row(key: str, what: str, feats: np.ndarray, predicted: np.ndarray, categories: np.ndarray,
         real: np.ndarray | None, top: tuple[float, float] | None = None) -> Row:  # fmt: skip
    """`real`: the reference set for FID and precision/recall (None: not measured)."""
    acc = float((predicted == categories).mean())
    top1, top5 = top if top is not None else (None, None)
    if real is None:
        return Row(key, what, len(feats), acc, top1=top1, top5=top5)
    p, r = precision_recall(real, feats)
    return Row(key, what, len(feats), acc, frechet_distance(real, feats), p, r, top1, top5)


def write_grid(path: Path, images: np.ndarray, prompts: tuple[str, ...], heldout: set[str]) -> None:
    """Prompts down the side (held-out names marked *), one row each, seeds across, 2x scale."""
    from PIL import Image, ImageDraw

    tiles = grid(to_uint8(images, (0.0, 1.0)), ncols=len(images) // len(prompts))
    margin, cell = 120, (tiles.shape[0] - 2) // len(prompts)
    canvas = Image.new("RGB", (tiles.shape[1] * 2 + margin, tiles.shape[0] * 2), (255, 255, 255))
    big = Image.fromarray(tiles).resize((tiles.shape[1] * 2, tiles.shape[0] * 2), Image.Resampling.NEAREST)
    canvas.paste(big, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, prompt in enumerate(prompts):
        draw.text((4, 2 * (2 + i * cell) + cell - 6), prompt + (" *" if prompt in heldout else ""), fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


@dataclass(frozen=True)
class Bank:
    """Every drawing through the evaluation classifier: features, predicted and true category."""

    features: np.ndarray
    predicted: np.ndarray
    category: np.ndarray
    heldout: np.ndarray

    @property
    def real(self) -> np.ndarray:
        """The reference set: the held-out drawings' features."""
        return self.features[self.heldout]


def text_rows(pipeline: TextPipeline, guidance: float, split: EmojiSplit, bank: Bank, features: FeatureNet,
              counts: Counts) -> tuple[list[Row], np.ndarray]:  # fmt: skip
    """Name prompts (training and held-out), category prompts, the real drawings' retrieval
    ceiling; and the grid's images ([0, 1])."""
    rng = np.random.default_rng(EVAL_SEED)
    held = bank.heldout
    train_ids = sorted({int(k) for k in split.emoji_of[~held]})
    picked = rng.choice(train_ids, min(counts.train_names, len(train_ids)), replace=False)
    named = {"training": sorted(picked.tolist()), "held-out": sorted({int(k) for k in split.emoji_of[held]})}
    rows = []
    for part, mask in (("training", ~held), ("held-out", held)):
        idx = np.flatnonzero(mask)
        top = retrieval(bank.features[idx], split.emoji_of[idx], bank.features, split.emoji_of, rows=idx)
        rows.append(
            _row(f"reference: {part} drawings", "real, leave-one-out retrieval", bank.features[idx],
                 bank.predicted[idx], bank.category[idx], None, top)
        )  # fmt: skip
    for part, ids in named.items():
        prompts = [split.emoji[k].name for k in ids]
        print(f"{part} names: {len(prompts)} prompts x {counts.per_name}", flush=True)
        images = sample(pipeline, prompts, counts.per_name, guidance)
        pred, feats = features(images.astype(np.float32) * 2 - 1)
        wanted = np.repeat(np.array(ids), counts.per_name)
        top = retrieval(feats, wanted, bank.features, split.emoji_of)
        rows.append(_row(f"{part} names", "generated", feats, pred, split.category_of(wanted), bank.real, top))
    prompts = [c.lower() for c in CATEGORIES]
    print(f"categories: {len(prompts)} prompts x {counts.per_category}", flush=True)
    images = sample(pipeline, prompts, counts.per_category, guidance)
    pred, feats = features(images.astype(np.float32) * 2 - 1)
    wanted_cat = np.repeat(np.arange(len(CATEGORIES)), counts.per_category)
    rows.append(_row("category prompts", "generated", feats, pred, wanted_cat, bank.real))
    return rows, sample(pipeline, list(GRID_PROMPTS), counts.grid_seeds, guidance)


LABEL_GUIDANCE = (1.0, 3.0)


def label_rows(model: LoadedModel, bank: Bank, features: FeatureNet, counts: Counts) -> tuple[list[Row], np.ndarray]:
    """A category-labelled model at each guidance scale; and the grid's images ([0, 1]), one row
    per category at the higher guidance."""
    labels = np.repeat(np.arange(len(model.card.labels)), counts.per_category)
    rows, images = [], np.zeros(0)
    for g in LABEL_GUIDANCE:
        images = sample_diffusion(model, labels, Setting(f"{SAMPLER}-{STEPS}-cfg{g:g}", SAMPLER, STEPS, g))  # type: ignore[arg-type]
        pred, feats = features(images)
        rows.append(_row(f"category labels, guidance {g:g}", "generated", feats, pred, labels, bank.real))
    first = np.concatenate([np.flatnonzero(labels == k)[: counts.grid_seeds] for k in range(len(model.card.labels))])
    return rows, (images[first] + 1) / 2


def run(model_dir: Path, name: str, report: Path, figure: Path, threads: int = 2, split: EmojiSplit | None = None,
        counts: Counts = Counts()) -> dict[str, Any]:  # fmt: skip
    """Measures `model_dir/name` (on `split`, default the emoji drawings), writes the report and
    the grid, and records the figures in the model's card (`quality`) and `report.json`."""
    t0 = time.time()
    split = split or load_split(SIZE)
    features = FeatureNet(model_dir / CLASSIFIER, threads)
    model = load_model(model_dir / name, device="cpu", intra_op_threads=threads)
    predicted, feats = features(to_unit(split.images))
    bank = Bank(feats, predicted, split.category_of(split.emoji_of), split.heldout)
    held = bank.heldout
    ref = np.random.default_rng(EVAL_SEED).choice(np.flatnonzero(~held), int(held.sum()), replace=False)
    rows = [_row("floor: training drawings", "real", feats[ref], predicted[ref], bank.category[ref], bank.real)]
    if model.pipeline is not None and model.card.text is not None:
        guidance: float | None = model.card.text.default_guidance
        more, grid_images = text_rows(model.pipeline, model.card.text.default_guidance, split, bank, features, counts)
        prompts = GRID_PROMPTS
    elif model.card.image_shape == (3, SIZE, SIZE) and len(model.card.labels) == len(CATEGORIES):
        guidance = None
        more, grid_images = label_rows(model, bank, features, counts)
        prompts = tuple(model.card.labels)
    else:
        raise ValueError(f"{name}: neither a text-to-image model nor a {SIZE}x{SIZE} RGB model of the emoji categories")
    rows += more
    heldout_names = {t for e in split.emoji if is_heldout(e) for t in (e.name, *e.short_names)}
    write_grid(figure, grid_images, prompts, heldout_names)

    classifier_acc = float((predicted[held] == bank.category[held]).mean())
    prefix = f"{SAMPLER}-{STEPS}" + (f"-cfg{guidance:g}" if guidance is not None else "")
    measured = {"setting": prefix, "classifier_heldout_accuracy": round(classifier_acc, 4),
                "rows": {r.key: r.as_dict() for r in rows}}  # fmt: skip
    folder = model_dir / name
    card = json.loads((folder / "model.json").read_text())
    card["quality"] = {f"{prefix} {r.key}": r.as_dict() for r in rows if r.what == "generated"}
    (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "report.json").write_text(json.dumps(measured, indent=2) + "\n")
    text = markdown(rows, name, figure, report, classifier_acc, guidance, counts, Chance.of(split), time.time() - t0)
    report.write_text(text)
    (folder / "report.md").write_text(text.replace(f"]({_rel(figure, report)})", f"]({_rel(figure, folder / 'x')})"))
    return measured


def _rel(target: Path, doc: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), doc.resolve().parent)


@dataclass(frozen=True)
class Chance:
    """What the report's figures compare with: the held-out set's largest category, the number of
    drawings searched, and the top-1/top-5 rates of a random pick."""

    majority: float
    drawings: int
    chance1: float
    chance5: float

    @staticmethod
    def of(split: EmojiSplit) -> Chance:
        held = split.category_of(split.emoji_of[split.heldout])
        share = 1 / len(split.emoji)  # a random drawing is the named emoji's: its drawings / all, on average
        return Chance(float(np.bincount(held).max() / len(held)), len(split.images), share, 1 - (1 - share) ** 5)


def markdown(rows: list[Row], name: str, figure: Path, report: Path, classifier_acc: float, guidance: float | None,
             counts: Counts, ref: Chance, seconds: float) -> str:  # fmt: skip
    """The report; `guidance` None: a category-labelled model (guidance per row)."""
    text = guidance is not None
    how = (
        f"classifier-free guidance {guidance:g} (the card's default), seed {EVAL_SEED} + prompt index"
        if text
        else f"classifier-free guidance as each row says, seed {EVAL_SEED} + label"
    )
    lines = [
        f"# {name}: {'the emoji text-to-image model' if text else 'emoji by category'}, measured",
        "",
        f"Made by `genserve eval-emoji {name} --report {report} --figure {figure}` (`training/emoji_eval.py`, "
        f"{seconds / 60:.0f} min on this machine). "
        f"Every image: {SAMPLER} {STEPS} steps, {how}, images 0..n-1 of each request, generated through the "
        "serving library (step-level batched as served).",
        "",
        f"Evaluation classifier: 9 emoji categories, trained here on the training emoji only; accuracy on the "
        f"held-out emoji (unseen in every style): **{classifier_acc:.3f}** (the largest category is "
        f"{ref.majority:.0%} of held-out drawings). FID, precision and recall (k = 3) compare each set with the "
        "held-out drawings in its 256-d features; the floor row puts as many training drawings in a model's place. "
        "Category accuracy: the share the classifier reads as the category asked for"
        + (
            " (for names: the named emoji's category). Name top-1/top-5: the named emoji is the nearest drawing / "
            f"among the five nearest, of all {ref.drawings:,} drawings (by chance: {ref.chance1:.2%} / "
            f"{ref.chance5:.2%})."
            if text
            else "."
        ),
        "",
        "| images | kind | n | FID | precision | recall | category accuracy | name top-1 | name top-5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    if text:
        lines += [
            "",
            f"Training names: {counts.train_names} training emoji drawn at random (seed {EVAL_SEED}), "
            f"{counts.per_name} images each; held-out names: all held-out emoji, {counts.per_name} each; category "
            f"prompts: each category's name alone, {counts.per_category} images each.",
            "",
            f"![prompts down the side, seeds across]({_rel(figure, report)})",
            "",
            f"Prompts down the side (held-out names marked *), images 0-{counts.grid_seeds - 1} of one seed per "
            "prompt across.",
        ]
    else:
        lines += [
            "",
            f"{counts.per_category} images per category and guidance scale.",
            "",
            f"![categories down the side]({_rel(figure, report)})",
            "",
            f"Categories down the side, the first {counts.grid_seeds} images of each at guidance "
            f"{LABEL_GUIDANCE[-1]:g} across.",
        ]
    return "\n".join(lines) + "\n"
