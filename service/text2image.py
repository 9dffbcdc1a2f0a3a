"""Text-to-image pipelines in the Stable Diffusion ONNX folder layout, served step-level batched.

A folder as diffusers' and optimum's exporters write it (see `training/sd_layout.py`):
`model_index.json`, `text_encoder/model.onnx`, `unet/model.onnx`, optional
`vae_decoder/model.onnx` (latent diffusion; without it the UNet works in pixel space),
`tokenizer/` and `scheduler/scheduler_config.json`. `load_pipeline` checks every part and how
they fit together, failing with a message that names the file.

Serving a request (`TextToImage.generate`): its prompt and negative prompt are encoded once, on
the replica's compute thread; its images become lanes of the replica's `StepScheduler`, each
lane carrying its own text embeddings, so requests with different prompts, step counts,
samplers and guidance share every UNet call; when the request's last lane finishes, its latents
are decoded in one batched VAE call. The starting latents come from (seed, image index), as
every genserve model, so a seed gives the same pixels alone or batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.clip_tokenizer import ClipTokenizer
from service.errors import ModelLoadError, read_json_object
from service.jobs import DiffusionJob
from service.pipeline_scheduler import PipelineSchedule, load_schedule
from service.runtime import Device, OnnxModel
from service.samplers import SamplerPlan
from service.scheduler import StepScheduler
from service.stats import RequestStats

# What diffusers' OnnxStableDiffusionPipeline assumes when the VAE's config does not say.
DEFAULT_SCALING_FACTOR = 0.18215
DEFAULT_VAE_SCALE = 8
PLAN_CACHE = 256  # sampler plans a replica keeps
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")


def is_pipeline_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.is_file() else {}


@dataclass
class TextPipeline:
    """A loaded pipeline folder: its parts and the shapes they agree on."""

    name: str
    folder: Path
    tokenizer: ClipTokenizer
    text_encoder: OnnxModel
    unet: OnnxModel
    vae_decoder: OnnxModel | None
    schedule: PipelineSchedule
    channels: int  # the UNet's sample channels (latent channels, or image channels without a VAE)
    default_size: tuple[int, int]  # image (height, width) when a request names none
    size_multiple: int  # image sides must be multiples of this
    vae_scale: int  # image pixels per latent pixel (1 without a VAE)
    scaling_factor: float
    hidden_size: int | None

    def latent_shape(self, size: tuple[int, int] | None) -> tuple[int, int, int]:
        """The UNet sample shape for an image of `size` (height, width); ValueError if not allowed."""
        h, w = size or self.default_size
        m = self.size_multiple
        if h % m or w % m or not (m <= h <= 4096 and m <= w <= 4096):
            raise ValueError(f"size {h}x{w} is not allowed: height and width must be multiples of {m}, up to 4096")
        return (self.channels, h // self.vae_scale, w // self.vae_scale)

    def encode(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), L, D) text embeddings, one text-encoder call."""
        ids, _ = self.tokenizer(prompts)
        name = next(iter(self.text_encoder.inputs))
        return self.text_encoder.run(self.text_encoder.outputs[0], {name: ids}).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images (n, C, H, W) in [0, 1] from final latents, one batched decoder call."""
        if self.vae_decoder is None:
            images = latents
        else:
            name = next(iter(self.vae_decoder.inputs))
            images = self.vae_decoder.run(self.vae_decoder.outputs[0], {name: latents / self.scaling_factor})
        return np.clip(images.astype(np.float32) / 2 + 0.5, 0.0, 1.0)


def load_pipeline(folder: Path, *, device: Device = "auto", intra_op_threads: int = 1) -> TextPipeline:
    """Loads and checks a pipeline folder; every failure names the file at fault."""
    index = read_json_object(folder / "model_index.json")
    for part in ("text_encoder", "unet", "tokenizer", "scheduler"):
        if not index.get(part) or index[part][0] is None:
            raise ModelLoadError(
                f"{folder / 'model_index.json'}: no {part!r} entry; a text-to-image pipeline needs one"
            )
    has_vae = bool(index.get("vae_decoder")) and index["vae_decoder"][0] is not None
    tokenizer = ClipTokenizer.from_folder(folder / "tokenizer")
    schedule = load_schedule(folder / "scheduler" / "scheduler_config.json")

    def onnx(part: str) -> OnnxModel:
        # One thread each: the parts run one at a time on the replica's compute thread.
        return OnnxModel(folder / part / "model.onnx", device=device, intra_op_threads=intra_op_threads, slices=False)

    text_encoder, unet = onnx("text_encoder"), onnx("unet")
    vae_decoder = onnx("vae_decoder") if has_vae else None

    te_inputs = list(text_encoder.inputs.values())
    if len(te_inputs) != 1 or te_inputs[0].dtype not in (np.int32, np.int64):
        raise ModelLoadError(
            f"{text_encoder.path}: expected one integer input (input_ids), got {[i.name for i in te_inputs]}"
        )
    missing = [n for n in UNET_INPUTS if n not in unet.inputs]
    if missing:
        raise ModelLoadError(
            f"{unet.path}: inputs {missing} are missing (it has {sorted(unet.inputs)}); want {list(UNET_INPUTS)}"
        )
    ids = np.zeros((1, tokenizer.max_length), np.int32)
    hidden = text_encoder.run(text_encoder.outputs[0], {te_inputs[0].name: ids})
    want_hidden = unet.inputs["encoder_hidden_states"].shape[-1]
    if want_hidden is not None and hidden.shape[-1] != want_hidden:
        raise ModelLoadError(
            f"{unet.path}: encoder_hidden_states width {want_hidden} does not match "
            f"{text_encoder.path}'s output width {hidden.shape[-1]}"
        )
    unet_config = _optional_json(folder / "unet" / "config.json")
    channels = unet.inputs["sample"].shape[1] or unet_config.get("in_channels")
    if not isinstance(channels, int):
        raise ModelLoadError(f"{unet.path}: sample channels are dynamic and unet/config.json does not give in_channels")
    vae_scale, scaling = 1, 1.0
    if vae_decoder is not None:
        vae_config = _optional_json(folder / "vae_decoder" / "config.json")
        blocks = vae_config.get("block_out_channels")
        vae_scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else DEFAULT_VAE_SCALE
        scaling = float(vae_config.get("scaling_factor", DEFAULT_SCALING_FACTOR))
        latent = next(iter(vae_decoder.inputs.values()))
        if latent.shape[1] is not None and latent.shape[1] != channels:
            raise ModelLoadError(
                f"{vae_decoder.path}: takes {latent.shape[1]}-channel latents, the UNet makes {channels}"
            )
    unet_blocks = unet_config.get("block_out_channels")
    unet_multiple = 2 ** (len(unet_blocks) - 1) if isinstance(unet_blocks, list) and unet_blocks else 8
    sample_size = unet_config.get("sample_size") or unet.inputs["sample"].shape[2] or 64
    if isinstance(sample_size, list):
        sample_size = sample_size[0]
    side = int(sample_size) * vae_scale
    return TextPipeline(
        name=folder.name,
        folder=folder,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae_decoder=vae_decoder,
        schedule=schedule,
        channels=channels,
        default_size=(side, side),
        size_multiple=unet_multiple * vae_scale,
        vae_scale=vae_scale,
        scaling_factor=scaling,
        hidden_size=int(hidden.shape[-1]),
    )


class TextDenoiser:
    """A pipeline's UNet as the step scheduler's `Denoiser`: each lane's conditioning is its
    request's (prompt, negative prompt) embeddings, stacked per row."""

    heavy_condition: bool = True

    def __init__(self, pipeline: TextPipeline) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.prediction_type: str = pipeline.schedule.prediction_type
        self._plans: dict[tuple[str, int, float], SamplerPlan] = {}
        # An export whose timestep input is fixed at one value per call (shape (1,)) runs one
        # call per distinct timestep; the usual export takes one per row.
        self._one_timestep = pipeline.unet.inputs["timestep"].shape in ((1,), ())

    def lane_shape(self, job: DiffusionJob) -> tuple[int, ...]:
        return self.pipeline.latent_shape(job.size)

    def plan(self, job: DiffusionJob) -> SamplerPlan:
        if job.edit is not None:
            raise ValueError("image-to-image and inpainting are not available for text-to-image pipelines yet")
        key = (job.sampler, job.steps, job.eta)
        if key not in self._plans:
            if len(self._plans) >= PLAN_CACHE:  # eta is a float a client picks: keep the cache bounded
                self._plans.clear()
            self._plans[key] = self.pipeline.schedule.plan(job.sampler, job.steps, job.eta)
        return self._plans[key]

    def condition(self, job: DiffusionJob) -> np.ndarray:
        """(rows, L, D): the prompt's embeddings, and the negative prompt's when guided."""
        if job.prompt is None:
            raise ValueError("a text-to-image model needs a prompt")
        texts = [job.prompt, job.negative_prompt] if job.rows == 2 else [job.prompt]
        return self.pipeline.encode(texts)

    def run(
        self, x: np.ndarray, timesteps: np.ndarray, conds: list[Any], guided: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        states = np.stack([c[0] for c in conds] + [conds[i][1] for i in guided])
        sample = np.concatenate([x, x[guided]])
        t = np.concatenate([timesteps, timesteps[guided]]).astype(np.float32)
        unet = self.pipeline.unet
        if not self._one_timestep:
            return unet.run(unet.outputs[0], {"sample": sample, "timestep": t, "encoder_hidden_states": states}).astype(
                np.float32
            )
        out = np.empty_like(sample)
        for value in np.unique(t):
            rows = np.flatnonzero(t == value)
            feeds = {
                "sample": sample[rows],
                "timestep": np.array([value], np.float32),
                "encoder_hidden_states": states[rows],
            }
            out[rows] = unet.run(unet.outputs[0], feeds)
        return out


@dataclass(frozen=True)
class TextResult:
    """Images (n, C, H, W) in [0, 1], and how long the request took."""

    images: np.ndarray
    stats: RequestStats


class TextToImage:
    """One replica's text-to-image service: a pipeline, its step scheduler and the final decode."""

    def __init__(
        self, pipeline: TextPipeline, *, max_batch: int = 32, max_queued_lanes: int = 256, **kwargs: Any
    ) -> None:
        self.pipeline = pipeline
        self.scheduler = StepScheduler(
            TextDenoiser(pipeline), max_batch=max_batch, max_queued_lanes=max_queued_lanes, **kwargs
        )

    async def generate(self, job: DiffusionJob) -> TextResult:
        result = await self.scheduler.submit(job)
        images = await self.scheduler.run_off_loop(self.pipeline.decode, result.images)
        return TextResult(images, result.stats)

    async def close(self) -> None:
        await self.scheduler.close()
