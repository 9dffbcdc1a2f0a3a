"""Model cards: what a served model is, read from `<model dir>/<name>/model.json`.

A model is served because its folder holds a valid card and the ONNX file it names; adding a
model needs no code change. Loading checks the card against the ONNX graph's inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from service.errors import ModelLoadError
from service.samplers import SamplerName
from service.schedules import BetaSchedule

Family = Literal["gan", "vae", "diffusion", "text2image"]
CARD_FILE = "model.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """Shape and value range of the images a model produces."""

    channels: int = Field(ge=1, le=4, description="Colour channels: 1 grey, 3 RGB, 4 RGBA.")
    height: int = Field(ge=1, le=4096, description="Image height in pixels.")
    width: int = Field(ge=1, le=4096, description="Image width in pixels.")
    value_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="Pixel values the network emits for black and white."
    )


class NoiseSchedule(_Strict):
    """The forward process the diffusion model was trained with."""

    beta_schedule: BetaSchedule = Field(description="How betas grow with t: `linear` (DDPM) or `cosine`.")
    num_train_timesteps: int = Field(ge=1, le=10000, description="T, the number of training timesteps.")
    beta_start: float = Field(0.0001, gt=0, lt=1, description="beta_1 of the linear schedule.")
    beta_end: float = Field(0.02, gt=0, lt=1, description="beta_T of the linear schedule.")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(description="What the network predicts.")


class OnnxIO(_Strict):
    """Which ONNX graph input plays which role; dtypes and shapes come from the graph itself."""

    file: str = Field("model.onnx", description="ONNX file, relative to the model folder.")
    inputs: dict[str, str] = Field(
        description="Role -> graph input name. gan/vae: `latent`, `label`; diffusion: `sample`, `timestep`, "
        "`label`, and `num_steps` (the lane's step count) for a step-conditioned few-step model; text2image (the "
        "UNet, `unet/model.onnx`): `sample`, `timestep`, `encoder_hidden_states`."
    )
    output: str = Field(
        description="Name of the graph output holding the images (or the diffusion model's prediction)."
    )


class SamplingSpec(_Strict):
    """Diffusion only: the samplers and step counts a model supports, where not all of them.

    A distilled few-step model is trained for particular step counts of one sampler; asking for
    another is refused by validation, naming the field.
    """

    samplers: list[SamplerName] = Field(min_length=1, description="Samplers the model supports.")
    steps: list[int] = Field(min_length=1, description="Step counts the model supports.")
    default_steps: int = Field(ge=1, description="Steps a request gets when it names none.")

    @model_validator(mode="after")
    def _default_listed(self) -> SamplingSpec:
        if self.default_steps not in self.steps:
            raise ValueError(f"default_steps {self.default_steps} is not one of steps {self.steps}")
        return self


class TextSpec(_Strict):
    """text2image only: what requests may ask of a Stable-Diffusion-layout pipeline folder (its
    parts are described by the folder itself: model_index.json, the parts' configs, the
    tokenizer and the scheduler config)."""

    size_multiple: int = Field(
        ge=1, le=512, description="Image sides must be multiples of this (VAE scale x UNet downsampling)."
    )
    max_side: int = Field(ge=1, le=4096, description="Largest image height or width a request may ask for.")
    default_guidance: float = Field(
        7.5, ge=0, description="Classifier-free guidance a request gets when it names none."
    )
    max_prompt_chars: int = Field(
        2000, ge=1, le=100_000, description="Longest prompt or negative prompt, in characters."
    )


class DensitySpec(_Strict):
    """vae only: what scoring images needs (likelihood bounds, the generative classifier).

    Pixels are scored as binary (on where the intensity, 0 black to 1 white, is at least
    `binarize_at`): the decoder's Bernoulli likelihood is a probability over binary images, so
    the bounds are true log-probabilities in nats (bits per dimension divide by H x W x C x ln 2).
    """

    decoder_logits: str = Field(description="Decoder graph output holding each pixel's Bernoulli logit.")
    encoder_logvar: str = Field(description="Encoder graph output holding log-variances of q(z | x, y).")
    binarize_at: float = Field(0.5, gt=0, lt=1, description="Intensity at or above which a pixel counts as on.")
    label_prior: list[float] | None = Field(
        None, description="p(y) over the labels, for marginal bounds and Bayes' rule; uniform when absent."
    )

    @model_validator(mode="after")
    def _prior_sums_to_one(self) -> DensitySpec:
        if self.label_prior is not None and (min(self.label_prior) <= 0 or abs(sum(self.label_prior) - 1) > 1e-6):
            raise ValueError("label_prior must be positive and sum to 1")
        return self


class PriorSpec(_Strict):
    """gan/vae: a latent prior other than N(0, I), one Gaussian per label input (`service.priors`)."""

    file: str = Field(
        description="An .npz in the model folder: `mean` (label inputs, latent_dim) and `scale_tril` "
        "(label inputs, latent_dim, latent_dim), lower-triangular with a positive diagonal; row y is "
        "p(z | label input y)."
    )
    fitted: str = Field("", description="How the prior was obtained, for humans.")


class Provenance(_Strict):
    """Where the weights came from."""

    data: str = Field(description="Training data, as a user could obtain it.")
    training_steps: int = Field(ge=0, description="Optimiser steps the exported weights had.")
    command: str = Field(description="Command that trains and exports this model.")
    notes: str = Field("", description="Anything else a user should know.")


REQUIRED_ROLES: dict[Family, set[str]] = {
    "gan": {"latent", "label"},
    "vae": {"latent", "label"},
    "diffusion": {"sample", "timestep", "label"},
    "text2image": {"sample", "timestep", "encoder_hidden_states"},
}


class ModelCard(_Strict):
    """Everything the server needs to serve a model and a client needs to call it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="URL-safe model name; the folder's name.")
    family: Family = Field(description="Which kind of generator: decides batching and request schema.")
    description: str = Field("", description="One line for humans.")
    image: ImageSpec = Field(description="Shape and range of generated images.")
    labels: list[str] = Field(description="Class names; a request's `label` is an index into this list.")
    null_label: int | None = Field(
        description="Label index meaning 'no label' (unconditional sampling, the CFG null label); None if absent."
    )
    latent_dim: int | None = Field(None, ge=1, description="Size of z for gan/vae.")
    schedule: NoiseSchedule | None = Field(None, description="Diffusion only: the training noise schedule.")
    sampling: SamplingSpec | None = Field(
        None, description="Diffusion only: supported samplers and step counts, where not every one is."
    )
    onnx: OnnxIO = Field(description="The ONNX generator and its input roles.")
    encoder: OnnxIO | None = Field(None, description="vae only: the (image, label) -> (mu, logvar) encoder.")
    density: DensitySpec | None = Field(None, description="vae only: how images are scored; needs `encoder`.")
    prior: PriorSpec | None = Field(
        None, description="gan/vae: the latent prior images are drawn from and scored under; N(0, I) when absent."
    )
    text: TextSpec | None = Field(None, description="text2image only: prompts and image sizes requests may ask for.")
    provenance: Provenance = Field(description="Training data and the reproducing command.")
    quality: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Measured quality by setting (e.g. `dpmpp_2m-20`): fid, precision, recall, ...",
    )
    # When the card file was last written (Unix seconds), set by `load_card`: OpenAI's `created`.
    _created: int = PrivateAttr(0)

    @model_validator(mode="after")
    def _family_fields(self) -> ModelCard:
        missing = REQUIRED_ROLES[self.family] - set(self.onnx.inputs)
        if missing:
            raise ValueError(f"onnx.inputs lacks role(s) {sorted(missing)} required for family {self.family!r}")
        if self.family == "diffusion" and self.schedule is None:
            raise ValueError("a diffusion card needs `schedule`")
        if self.sampling is not None and self.family not in ("diffusion", "text2image"):
            raise ValueError("`sampling` is for diffusion and text2image cards only")
        if (self.family == "text2image") != (self.text is not None):
            raise ValueError("a text2image card needs `text`, and only a text2image card has it")
        if self.text is not None and (
            self.image.height % self.text.size_multiple or self.image.width % self.text.size_multiple
        ):
            raise ValueError(
                f"image size {self.image.height}x{self.image.width} is not a multiple of text.size_multiple {self.text.size_multiple}"
            )
        if "num_steps" in self.onnx.inputs and self.sampling is None:
            raise ValueError(
                "a step-conditioned model (onnx input role `num_steps`) needs `sampling` to list its steps"
            )
        if self.density is not None and (self.family != "vae" or self.encoder is None):
            raise ValueError("`density` is for vae cards with an `encoder`")
        prior = self.density.label_prior if self.density is not None else None
        if prior is not None and len(prior) != len(self.labels):
            raise ValueError(f"density.label_prior needs one entry per label ({len(self.labels)})")
        if self.prior is not None and self.family not in ("gan", "vae"):
            raise ValueError("`prior` is for gan and vae cards only")
        if self.family in ("gan", "vae") and self.latent_dim is None:
            raise ValueError(f"a {self.family} card needs `latent_dim`")
        return self

    @property
    def label_inputs(self) -> int:
        """How many values the network's label input takes: the labels and the null label."""
        return max(len(self.labels), (self.null_label if self.null_label is not None else -1) + 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image.channels, self.image.height, self.image.width)

    @property
    def created(self) -> int:
        """When the card was written (Unix seconds; 0 for a card not read from a file)."""
        return self._created

    def routes(self) -> list[str]:
        """The model's routes under `/v1/models/{name}`: what its family and card support."""
        if self.family == "text2image":
            return ["/generate"]
        out = ["/generate", "/interpolate"]
        if self.encoder is not None:
            out += ["/encode", "/reconstruct"]
        if self.density is not None:
            out += ["/score", "/classify"]
        if self.family == "diffusion" and "num_steps" not in self.onnx.inputs:
            out += ["/img2img", "/inpaint"]  # a step-conditioned model runs whole trajectories only
        return out

    def label_prior(self) -> list[float]:
        """p(y) for the generative classifier: the card's, or uniform over the labels."""
        if self.density is not None and self.density.label_prior is not None:
            return list(self.density.label_prior)
        return [1 / len(self.labels)] * len(self.labels)


def load_card(folder: Path) -> ModelCard:
    """Reads and validates `folder/model.json`; every failure names the file."""
    path = folder / CARD_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no model card") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'card'}: {err['msg']}" for err in e.errors())
        raise ModelLoadError(f"{path}: invalid model card: {errors}") from None
    if card.name != folder.name:
        raise ModelLoadError(f"{path}: card name {card.name!r} differs from its folder name {folder.name!r}")
    card._created = int(path.stat().st_mtime)
    return card


def discover(model_dir: Path) -> list[Path]:
    """Model folders (those holding a card) in `model_dir`, sorted by name. A pipeline folder
    (text2image) holds its card beside model_index.json."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"{model_dir}: model directory does not exist")
    return sorted(p for p in model_dir.iterdir() if (p / CARD_FILE).is_file())
