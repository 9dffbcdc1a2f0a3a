"""`genserve eval`: sample quality of the exported models, measured through the serving library.

No torch: generation runs the ONNX models with `service`'s generators, samplers and step
scheduler; features come from the exported evaluation classifier. Every setting draws
N images (default 1,000, N / 10 per label) and compares them with the 1,000 held-out digits; the
floor compares N training digits (at most all 4,000) with the same held-out set. FID and sFID
come with 95% bootstrap intervals.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.cards import ModelCard
from service.evaluation import (
    BOOTSTRAP_ROUNDS,
    Quality,
    bootstrap_interval,
    frechet_distance,
    quality,
    spatial_features,
    unconditional_quality,
)
from service.generators import generate_latent
from service.images import grid, to_uint8
from service.jobs import DiffusionJob, LatentJob
from service.registry import LoadedModel, load_model
from service.samplers import SamplerName
from service.scheduler import StepScheduler
from training.data import load_split

N_EVAL = 1000
REPORT_HEAD = """# Sample quality of the shipped models

Made by `genserve eval` (see `training/evaluate.py`): N generated images per setting (N / 10
per label) against the 1,000 held-out digits, in the 128-d penultimate features of the
evaluation classifier (`exported/_evaluation/classifier.onnx`). FID, with a 95% interval (the
estimate +- 1.96 standard deviations of FID over 100 resamples of both sets); sFID (Nash et al.
2021): FID on the first 7 channels of the classifier's last spatial map (7 x 7 x 7 = 343 values:
where the strokes are, rather than what digit they make), with its interval; precision and
recall (Kynkaanniemi et al. 2019, k = 3); label accuracy is the share of images the classifier
gives the requested label. The floor row compares N training digits (at most all 4,000) with
the held-out digits; its label accuracy is the classifier's own accuracy on the held-out digits.
Diffusion settings are `sampler-steps` (guidance 1, plain conditional sampling) and `-cfgW`
(classifier-free guidance scale W, two network rows per image). `uncond` settings draw the same
N images with no label (the null label): label accuracy does not apply, and the last column
gives the smallest and largest share of any digit among the classifier's readings of them
(uniform: 10% each; the classifier reads the 1,000 held-out digits as 9.7% - 10.3%), with the total
variation from uniform in the card (`class_tv`). Seeds: 1234 + label for diffusion, 1234 + i
for GAN/VAE image i.

"""
REPORT_FIGURES = """
FID and label accuracy against steps, per model and sampler (`genserve eval` draws it; `genserve
trilemma` redraws it from the cards):

![FID and label accuracy against steps](figures/quality-vs-steps.png)
"""
EVAL_SEED = 1234
CLASSIFIER = Path("_evaluation") / "classifier.onnx"


@dataclass(frozen=True)
class Setting:
    """One way of sampling a model: for diffusion, a sampler, a step count and a guidance scale."""

    key: str
    sampler: SamplerName | None = None
    steps: int = 0
    guidance: float = 1.0
    unconditional: bool = False  # no label: measures mode coverage (class histogram) instead of accuracy


DIFFUSION_SETTINGS = (
    Setting("dpmpp_2m-10", "dpmpp_2m", 10),
    Setting("dpmpp_2m-20", "dpmpp_2m", 20),
    Setting("ddim-20", "ddim", 20),
    Setting("ddim-50", "ddim", 50),
    Setting("ddpm-1000", "ddpm", 1000),
    Setting("dpmpp_2m-20-cfg1.5", "dpmpp_2m", 20, 1.5),
    Setting("dpmpp_2m-20-cfg2", "dpmpp_2m", 20, 2.0),
    Setting("dpmpp_2m-10-uncond", "dpmpp_2m", 10, unconditional=True),
)
LATENT_SETTINGS = (Setting("default"), Setting("uncond", unconditional=True))


def settings_for(card: ModelCard) -> tuple[Setting, ...]:
    """The settings a model is measured at: a distilled model's own sampler and step counts."""
    if card.family != "diffusion":
        return LATENT_SETTINGS
    if card.sampling is not None:
        conditional = tuple(Setting(f"{s}-{k}", s, k) for s in card.sampling.samplers for k in card.sampling.steps)
        s, k = card.sampling.samplers[0], card.sampling.default_steps
        return (*conditional, Setting(f"{s}-{k}-uncond", s, k, unconditional=True))
    return DIFFUSION_SETTINGS


@dataclass(frozen=True)
class Embedding:
    """What the evaluation classifier makes of a set of images."""

    predicted: np.ndarray  # (N,) class read
    features: np.ndarray  # (N, D) penultimate features: FID, precision/recall
    spatial: np.ndarray | None  # (N, 7 * H * W): sFID's features, where the graph has a spatial map

    def spatial_pair(self, other: Embedding) -> tuple[np.ndarray, np.ndarray] | None:
        """(self, other) spatial features for sFID, or None where either has none."""
        return None if self.spatial is None or other.spatial is None else (self.spatial, other.spatial)


class FeatureNet:
    """The exported classifier: logits and penultimate features for (N, C, H, W) images in [-1, 1],
    and (`embed`) the spatial map it flattens into its dense layers, read from the same graph by
    adding that tensor to its outputs (the classifier file stays as exported)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnx  # the training extra: only the evaluation rewrites a graph
        import onnxruntime as ort

        graph = onnx.load(str(path))
        flatten = [n for n in graph.graph.node if n.op_type == "Flatten"]
        self.spatial_name = flatten[0].input[0] if flatten else None
        if self.spatial_name is not None:
            graph.graph.output.append(onnx.ValueInfoProto(name=self.spatial_name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.outputs = ["logits", "features", *([self.spatial_name] if self.spatial_name else [])]

    def embed(self, images: np.ndarray) -> Embedding:
        parts: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for i in range(0, len(images), 500):
            out = self.session.run(self.outputs, {"image": images[i : i + 500].astype(np.float32)})
            for part, o in zip(parts, out, strict=True):
                part.append(np.asarray(o))
        logits, feats, *maps = (np.concatenate(p) for p in parts)
        spatial = spatial_features(maps[0]) if maps else None
        return Embedding(logits.argmax(1), feats.astype(np.float64), spatial)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = self.embed(images)
        return e.predicted, e.features


def eval_labels(n: int = N_EVAL) -> np.ndarray:
    return np.arange(n) % 10


def sample_latent(model: LoadedModel, labels: np.ndarray, unconditional: bool = False) -> np.ndarray:
    jobs = [
        LatentJob(seed=EVAL_SEED + i, n=1, label=None if unconditional else int(lab)) for i, lab in enumerate(labels)
    ]
    return np.concatenate(generate_latent(model, jobs))


def sample_diffusion(model: LoadedModel, labels: np.ndarray, setting: Setting, max_batch: int = 250) -> np.ndarray:
    """All images of one setting through the step scheduler, one job per label."""
    assert setting.sampler is not None

    async def run() -> list[np.ndarray]:
        scheduler = StepScheduler(model, max_batch=max_batch, max_queued_lanes=len(labels))
        bar = tqdm(total=len(labels) * setting.steps, desc=f"{model.name} {setting.key} lane-steps", mininterval=5)
        scheduler.on_step = lambda s: bar.update(s.lanes)
        jobs = []
        for lab in range(len(model.card.labels)):
            idx = np.flatnonzero(labels == lab)
            label = None if setting.unconditional else lab
            jobs.append(
                DiffusionJob(EVAL_SEED + lab, len(idx), setting.steps, setting.sampler, label, setting.guidance)
            )  # type: ignore[arg-type]
        results = await asyncio.gather(*(scheduler.submit(j) for j in jobs))
        bar.close()
        await scheduler.close()
        out = np.zeros((len(labels), *model.card.image_shape), np.float32)
        for lab, res in enumerate(results):
            out[np.flatnonzero(labels == lab)] = res.images
        return [out]

    return asyncio.run(run())[0]


def write_grid(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """samples.png: one row per label, ten samples each, the label written at the left, 2x scale."""
    from PIL import Image, ImageDraw

    rows = [images[labels == lab][:10] for lab in range(len(names))]
    tiles = grid(to_uint8(np.concatenate(rows)), ncols=10)[:, :, 0]
    margin = 14
    canvas = Image.new("L", (tiles.shape[1] + margin, tiles.shape[0]), 0)
    canvas.paste(Image.fromarray(tiles), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    cell = (tiles.shape[0] - 2) // len(names)
    for i, name in enumerate(names):
        draw.text((3, 2 + i * cell + cell // 2 - 6), name, fill=255)
    canvas = canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST)
    canvas.save(folder / "samples.png")


def evaluate_model(
    model_dir: Path,
    name: str,
    features: FeatureNet,
    real: Embedding,
    threads: int,
    settings: list[str] | None,
    n: int = N_EVAL,
    bootstrap: int = BOOTSTRAP_ROUNDS,
    grid: bool = True,
) -> dict[str, Quality]:
    folder = model_dir / name
    model = load_model(folder, device="cpu", intra_op_threads=threads)
    labels = eval_labels(n)
    todo = settings_for(model.card)
    results: dict[str, Quality] = {}
    for setting in todo:
        if settings and setting.key not in settings:
            continue
        if setting.unconditional and model.card.null_label is None:
            continue
        t0 = time.time()
        if model.card.family == "diffusion":
            images = sample_diffusion(model, labels, setting)
        else:
            images = sample_latent(model, labels, setting.unconditional)
        fake = features.embed(images)
        spatial = real.spatial_pair(fake)
        if setting.unconditional:
            results[setting.key] = unconditional_quality(
                real.features,
                fake.features,
                fake.predicted,
                len(model.card.labels),
                spatial=spatial,
                bootstrap=bootstrap,
            )
        else:
            results[setting.key] = quality(
                real.features, fake.features, fake.predicted, labels, spatial=spatial, bootstrap=bootstrap
            )
        print(f"{name} {setting.key}: {results[setting.key].as_dict()} ({time.time() - t0:.0f}s)", flush=True)
        if grid and (setting.key in ("default", "dpmpp_2m-20") or (model.card.sampling and setting is todo[-2])):
            write_grid(folder, images, labels, model.card.labels)
    return results


def floor(features: FeatureNet, bootstrap: int = BOOTSTRAP_ROUNDS, n: int = N_EVAL) -> tuple[Quality, Embedding]:
    """Held-out digits as the reference; `n` training digits (at most all of them) as 'generated':
    the best a model can do."""
    split = load_split()
    real = features.embed(split.heldout_x)
    rng = np.random.default_rng(EVAL_SEED)
    idx = rng.choice(len(split.train_x), min(n, len(split.train_x)), replace=False)
    train = features.embed(split.train_x[idx])
    spatial = real.spatial_pair(train)
    # The floor's label accuracy is the classifier's own accuracy on the held-out digits.
    return quality(
        real.features, train.features, real.predicted, split.heldout_y, spatial=spatial, bootstrap=bootstrap
    ), real


@dataclass(frozen=True)
class Calibration:
    """How far the bootstrap's spread is from the real one, on data where the real one can be seen:
    FID against the held-out digits of `sets` random sets of `n` training digits (their standard
    deviation; drawn from 4,000, so they overlap and it is a slight underestimate) beside the
    bootstrap's for one of them (both sides resampled, as the intervals are made)."""

    n: int
    sets: int
    fresh_mean: float
    fresh_sd: float
    bootstrap_sd: float

    def sentence(self) -> str:
        return (
            f"How wide the intervals are, measured: FID against the held-out digits of {self.sets} random sets of "
            f"{self.n:,} training digits (drawn from 4,000, so they overlap a little) has mean {self.fresh_mean:.2f} "
            f"and standard deviation {self.fresh_sd:.2f}; the bootstrap's, for one of them, is {self.bootstrap_sd:.2f}, "
            f"{self.bootstrap_sd / self.fresh_sd:.1f}x that (a resample repeats rows, and a set of N with repeats "
            "varies about like a fresh set of N / 2; it also counts the held-out set's own variation). So the "
            "intervals are conservative, and the fresh-set spread is the better guide to whether two rows "
            "differ.\n"
        )


def calibrate(features: FeatureNet, n: int = N_EVAL, sets: int = 30, rounds: int = BOOTSTRAP_ROUNDS) -> Calibration:
    split = load_split()
    real = features.embed(split.heldout_x).features
    train = features.embed(split.train_x).features
    rng = np.random.default_rng(EVAL_SEED)
    fresh = [frechet_distance(real, train[rng.choice(len(train), n, replace=False)]) for _ in range(sets)]
    one = train[rng.choice(len(train), n, replace=False)]
    lo, hi = bootstrap_interval(frechet_distance, real, one, rounds)
    return Calibration(n, sets, float(np.mean(fresh)), float(np.std(fresh, ddof=1)), (hi - lo) / (2 * 1.96))


def is_digit_card(card: dict[str, Any]) -> bool:
    """A card the digit evaluation applies to: a label-path model of 28x28 grey images (what the
    digit classifier reads), not a text-to-image model."""
    image = card["image"]
    return card["family"] != "text2image" and (image["channels"], image["height"], image["width"]) == (1, 28, 28)


def is_sample_quality(d: dict[str, float]) -> bool:
    """A card `quality` entry measured by `genserve eval` (not `density` or `edits`, which the
    beyond-sampling evaluations write)."""
    return "fid" in d and "n" in d and "strength" not in d


def quality_from_dict(d: dict[str, float]) -> Quality:
    acc = d.get("label_accuracy")
    return Quality(
        d["fid"], d["precision"], d["recall"], acc, int(d["n"]),
        d.get("min_class_share"), d.get("max_class_share"), d.get("class_tv"),
        d.get("fid_lo"), d.get("fid_hi"), d.get("sfid"), d.get("sfid_lo"), d.get("sfid_hi"),
    )  # fmt: skip


def table_from_cards(model_dir: Path) -> str:
    """The combined table of every card's measured quality (what README and docs show)."""
    rows: dict[str, dict[str, Quality]] = {}
    floor_q = None
    for card_path in sorted(model_dir.glob("*/model.json")):
        card = json.loads(card_path.read_text())
        if not is_digit_card(card):  # the emoji models: measured by `genserve eval-emoji`
            continue
        measured = dict(card.get("quality", {}))
        if "floor" in measured:
            floor_q = quality_from_dict(measured.pop("floor"))
        rows[card_path.parent.name] = {k: quality_from_dict(v) for k, v in measured.items() if is_sample_quality(v)}
    if floor_q is None:
        raise ValueError(f"no evaluated model in {model_dir}: run `genserve eval` first")
    return markdown_table(rows, floor_q)


def _interval(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if lo is None or hi is None else f"{value:.2f} [{lo:.1f}, {hi:.1f}]"


def markdown_table(rows: dict[str, dict[str, Quality]], floor_q: Quality) -> str:
    lines = [
        "| model | setting | N | FID [95%] | FID / floor | sFID [95%] | precision | recall | label accuracy "
        "| class shares (uncond) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(model: str, key: str, q: Quality) -> str:
        acc = f"{q.label_accuracy:.3f}" if q.label_accuracy is not None else "-"
        shares = "-"
        if q.min_class_share is not None and q.max_class_share is not None:
            shares = f"{q.min_class_share:.1%} - {q.max_class_share:.1%}"
        ratio = q.fid / floor_q.fid if floor_q.fid > 0 else float("nan")
        return (
            f"| {model} | {key} | {q.n:,} | {_interval(q.fid, q.fid_lo, q.fid_hi)} | {ratio:.2f}x "
            f"| {_interval(q.sfid, q.sfid_lo, q.sfid_hi)} | {q.precision:.3f} | {q.recall:.3f} | {acc} | {shares} |"
        )

    lines.append(row("floor", "train vs held-out", floor_q))
    for model, settings in rows.items():
        lines.extend(row(model, key, q) for key, q in settings.items())
    return "\n".join(lines)


def update_card(folder: Path, results: dict[str, Quality], floor_q: Quality) -> None:
    path = folder / "model.json"
    card = json.loads(path.read_text())
    card.setdefault("quality", {})
    card["quality"]["floor"] = floor_q.as_dict()
    card["quality"].update({k: q.as_dict() for k, q in results.items()})
    path.write_text(json.dumps(card, indent=2) + "\n")


def write_reports(folder: Path) -> None:
    """report.json and report.md from everything measured so far (the card's `quality`)."""
    measured = dict(json.loads((folder / "model.json").read_text())["quality"])
    (folder / "report.json").write_text(json.dumps(measured, indent=2) + "\n")
    floor_q = quality_from_dict(measured.pop("floor"))
    rows = {k: quality_from_dict(v) for k, v in measured.items() if is_sample_quality(v)}
    table = markdown_table({folder.name: rows}, floor_q)
    (folder / "report.md").write_text(f"# {folder.name}: sample quality\n\n{REPORT_HEAD.split(chr(10), 2)[2]}{table}\n")


def run_eval(
    model_dir: Path,
    names: list[str],
    threads: int,
    settings: list[str] | None,
    report: Path,
    n: int = N_EVAL,
    bootstrap: int = BOOTSTRAP_ROUNDS,
) -> str:
    """Evaluates `names`, updates their cards and per-model reports, and writes the combined report.

    The cards hold the measurement at the standard N (1,000); a run at another N measures the
    same way but writes only `report` (and its .json), with its own floor, leaving cards alone."""
    features = FeatureNet(model_dir / CLASSIFIER, threads)
    floor_q, real = floor(features, bootstrap, n)
    standard = n == N_EVAL
    all_results: dict[str, dict[str, Quality]] = {}
    for name in names:
        results = evaluate_model(model_dir, name, features, real, threads, settings, n, bootstrap, grid=standard)
        all_results[name] = results
        if standard:
            update_card(model_dir / name, results, floor_q)
            write_reports(model_dir / name)
    report.parent.mkdir(parents=True, exist_ok=True)
    if not standard:
        fresh = {m: {k: q.as_dict() for k, q in r.items()} for m, r in all_results.items()}
        measured = {"n": n, "floor": floor_q.as_dict()} | _other_n_rows(report.with_suffix(".json"), n, fresh)
        report.with_suffix(".json").write_text(json.dumps(measured, indent=2) + "\n")
        return write_other_n_report(report, measured)
    return write_report(model_dir, report, features, bootstrap)


def _other_n_rows(previous: Path, n: int, fresh: dict[str, Any]) -> dict[str, Any]:
    """This run's models' rows, in place of their earlier ones, with the rows of the models it did
    not measure kept from the earlier report at the same N (re-measuring one model leaves the rest)."""
    before = json.loads(previous.read_text()) if previous.exists() else {}
    if before.get("n") != n:
        return fresh
    kept = {m: fresh.get(m, rows) for m, rows in before.items() if m not in ("n", "floor")}
    return kept | fresh


def write_other_n_report(report: Path, measured: dict[str, Any]) -> str:
    """The report of a run at N other than the standard, from its JSON (`run_eval` writes both)."""
    n, rest = int(measured["n"]), dict(measured)
    floor_q = quality_from_dict(rest.pop("floor"))
    del rest["n"]
    table = markdown_table({m: {k: quality_from_dict(v) for k, v in r.items()} for m, r in rest.items()}, floor_q)
    report.write_text(
        f"{REPORT_HEAD}At N = {n:,} (`genserve eval --n {n}`; the cards keep N = 1,000; the floor takes all "
        "training digits when N is more). FID falls as N grows (its bias shrinks), so compare FIDs at one N "
        "only; so do precision and recall, whose k-nearest-neighbour balls shrink as a set grows.\n\n"
        f"{table}\n"
    )
    return table


def write_report(model_dir: Path, report: Path, features: FeatureNet, bootstrap: int = BOOTSTRAP_ROUNDS) -> str:
    """docs/quality.md from the cards, with the intervals' calibration, and the trilemma figures."""
    table = table_from_cards(model_dir)
    calibration = calibrate(features, rounds=bootstrap).sentence() if bootstrap else ""
    report.write_text(REPORT_HEAD + table + "\n\n" + calibration + REPORT_FIGURES)
    from training.trilemma import write_trilemma  # matplotlib, only here

    write_trilemma(model_dir, report.parent / "bench-core.json", report.parent / "figures" / "trilemma.png")
    return table
