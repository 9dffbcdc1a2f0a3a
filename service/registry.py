"""Loading served models: a card, its ONNX session(s), checked against each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.cards import CARD_FILE, ModelCard, discover, load_card
from service.errors import ModelLoadError
from service.priors import LatentPrior
from service.runtime import Device, OnnxModel
from service.schedules import alphas_cumprod_for, betas_for

if TYPE_CHECKING:
    from service.text2image import TextPipeline


@dataclass
class LoadedModel:
    """A card with its live ONNX session; `alphas_cumprod` is set for diffusion models, `prior`
    (the card's, else N(0, I)) for GANs and VAEs."""

    card: ModelCard
    onnx: OnnxModel
    encoder: OnnxModel | None = None
    alphas_cumprod: np.ndarray | None = field(default=None, repr=False)
    prior: LatentPrior | None = field(default=None, repr=False)
    # text2image: the whole pipeline folder (`onnx` is its UNet).
    pipeline: TextPipeline | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.card.name


def _check_shapes(card: ModelCard, onnx: OnnxModel) -> None:
    """Static dims in the graph must agree with the card (dynamic ones are not checked)."""
    roles = card.onnx.inputs
    if card.family == "diffusion":
        expected: dict[str, tuple[int | None, ...]] = {roles["sample"]: (None, *card.image_shape)}
    else:
        expected = {roles["latent"]: (None, card.latent_dim)}
    for name, want in expected.items():
        got = onnx.inputs[name].shape
        if len(got) != len(want) or any(
            g is not None and w is not None and g != w for g, w in zip(got, want, strict=False)
        ):
            raise ModelLoadError(f"{onnx.path}: input {name!r} has shape {got}, the card implies {want}")


def load_model(folder: Path, *, device: Device = "auto", intra_op_threads: int = 1) -> LoadedModel:
    """Loads one model folder, failing with a message that names the offending file."""
    card = load_card(folder)
    if card.family == "text2image":
        return _load_pipeline_model(folder, card, device, intra_op_threads)
    onnx = OnnxModel(folder / card.onnx.file, device=device, intra_op_threads=intra_op_threads)
    onnx.check_io(card.onnx.inputs, card.onnx.output)
    _check_shapes(card, onnx)
    encoder = None
    if card.encoder is not None:
        encoder = OnnxModel(folder / card.encoder.file, device=device, intra_op_threads=intra_op_threads)
        encoder.check_io(card.encoder.inputs, card.encoder.output)
        if card.density is not None:
            for graph, name in ((onnx, card.density.decoder_logits), (encoder, card.density.encoder_logvar)):
                if name not in graph.outputs:
                    raise ModelLoadError(f"{graph.path}: density names output {name!r}; the graph has {graph.outputs}")
    abar = None
    if card.schedule is not None:
        s = card.schedule
        abar = alphas_cumprod_for(betas_for(s.beta_schedule, s.num_train_timesteps, s.beta_start, s.beta_end))
    return LoadedModel(card, onnx, encoder, abar, _load_prior(folder, card))


def _load_prior(folder: Path, card: ModelCard) -> LatentPrior | None:
    """The latent prior of a GAN or VAE, checked against the card (None for other families)."""
    if card.latent_dim is None:
        return None
    if card.prior is None:
        return LatentPrior.standard(card.label_inputs, card.latent_dim)
    path = folder / card.prior.file
    try:
        prior = LatentPrior.load(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: {e}") from e
    if (prior.rows, prior.dim) != (card.label_inputs, card.latent_dim):
        raise ModelLoadError(
            f"{path}: a prior for {prior.rows} label inputs of {prior.dim} dims; the card implies "
            f"{card.label_inputs} of {card.latent_dim}"
        )
    return prior


def _load_pipeline_model(folder: Path, card: ModelCard, device: Device, intra_op_threads: int) -> LoadedModel:
    """A Stable-Diffusion-layout folder: the pipeline's own checks, then the card against it."""
    # Imported here: service.text2image builds on the step scheduler, which builds on this module.
    from service.text2image import load_pipeline

    pipeline = load_pipeline(folder, device=device, intra_op_threads=intra_op_threads)
    pipeline.unet.check_io(card.onnx.inputs, card.onnx.output)
    assert card.text is not None  # the card's validator: a text2image card has `text`
    path = folder / CARD_FILE
    if pipeline.default_size != (card.image.height, card.image.width) or card.image.channels != 3:
        raise ModelLoadError(
            f"{path}: image {card.image.channels}x{card.image.height}x{card.image.width}, but the pipeline makes "
            f"3x{pipeline.default_size[0]}x{pipeline.default_size[1]} by default"
        )
    if card.text.size_multiple % pipeline.size_multiple:
        raise ModelLoadError(
            f"{path}: text.size_multiple {card.text.size_multiple} is not a multiple of the pipeline's "
            f"{pipeline.size_multiple} (VAE scale x UNet downsampling)"
        )
    if tuple(card.image.value_range) != (0.0, 1.0):
        raise ModelLoadError(f"{path}: image.value_range must be [0, 1] (the pipeline decodes to [0, 1])")
    return LoadedModel(card, pipeline.unet, pipeline=pipeline)


def load_cards(model_dir: Path) -> tuple[dict[str, ModelCard], dict[str, str]]:
    """Every card in `model_dir` that validates, and an error message per folder that does not."""
    cards: dict[str, ModelCard] = {}
    broken: dict[str, str] = {}
    for folder in discover(model_dir):
        try:
            cards[folder.name] = load_card(folder)
        except ModelLoadError as e:
            broken[folder.name] = e.message
    return cards, broken


def check_models(model_dir: Path) -> tuple[dict[str, ModelCard], dict[str, str]]:
    """Loads every model folder once, as a replica would (card, ONNX file, card against graph).

    Returns the cards of the healthy models and, for each broken folder, the message naming the
    file at fault. The server serves the healthy ones and reports the broken ones as not ready.
    """
    cards, broken = load_cards(model_dir)
    for name in list(cards):
        try:
            load_model(model_dir / name, device="cpu", intra_op_threads=1)
        except ModelLoadError as e:
            broken[name] = e.message
            del cards[name]
    return cards, broken
