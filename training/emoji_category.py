"""A class-conditional colour model: the emoji drawings by category, on the label path.

The digit diffusion recipe (`training.train`: v-prediction on the cosine schedule, Min-SNR-5
weighting, EMA weights, 10% label dropout for classifier-free guidance) applied to the emoji
drawings at 32x32 RGB with the emoji's category (nine: smileys & emotion, ..., flags) as the
label. It is exported as an ordinary `diffusion` model folder (`exported/emoji-category`): the
same card, graph inputs, samplers and step-level batching as the digit model, with 3 channels.
`genserve train emoji-category`, `genserve export emoji-category`, `genserve eval-emoji
emoji-category` (training.emoji_eval measures it with the emoji classifier).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from training import checkpoint, nets
from training.emoji_data import CATEGORIES, DATA, EmojiSplit, load_split, to_unit
from training.train import DiffusionRecipe, TrainConfig, Trainer, denoiser_update, diffusion_loss

SIZE = 32
LABELS = [c.lower() for c in CATEGORIES]
NULL_LABEL = len(LABELS)
RECIPE = DiffusionRecipe(prediction="v_prediction", schedule="cosine", min_snr=5.0, arch="small")


def make_net() -> nets.UNet:
    return nets.UNet(**nets.UNET_ARCHS[RECIPE.arch], channels=3, labels=len(LABELS))  # type: ignore[arg-type]


def train_emoji_category(cfg: TrainConfig, split: EmojiSplit | None = None) -> Trainer:
    """Trains (or resumes) `cfg.name` on the training emoji's drawings, labelled by category."""
    split = split or load_split(SIZE)
    images, emoji_of, _ = split.part(heldout=False)
    x = torch.from_numpy(to_unit(images))
    y = torch.from_numpy(split.category_of(emoji_of))
    torch.manual_seed(cfg.seed)
    model = make_net()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    trainer = Trainer(cfg, {"model": model, "ema": ema}, {"opt": opt}, weights="ema")
    trainer.extra_meta = {"recipe": vars(RECIPE), "data": DATA, "size": SIZE, "labels": LABELS}
    abar = RECIPE.alphas_cumprod().to(cfg.device)

    def step(x0: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        loss = diffusion_loss(model, RECIPE, abar, x0, labels, gen, NULL_LABEL)
        denoiser_update(opt, model, ema, loss, trainer.lr(), trainer.step, RECIPE.ema_decay)
        return {"loss": float(loss.detach())}

    trainer.run(step, x, y)
    return trainer


def export_emoji_category(checkpoint_path: Path, folder: Path) -> float:
    """The run's EMA weights as a `diffusion` model folder with its card; ORT-vs-torch error."""
    from training.export import _card, _checked_export, _write_card

    meta = checkpoint.read_meta(checkpoint_path)
    net = make_net()
    net.load_state_dict(checkpoint.module_state(checkpoint.load_tensors(checkpoint_path), "ema"))

    def inputs(batch: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g).float()
        return x, t, torch.randint(0, NULL_LABEL + 1, (batch,), generator=g)

    err = _checked_export(net, inputs, folder / "model.onnx", ["x", "t", "label"], ["out"])
    steps = int(meta["step"])
    card: dict[str, Any] = _card(
        folder.name,
        "diffusion",
        "Emoji by category, 32x32 RGB: class-conditional diffusion UNet (v-prediction, cosine noise schedule, "
        "Min-SNR-5; EMA weights, 10% label dropout for classifier-free guidance), trained here.",
        steps,
        schedule=RECIPE.noise_schedule(),
        onnx={"file": "model.onnx", "inputs": {"sample": "x", "timestep": "t", "label": "label"}, "output": "out"},
    )
    card["image"] = {"channels": 3, "height": SIZE, "width": SIZE, "value_range": [-1.0, 1.0]}
    card["labels"], card["null_label"] = LABELS, NULL_LABEL
    card["provenance"] = {
        "data": DATA,
        "training_steps": steps,
        "command": f"genserve train emoji-category && genserve export emoji-category && genserve eval-emoji "
        f"{folder.name}",
        "notes": "the digit diffusion recipe at 32x32 RGB; label: the emoji's category",
    }
    _write_card(folder, card)
    return err
