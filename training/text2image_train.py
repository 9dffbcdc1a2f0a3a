"""A colour text-to-image model trained here on the emoji drawings, in the Stable Diffusion layout.

Pixel-space diffusion at 32x32 RGB (no VAE: the layout allows a folder without `vae_decoder`,
and genserve serves it through the same path): diffusers' `UNet2DConditionModel` with
cross-attention on the text, and a small transformers `CLIPTextModel` trained jointly from
scratch on a byte-level BPE vocabulary learnt from the training captions (no pretrained weights
exist here). The captions are each emoji's name and short names, with and without its category
as a prefix (`training.emoji_data.captions`); one in ten is dropped to the empty prompt so
classifier-free guidance has its unconditional side. v-prediction on the cosine schedule with
Min-SNR-5 weighting (what converged fastest for the digits, docs/training.md), EMA weights.

`genserve train text2image` trains (resumable, safetensors checkpoints); `export_text2image`
writes `exported/emoji-text/` in the standard layout with genserve's card.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.clip_tokenizer import ClipTokenizer
from training.emoji_data import DATA, EmojiSplit, captions, is_heldout, load_split, to_unit
from training.sd_layout import export_pipeline, learn_bpe, write_tokenizer
from training.train import TrainConfig, Trainer, ema_update

SIZE = 32
MAX_LENGTH = 24  # tokens per caption, with the start and end tokens: the longest name fits
MERGES = 2000
CAPTION_DROP = 0.1
MIN_SNR = 5.0
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}


@dataclass(frozen=True)
class Arch:
    """Sized for this 2-core machine (docs/training.md has the timings): the UNet works on 2x2
    patches (16x16x12 for a 32x32 RGB image) and attends to the text only at its two lowest
    resolutions and in the middle, where attention is cheap."""

    text_hidden: int = 96
    text_layers: int = 3
    text_heads: int = 4
    blocks: tuple[int, ...] = (64, 96, 128)
    unet_heads: int = 4  # diffusers' `attention_head_dim`, which (as in Stable Diffusion 1.x) counts heads
    cross_levels: int = 2  # how many of the lowest resolutions have cross-attention blocks
    patch: int = 2  # pixels per side folded into channels before the UNet (pixel unshuffle)


class PatchedUNet(torch.nn.Module):
    """A diffusers UNet on `patch` x `patch` pixel patches, called like the UNet it wraps: the
    exported graph takes and returns whole images, so the folder stays a standard pixel-space
    pipeline. `config` describes the image-space interface (channels, sample size) that
    `export_pipeline` and the card read, plus `patch_size`."""

    def __init__(self, unet: Any, patch: int) -> None:
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        self.model, self.patch = unet, patch
        inner = unet.config
        self.config = FrozenDict(
            {
                **inner,
                "in_channels": inner.in_channels // patch**2,
                "out_channels": inner.out_channels // patch**2,
                "sample_size": inner.sample_size * patch,
                "patch_size": patch,
            }
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor, return_dict: bool = False
    ) -> tuple[torch.Tensor]:
        x = torch.nn.functional.pixel_unshuffle(sample, self.patch) if self.patch > 1 else sample
        out = self.model(x, timestep, states, return_dict=False)[0]
        return (torch.nn.functional.pixel_shuffle(out, self.patch) if self.patch > 1 else out,)


def tokenizer_folder(checkpoint_dir: Path, run: str) -> Path:
    return checkpoint_dir / f"{run}-tokenizer"


def tokenizer_for(split: EmojiSplit, folder: Path, resume_from: Path | None = None) -> ClipTokenizer:
    """The run's tokenizer: learnt from the training captions once, then read back (so a resumed
    run and the export use the very same vocabulary); a run starting from committed weights
    (`--resume-from weights/text2image.safetensors`) takes the tokenizer committed beside them."""
    beside = resume_from.with_name(f"{resume_from.stem}-tokenizer") if resume_from is not None else None
    if not (folder / "vocab.json").is_file() and beside is not None and (beside / "vocab.json").is_file():
        shutil.copytree(beside, folder, dirs_exist_ok=True)
    if not (folder / "vocab.json").is_file():
        texts = [t for e in split.emoji if not is_heldout(e) for t in captions(e)]
        vocab, merges = learn_bpe(texts, MERGES)
        write_tokenizer(folder, vocab, merges, MAX_LENGTH)
    return ClipTokenizer.from_folder(folder)


def copy_tokenizer(cfg: TrainConfig, weights: Path) -> None:
    """The run's tokenizer beside weights written with `--weights-out` (where export and
    `--resume-from` look for it)."""
    shutil.copytree(tokenizer_folder(cfg.checkpoint_dir, cfg.name), weights.with_name(f"{weights.stem}-tokenizer"),
                    dirs_exist_ok=True)  # fmt: skip


def make_models(vocab_size: int, arch: Arch, bos: int, eos: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
            num_attention_heads=arch.text_heads, num_hidden_layers=arch.text_layers, max_position_embeddings=MAX_LENGTH,
            bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        )
    )  # fmt: skip
    n, cross, p = len(arch.blocks), arch.cross_levels, arch.patch
    unet = UNet2DConditionModel(
        sample_size=SIZE // p, in_channels=3 * p * p, out_channels=3 * p * p, layers_per_block=1,
        block_out_channels=arch.blocks,
        down_block_types=("DownBlock2D",) * (n - cross) + ("CrossAttnDownBlock2D",) * cross,
        up_block_types=("CrossAttnUpBlock2D",) * cross + ("UpBlock2D",) * (n - cross),
        cross_attention_dim=arch.text_hidden, attention_head_dim=arch.unet_heads, norm_num_groups=32,
    )  # fmt: skip
    return text, PatchedUNet(unet, p)


def cosine_alphas_cumprod() -> torch.Tensor:
    from service.pipeline_scheduler import PipelineSchedule

    return torch.from_numpy(PipelineSchedule.model_validate(SCHEDULER).alphas_cumprod).float()


def caption_table(split: EmojiSplit, tokenizer: ClipTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every emoji's captions as ids (emoji, captions, L), padded by repeating, and how many each has."""
    per = [tokenizer(captions(e))[0] for e in split.emoji]
    most = max(len(p) for p in per)
    table = np.stack([np.concatenate([p] * (most // len(p) + 1))[:most] for p in per])
    return torch.from_numpy(table.astype(np.int64)), torch.tensor([len(p) for p in per])


def train_text2image(cfg: TrainConfig, arch: Arch | None = None, split: EmojiSplit | None = None) -> Trainer:
    """Trains (or resumes) the run `cfg.name` on `split` (default: the emoji drawings at 32 px)."""
    arch = arch or Arch()
    split = split or load_split(SIZE)
    tokenizer = tokenizer_for(split, tokenizer_folder(cfg.checkpoint_dir, cfg.name), cfg.resume_from)
    table, counts = caption_table(split, tokenizer)
    empty = torch.from_numpy(tokenizer([""])[0][0].astype(np.int64))
    images, emoji_of, _ = split.part(heldout=False)
    x = torch.from_numpy(to_unit(images))
    y = torch.from_numpy(emoji_of)
    torch.manual_seed(cfg.seed)
    text, unet = make_models(len(tokenizer.vocab), arch, tokenizer.bos_id, tokenizer.eos_id)
    ema_text, ema_unet = make_models(len(tokenizer.vocab), arch, tokenizer.bos_id, tokenizer.eos_id)
    ema_text.load_state_dict(text.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    params = [*text.parameters(), *unet.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    abar = cosine_alphas_cumprod()
    trainer = Trainer(
        cfg, {"text": text, "unet": unet, "ema_text": ema_text, "ema_unet": ema_unet}, {"opt": opt}, weights=None
    )
    trainer.extra_meta = {"arch": vars(arch) | {"blocks": list(arch.blocks)}, "data": DATA, "size": SIZE}

    def step(x0: torch.Tensor, eid: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        pick = (torch.rand(len(eid), generator=gen) * counts[eid]).long()
        ids = table[eid, pick]
        drop = torch.rand(len(eid), generator=gen) < CAPTION_DROP
        ids[drop] = empty
        t = torch.randint(0, len(abar), (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        xt = alpha * x0 + sigma * eps
        states = text(input_ids=ids).last_hidden_state
        out = unet(xt, t, states, return_dict=False)[0]
        target = alpha * eps - sigma * x0
        snr = (abar[t] / (1 - abar[t])).clamp(min=1e-8)
        weight = snr.clamp(max=MIN_SNR) / (snr + 1)  # Min-SNR-gamma in v units
        loss = ((out - target).pow(2).mean(dim=(1, 2, 3)) * weight).mean()
        warm = min(1.0, (trainer.step + 1) / 500)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema_unet, unet, trainer.step, cfg.recipe.ema_decay)
        ema_update(ema_text, text, trainer.step, cfg.recipe.ema_decay)
        return {"loss": float(loss.detach())}

    trainer.run(step, x, y)
    return trainer


def export_text2image(checkpoint: Path, out: Path, guidance: float = 3.0) -> dict[str, float]:
    """The EMA weights of a run as a Stable-Diffusion-layout folder with genserve's card."""
    from training import checkpoint as ckpt

    meta = ckpt.read_meta(checkpoint)
    arch = Arch(**{**meta["arch"], "blocks": tuple(meta["arch"]["blocks"])})
    tokenizer = ClipTokenizer.from_folder(checkpoint.with_name(f"{checkpoint.stem}-tokenizer"))
    text, unet = make_models(len(tokenizer.vocab), arch, tokenizer.bos_id, tokenizer.eos_id)
    tensors = ckpt.load_tensors(checkpoint)
    text.load_state_dict(ckpt.module_state(tensors, "ema_text"))
    unet.load_state_dict(ckpt.module_state(tensors, "ema_unet"))
    vocab, merges = tokenizer.vocab, list(tokenizer.ranks)  # ranks keep merges.txt's order
    provenance: dict[str, Any] = {
        "data": DATA,
        "training_steps": int(meta["step"]),
        "command": f"genserve train text2image --steps {int(meta['step'])} && genserve export text2image && "
        "genserve eval-emoji",
        "notes": "pixel-space diffusion, 32x32 RGB (the UNet on 2x2 patches); text encoder trained from scratch with "
        "the UNet. Weights: weights/text2image.safetensors (raw and EMA, tokenizer beside it; go on training with "
        "--resume-from).",
    }
    return export_pipeline(
        out, text_encoder=text, unet=unet, vae=None, vocab=vocab, merges=merges,
        scheduler_config=SCHEDULER, provenance=provenance, max_length=MAX_LENGTH, default_guidance=guidance,
        description="emoji from a text prompt (names like 'red apple', 'dog face'), 32x32 RGB, trained here",
    )  # fmt: skip
