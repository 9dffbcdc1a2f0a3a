"""Stable-Diffusion-layout ONNX pipelines: build, export, and a tiny reference.

The layout is the one diffusers' and optimum's exporters write for a text-to-image pipeline:

    model_index.json            which class each part is (read by diffusers' from_pretrained)
    text_encoder/model.onnx     input_ids (B, L) int32 -> last_hidden_state (B, L, D)
    unet/model.onnx             sample (B, C, h, w), timestep (B,) float, encoder_hidden_states
                                (B, L, D) -> out_sample (B, C, h, w)
    vae_decoder/model.onnx      latent_sample (B, C, h, w) -> sample (B, 3, H, W) in [-1, 1]
    tokenizer/                  vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json

Each part's folder also gets the diffusers/transformers `config.json` of the network it came
from, as the exporters write them. `tiny_reference` builds a random-weight pipeline of this
shape with a vocabulary learnt here, which the parity test runs through both genserve and
diffusers' own `OnnxStableDiffusionPipeline`.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.clip_tokenizer import bytes_to_unicode, pre_tokenize
from training.export import export_onnx

PARITY_ATOL = 1e-4
SPECIALS = ("<|startoftext|>", "<|endoftext|>")

# Prompts the tiny vocabulary is learnt from (and the parity test draws from).
TINY_CORPUS = (
    "a red apple on a table",
    "grinning face with big eyes",
    "dog face",
    "a teddy bear on a skateboard in times square",
    "an astronaut riding a horse, photorealistic",
    "smiling cat face with heart-shaped eyes",
    "a bowl of ramen, 4k, high detail",
    "green heart",
    "sun behind large cloud",
    "the quick brown fox jumps over the lazy dog!",
)


def learn_bpe(corpus: tuple[str, ...] | list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE vocabulary learnt from `corpus`: the 256 byte symbols, each
    also as a word end (`</w>`), then up to `num_merges` merges of the most frequent pair, then
    the start and end tokens, in that id order (as CLIP's own vocabulary)."""
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    words: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        for word in pre_tokenize(text):
            symbols = (*tuple(word[:-1]), word[-1] + "</w>")
            words[symbols] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        vocab_list.append(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab_list.extend(SPECIALS)
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int) -> None:
    """The tokenizer folder as CLIP's slow tokenizer files: vocab.json, merges.txt and the configs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "unk_token": SPECIALS[1], "pad_token": SPECIALS[1]}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


class _TextEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids.long()).last_hidden_state  # type: ignore[no-any-return]


class _Unet(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # type: ignore[no-any-return]


class _VaeDecoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent_sample, return_dict=False)[0]  # type: ignore[no-any-return]


def _check(path: Path, module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime and torch on the same inputs."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        want = module(*[torch.from_numpy(v) for v in feeds.values()]).numpy()
    return float(np.abs(got - want).max())


def export_pipeline(
    out: Path,
    *,
    text_encoder: torch.nn.Module,
    unet: torch.nn.Module,
    vae: torch.nn.Module | None,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    scheduler_config: dict[str, Any],
    provenance: dict[str, Any],
    description: str = "",
    max_length: int = 77,
    default_guidance: float = 7.5,
) -> dict[str, float]:
    """Writes the whole layout to `out`, with genserve's card (`model.json`, named after the
    folder); without `vae`, a pixel-space pipeline (no `vae_decoder/`). Returns each part's
    ONNX-vs-torch max abs difference (checked at batch 1 and 3) so a caller can refuse a bad
    export."""
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out / "tokenizer", vocab, merges, max_length)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    te, un = _TextEncoder(text_encoder), _Unet(unet)
    vd = _VaeDecoder(vae) if vae is not None else None
    hidden = int(unet.config.cross_attention_dim)  # type: ignore[union-attr]
    channels, size = int(unet.config.in_channels), int(unet.config.sample_size)  # type: ignore[union-attr]
    ids = torch.zeros(2, max_length, dtype=torch.int32)
    export_onnx(
        te,
        (ids,),
        out / "text_encoder" / "model.onnx",
        ["input_ids"],
        ["last_hidden_state"],
        {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}},
    )
    sample, t, states = (
        torch.randn(2, channels, size, size),
        torch.tensor([999.0, 10.0]),
        torch.randn(2, max_length, hidden),
    )
    export_onnx(
        un,
        (sample, t, states),
        out / "unet" / "model.onnx",
        ["sample", "timestep", "encoder_hidden_states"],
        ["out_sample"],
        {
            "sample": {0: "batch", 2: "height", 3: "width"},
            "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
            "out_sample": {0: "batch", 2: "height", 3: "width"},
        },
    )
    parts: list[tuple[str, torch.nn.Module]] = [("text_encoder", text_encoder), ("unet", unet)]
    if vae is not None and vd is not None:
        export_onnx(
            vd,
            (torch.randn(2, channels, size, size),),
            out / "vae_decoder" / "model.onnx",
            ["latent_sample"],
            ["sample"],
            {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}},
        )
        parts.append(("vae_decoder", vae))
    for part, module in parts:
        config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)  # type: ignore[union-attr]
        (out / part / "config.json").write_text(json.dumps(config, indent=2, default=str))
    index = {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"] if vae is not None else [None, None],
        "vae_encoder": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler_config.get("_class_name", "PNDMScheduler")],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1  # type: ignore[union-attr]
    side = size * vae_scale
    card = {
        "name": out.name,
        "family": "text2image",
        "description": description,
        "image": {"channels": 3, "height": side, "width": side, "value_range": [0.0, 1.0]},
        "labels": [],
        "null_label": None,
        "onnx": {
            "file": "unet/model.onnx",
            "inputs": {"sample": "sample", "timestep": "timestep", "encoder_hidden_states": "encoder_hidden_states"},
            "output": "out_sample",
        },
        "text": {
            # a patched UNet (training.text2image_train.PatchedUNet) folds patch x patch pixels first
            "size_multiple": vae_scale
            * getattr(unet.config, "patch_size", 1)  # type: ignore[union-attr]
            * 2 ** (len(unet.config.block_out_channels) - 1),  # type: ignore[union-attr]
            "max_side": 2 * side,
            "default_guidance": default_guidance,
        },
        "provenance": provenance,
    }
    (out / "model.json").write_text(json.dumps(card, indent=2))
    rng = np.random.default_rng(0)
    diffs = {}
    for b in (1, 3):
        ids_np = rng.integers(0, len(vocab), (b, max_length)).astype(np.int32)
        diffs[f"text_encoder@{b}"] = _check(out / "text_encoder" / "model.onnx", te, {"input_ids": ids_np})
        diffs[f"unet@{b}"] = _check(
            out / "unet" / "model.onnx",
            un,
            {
                "sample": rng.standard_normal((b, channels, size, size)).astype(np.float32),
                "timestep": rng.uniform(0, 999, b).astype(np.float32),
                "encoder_hidden_states": rng.standard_normal((b, max_length, hidden)).astype(np.float32),
            },
        )
        if vd is not None:
            diffs[f"vae_decoder@{b}"] = _check(
                out / "vae_decoder" / "model.onnx",
                vd,
                {"latent_sample": rng.standard_normal((b, channels, size, size)).astype(np.float32)},
            )
    return diffs


def tiny_reference(out: Path, seed: int = 0, hidden_size: int = 32) -> dict[str, float]:
    """A Stable-Diffusion-shaped pipeline with random weights and a 64x64 output (8x8 latents,
    the VAE's 8x scale as in Stable Diffusion), a CLIP text encoder on a vocabulary learnt from
    `TINY_CORPUS`, and Stable Diffusion's own scheduler settings. Built offline in seconds.
    `hidden_size` other than the UNet's 32 makes a text encoder that does not fit it (for tests)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, merges = learn_bpe(TINY_CORPUS, 200)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=vocab[SPECIALS[0]],
            eos_token_id=vocab[SPECIALS[1]],
            pad_token_id=vocab[SPECIALS[1]],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        sample_size=64,
    )
    # Random init leaves the nets near zero output; scale so every part moves the images.
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(1.5)
    scheduler_config = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.42.1",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
        "prediction_type": "epsilon",
        "trained_betas": None,
    }
    return export_pipeline(
        out,
        description="random weights: the parity reference for the Stable Diffusion layout, not a model",
        provenance={
            "data": "none: random weights",
            "training_steps": 0,
            "command": "python -c 'from training.sd_layout import tiny_reference; tiny_reference(Path(OUT))'",
        },
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        vocab=vocab,
        merges=merges,
        scheduler_config=scheduler_config,
    )


# (prompt, negative prompt, guidance, sampler, steps): the parity cases, run together through one
# genserve scheduler so every UNet call mixes prompts, guidance (one or two rows per lane),
# samplers and step counts.
PARITY_CASES: tuple[tuple[str, str, float, str, int], ...] = (
    ("a red apple on a table", "", 7.5, "ddim", 10),
    ("grinning face with big eyes", "dog face", 5.0, "ddim", 4),
    ("the quick brown fox jumps over the lazy dog!", "", 1.0, "ddim", 25),
    ("dog face", "green heart", 3.0, "dpmpp_2m", 12),
    ("sun behind large cloud", "", 1.0, "dpmpp_2m", 5),
    ("a teddy bear on a skateboard in times square", "", 7.5, "dpmpp_2m", 20),
)
PARITY_SEED = 40


def reference_images(
    folder: Path, prompt: str, negative: str, guidance: float, sampler: str, steps: int, latents: np.ndarray
) -> np.ndarray:
    """diffusers' own OnnxStableDiffusionPipeline on `folder`, from `latents`: images (n, C, H, W) in [0, 1]."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, OnnxStableDiffusionPipeline

    pipe = OnnxStableDiffusionPipeline.from_pretrained(
        str(folder),
        provider="CPUExecutionProvider",
        vae_encoder=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    cls = DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    n, (_, h, w) = len(latents), latents.shape[1:]
    out = pipe(
        prompt=[prompt] * n,
        negative_prompt=[negative] * n if negative else None,
        height=8 * h,
        width=8 * w,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents,
        output_type="np",
    )
    return np.asarray(out.images).transpose(0, 3, 1, 2)


def parity(folder: Path, n: int = 2) -> tuple[list[dict[str, Any]], int]:
    """Every `PARITY_CASES` request through genserve at once and through diffusers one by one:
    a row per case with its max abs pixel difference (images in [0, 1]), and the most requests
    that shared one UNet call."""
    import asyncio

    from service.jobs import DiffusionJob
    from service.noise import image_rng
    from service.stats import StepStats
    from service.text2image import TextToImage, load_pipeline

    pipeline = load_pipeline(folder, device="cpu")
    steps: list[StepStats] = []
    jobs = [
        DiffusionJob(seed=PARITY_SEED + k, n=n, steps=s, sampler=smp, guidance=g, prompt=p, negative_prompt=neg)  # type: ignore[arg-type]
        for k, (p, neg, g, smp, s) in enumerate(PARITY_CASES)
    ]

    async def ours() -> list[np.ndarray]:
        service = TextToImage(pipeline, on_step=steps.append)
        try:
            return [r.images for r in await asyncio.gather(*(service.generate(j) for j in jobs))]
        finally:
            await service.close()

    got = asyncio.run(ours())
    rows = []
    for k, (case, job) in enumerate(zip(PARITY_CASES, jobs, strict=True)):
        shape = pipeline.latent_shape(None)
        latents = np.stack([image_rng(job.seed, i).standard_normal(shape).astype(np.float32) for i in range(n)])
        want = reference_images(folder, *case, latents)
        if got[k].shape != want.shape:
            raise AssertionError(f"case {k}: genserve made {got[k].shape}, diffusers {want.shape}")
        prompt, negative, guidance, sampler, count = case
        rows.append(
            {
                "prompt": prompt,
                "negative_prompt": negative,
                "guidance": guidance,
                "sampler": sampler,
                "steps": count,
                "max_abs_diff": float(np.abs(got[k] - want).max()),
                "images": got[k],
            }
        )
    return rows, max(s.requests for s in steps)


def write_parity_report(report: Path) -> list[dict[str, Any]]:
    """Builds the tiny reference in a temporary folder, runs `parity` and writes the figures."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-sd"
        export = tiny_reference(folder)
        rows, shared = parity(folder)
    worst = {s: max(r["max_abs_diff"] for r in rows if r["sampler"] == s) for s in ("ddim", "dpmpp_2m")}
    lines = [
        "# Text-to-image: parity with diffusers' ONNX pipeline",
        "",
        "Reproduce: `.venv/bin/genserve sd-parity` (builds the tiny reference offline and runs both, in seconds).",
        "",
        "A Stable-Diffusion-shaped pipeline with random weights — diffusers' `UNet2DConditionModel` (cross-attention)",
        "and `AutoencoderKL`, transformers' `CLIPTextModel` on a byte-level BPE vocabulary learnt here, Stable",
        "Diffusion 1.x's scheduler settings (scaled-linear betas, `steps_offset` 1) — exported to the standard ONNX",
        "folder layout by `training/sd_layout.py`. Its images through genserve (the six requests below submitted",
        f"together, so UNet calls mixed up to {shared} requests, their prompts, samplers, step counts and guidance)",
        "are compared with diffusers' own `OnnxStableDiffusionPipeline`, one request at a time, from the same",
        f"starting latents ({len(rows[0]['images'])} images per request, 64x64 RGB, pixel values in [0, 1]).",
        "",
        f"Worst difference per scheduler: DDIM {worst['ddim']:.1e}, DPM-Solver++(2M) {worst['dpmpp_2m']:.1e}"
        f" (the test's bound: {PARITY_ATOL:g}).",
        "",
        "| prompt | negative prompt | guidance | sampler | steps | max abs difference |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt']} | {r['negative_prompt'] or '—'} | {r['guidance']:g} | {r['sampler']} | {r['steps']} "
            f"| {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        "ONNX export against torch, per part (max abs difference at batch 1 and 3): "
        + ", ".join(f"{k} {v:.1e}" for k, v in export.items())
        + ".",
        "",
    ]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    return rows
