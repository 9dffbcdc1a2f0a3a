"""`genserve eval-edits`: diffusion image-to-image (SDEdit) and inpainting on the 1,000 held-out
digits (never seen in training), through the step scheduler the server runs.

- Image-to-image keeping the label (strengths 0.2 / 0.4 / 0.6): does the evaluation classifier
  still read the digit's own label; and switching to another label (0.6 / 0.8; a seeded random
  label other than the digit's), at guidance 1 and 3: does it read the new one.
- Inpainting: the top half, and the left half, of each digit regenerated with its true label:
  label accuracy of the result, and the largest change outside the mask after PNG rounding.
- FID of every output set against 1,000 training digits (the inputs are held-out digits, so a
  perfect copy scores the floor: held-out against the same training digits), precision, recall.
- Pictures: docs/figures/img2img-strengths.png, inpainting.png and interpolation-diffusion.png.

Writes the card's `quality` entries `edit-<setting>` and docs/editing.md.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service import latents
from service.evaluation import Quality, quality
from service.images import grid, to_uint8
from service.jobs import DiffusionJob, Edit
from service.registry import LoadedModel, load_model
from service.samplers import SamplerName
from service.scheduler import StepScheduler
from training.data import load_split
from training.evaluate import CLASSIFIER, EVAL_SEED, N_EVAL, FeatureNet, write_reports

STEPS = 20
SAMPLER: SamplerName = "dpmpp_2m"


@dataclass(frozen=True)
class EditSetting:
    key: str
    strength: float
    guidance: float = 1.0
    switch: bool = False  # ask for another label than the digit's
    mask: str | None = None  # "top" or "left": the half regenerated


SETTINGS = (
    EditSetting("keep-0.2", 0.2),
    EditSetting("keep-0.4", 0.4),
    EditSetting("keep-0.6", 0.6),
    EditSetting("switch-0.6", 0.6, switch=True),
    EditSetting("switch-0.8", 0.8, switch=True),
    EditSetting("switch-0.6-cfg3", 0.6, 3.0, switch=True),
    EditSetting("switch-0.8-cfg3", 0.8, 3.0, switch=True),
    EditSetting("inpaint-top", 1.0, mask="top"),
    EditSetting("inpaint-left", 1.0, mask="left"),
)


def half_mask(which: str, shape: tuple[int, int, int]) -> np.ndarray:
    """1 where the image is regenerated: its top or left half."""
    mask = np.zeros(shape, np.float32)
    if which == "top":
        mask[:, : shape[1] // 2] = 1.0
    else:
        mask[:, :, : shape[2] // 2] = 1.0
    return mask


def other_labels(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """A seeded random label per digit, never its own."""
    rng = np.random.default_rng(EVAL_SEED)
    return (labels + rng.integers(1, classes, len(labels))) % classes


def run_setting(model: LoadedModel, x: np.ndarray, targets: np.ndarray, s: EditSetting) -> np.ndarray:
    """Every digit edited once (its own seed), all lanes through one step scheduler."""
    mask = half_mask(s.mask, model.card.image_shape) if s.mask else None

    async def go() -> list[np.ndarray]:
        scheduler = StepScheduler(model, max_batch=250, max_queued_lanes=len(x))
        bar = tqdm(total=len(x), desc=f"{s.key}", unit="image", mininterval=5)
        jobs = [
            DiffusionJob(
                EVAL_SEED + i, 1, STEPS, SAMPLER, int(targets[i]), s.guidance, edit=Edit(x[i], s.strength, mask)
            )
            for i in range(len(x))
        ]

        async def one(job: DiffusionJob) -> np.ndarray:
            out = (await scheduler.submit(job)).images[0]
            bar.update(1)
            return out

        try:
            return list(await asyncio.gather(*(one(j) for j in jobs)))
        finally:
            bar.close()
            await scheduler.close()

    return np.stack(asyncio.run(go()))


def quantised(images: np.ndarray) -> np.ndarray:
    """Network-range images as the PNG a client gets, back in network range."""
    return (to_uint8(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def run(model_dir: Path, name: str, report: Path, figures: Path) -> dict[str, dict[str, float]]:
    model = load_model(model_dir / name, device="cpu", intra_op_threads=2)
    features = FeatureNet(model_dir / CLASSIFIER, 2)
    split = load_split()
    x, y = split.heldout_x, split.heldout_y
    idx = np.random.default_rng(EVAL_SEED).choice(len(split.train_x), N_EVAL, replace=False)
    _, reference = features(split.train_x[idx])
    _, held_feats = features(x)
    floor_q = quality(reference, held_feats)
    switched = other_labels(y)

    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, np.ndarray] = {}
    for s in SETTINGS:
        targets = switched if s.switch else y
        out = quantised(run_setting(model, x, targets, s))
        outputs[s.key] = out
        predicted, feats = features(out)
        q: Quality = quality(reference, feats, predicted, targets)
        row = {
            **q.as_dict(),
            "fid_over_floor": round(q.fid / floor_q.fid, 3),
            "strength": s.strength,
            "guidance": s.guidance,
        }
        if s.mask:
            kept = np.broadcast_to(half_mask(s.mask, model.card.image_shape) == 0, out.shape)
            change = np.abs(to_uint8(out).astype(int) - to_uint8(x).astype(int)).transpose(0, 3, 1, 2)[kept]
            row["max_change_outside_mask"] = int(change.max())
        if not s.switch:
            row["kept_input_label"] = row["label_accuracy"]
        results[s.key] = row

    figures.mkdir(parents=True, exist_ok=True)
    picks = [int(np.flatnonzero(y == d)[0]) for d in range(10)]
    strength_rows = [x[picks], *(outputs[k][picks] for k in ("keep-0.2", "keep-0.4", "keep-0.6", "switch-0.8-cfg3"))]
    _picture(figures / "img2img-strengths.png", strength_rows)
    masked = x[picks].copy()
    masked[:, :, :14] = -1.0
    _picture(figures / "inpainting.png", [x[picks], masked, outputs["inpaint-top"][picks]])

    shape = model.card.image_shape
    rows = []
    for a, b, label in ((1, 2, 3), (3, 4, 7)):
        initial = latents.slerp(latents.seed_noise(shape, a), latents.seed_noise(shape, b), 10)
        job = DiffusionJob(a, 10, STEPS, SAMPLER, label, initial=initial.reshape(10, *shape).astype(np.float32))
        rows.append(_sample(model, job))
    _picture(figures / "interpolation-diffusion.png", rows)

    path = model_dir / name / "model.json"
    card = json.loads(path.read_text())
    card.setdefault("quality", {}).update({f"edit-{k}": v for k, v in results.items()})
    path.write_text(json.dumps(card, indent=2) + "\n")
    report.write_text(markdown(name, results, floor_q, switched[picks], figures, report.parent))
    write_reports(model_dir / name)
    return results


def _sample(model: LoadedModel, job: DiffusionJob) -> np.ndarray:
    async def go() -> np.ndarray:
        scheduler = StepScheduler(model)
        try:
            return (await scheduler.submit(job)).images
        finally:
            await scheduler.close()

    return asyncio.run(go())


def _picture(path: Path, rows: list[np.ndarray], scale: int = 3) -> None:
    tiles = np.concatenate([to_uint8(r) for r in rows])
    picture = grid(tiles, ncols=len(rows[0]))[:, :, 0]
    Image.fromarray(picture).resize(
        (picture.shape[1] * scale, picture.shape[0] * scale), Image.Resampling.NEAREST
    ).save(path)


def markdown(
    name: str, r: dict[str, dict[str, float]], floor_q: Quality, switched: np.ndarray, figures: Path, docs: Path
) -> str:
    rel = figures.relative_to(docs) if figures.is_relative_to(docs) else figures

    def row(key: str, what: str) -> str:
        q = r[key]
        change = f"{q['max_change_outside_mask']:.0f}" if "max_change_outside_mask" in q else "-"
        return (
            f"| {key} | {what} | {q['label_accuracy']:.3f} | {q['fid']:.2f} | {q['fid_over_floor']:.2f}x | "
            f"{q['precision']:.3f} | {q['recall']:.3f} | {change} |"
        )

    return "\n".join(
        [
            f"# Editing with the {name} model: image-to-image and inpainting",
            "",
            "Made by `genserve eval-edits` (`training/edit_eval.py`): each of the 1,000 held-out digits edited once",
            f"(seed 1234 + its index), DPM-Solver++ {STEPS} steps, through the step scheduler the server runs (the",
            "`/img2img` and `/inpaint` routes); outputs rounded to 8 bits as the PNG a client gets. Label accuracy: the",
            "evaluation classifier reads the requested label. FID against 1,000 training digits; the floor is the",
            f"held-out digits themselves against the same training digits: FID {floor_q.fid:.2f} (a perfect copy of",
            "the inputs scores 1.00x). Switching asks for a seeded random label other than the digit's.",
            "",
            "| setting | what | label accuracy | FID | FID / floor | precision | recall | max change outside mask (0-255) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            row("keep-0.2", "img2img, strength 0.2, own label"),
            row("keep-0.4", "img2img, strength 0.4, own label"),
            row("keep-0.6", "img2img, strength 0.6, own label"),
            row("switch-0.6", "img2img, strength 0.6, new label"),
            row("switch-0.8", "img2img, strength 0.8, new label"),
            row("switch-0.6-cfg3", "the same at guidance 3"),
            row("switch-0.8-cfg3", "the same at guidance 3"),
            row("inpaint-top", "top half regenerated, own label"),
            row("inpaint-left", "left half regenerated, own label"),
            "",
            "Image-to-image: one held-out digit of each label (top row), then strengths 0.2, 0.4 and 0.6 with its",
            f"own label, and strength 0.8 at guidance 3 towards a new label ({', '.join(str(int(v)) for v in switched)}):",
            "",
            f"![img2img at several strengths]({rel}/img2img-strengths.png)",
            "",
            "Inpainting: the digit, its top half removed (what the model is not shown), and the result:",
            "",
            f"![inpainting]({rel}/inpainting.png)",
            "",
            "Interpolation (`POST /v1/models/diffusion/interpolate`): frames start from the spherical interpolation",
            f"between the starting noise of seeds 1 -> 2 (label 3) and 3 -> 4 (label 7), DPM-Solver++ {STEPS} steps;",
            "the first and last frames are those seeds' plain samples:",
            "",
            f"![interpolation between seeds]({rel}/interpolation-diffusion.png)",
            "",
        ]
    )
