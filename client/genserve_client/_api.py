"""What genserve's HTTP API asks and answers, without any transport: request bodies, typed
results, server-sent events and errors. `Client` and `AsyncClient` send these over httpx."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
ImageLike = Image.Image | np.ndarray | bytes | str | os.PathLike[str]
OutputFormat = Literal["png", "jpeg", "webp"]


class GenserveError(Exception):
    """An error answer: HTTP `status`, genserve's stable `code` (invalid_request, overloaded,
    unauthorized, deadline_exceeded, ...), the `field` it names, and `retry_after` for a 503."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.code, self.message, self.field, self.retry_after = status, code, message, field, retry_after


class RequestTimeout(GenserveError):
    """No answer within the client's timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(0, "client_timeout", f"no answer within {seconds:g} s")


def error_from(status: int, headers: Any, text: str) -> GenserveError:
    """An HTTP error answer -> GenserveError, from genserve's error body (or OpenAI's, the same
    fields under another name) or, for a body that is neither, its first line."""
    retry_after: float | None = None
    if headers.get("retry-after"):
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None
    try:
        err = json.loads(text)["error"]
        return GenserveError(status, str(err.get("code")), str(err.get("message")), err.get("field"), retry_after)
    except (ValueError, KeyError, TypeError, AttributeError):
        return GenserveError(status, "http_error", (text.strip().splitlines() or [""])[0][:300], None, retry_after)


# ---- parameters (keyword arguments of the client methods) ------------------------------------


class Encoding(TypedDict, total=False):
    """How images come back: file format, JPEG/WebP quality, and a grid of them all."""

    output_format: OutputFormat
    quality: int
    grid: bool


class Sampling(Encoding, total=False):
    """What `generate` takes; which fields apply depends on the model's family: `truncation` (GAN),
    `temperature` (VAE), `steps`, `sampler`, `guidance`, `eta` (diffusion), and `prompt`,
    `negative_prompt`, `height`, `width` (text2image, which takes no `label`)."""

    n: int
    label: int | None
    prompt: str
    negative_prompt: str
    height: int
    width: int
    seed: int
    steps: int
    sampler: str
    guidance: float
    eta: float
    truncation: float
    temperature: float


class Streamed(Sampling, total=False):
    preview_every: int


class Editing(Sampling, total=False):
    strength: float


class Framing(Encoding, total=False):
    """What an interpolation takes besides its endpoints (steps, sampler, guidance, eta: diffusion)."""

    label: int | None
    steps: int
    sampler: str
    guidance: float
    eta: float


class Scoring(TypedDict, total=False):
    k: int
    seed: int


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    queue_seconds: float
    compute_seconds: float
    total_seconds: float

    @classmethod
    def of(cls, d: dict[str, Any]) -> Timings:
        return cls(float(d["queue_seconds"]), float(d["compute_seconds"]), float(d["total_seconds"]))


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def to_array(image: Image.Image) -> np.ndarray:
    """(H, W, C) uint8; grey keeps one channel."""
    arr = np.asarray(image)
    return arr[:, :, None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class Images:
    """Images a request made: the files as the server sent them (`output_format`), and, decoded,
    `images` (PIL) or `arrays()`. `seed` is the request's seed where it has one; image i of
    seed s is the same pixels whenever it is asked for again."""

    model: str
    output_format: str
    files: list[bytes]
    seed: int | None
    timings: Timings
    grid_file: bytes | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [open_image(f) for f in self.files]

    @property
    def grid(self) -> Image.Image | None:
        return open_image(self.grid_file) if self.grid_file is not None else None

    def arrays(self) -> np.ndarray:
        """(N, H, W, C) uint8."""
        return np.stack([to_array(im) for im in self.images])

    def save(self, directory: str | os.PathLike[str], prefix: str | None = None) -> list[Path]:
        """One file per image, `{prefix}-{seed}-{index}.{format}`; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{prefix or self.model}-{self.seed if self.seed is not None else 'x'}"
        paths = [out / f"{stem}-{i}.{self.extension}" for i in range(len(self.files))]
        for path, data in zip(paths, self.files, strict=True):
            path.write_bytes(data)
        return paths

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg"}.get(self.output_format, self.output_format)


@dataclass(frozen=True)
class Scores:
    """Lower bounds on log p(x) (or log p(x | label)) per image, nats and bits per dimension."""

    model: str
    label: int | None
    k: int
    elbo: np.ndarray
    iwae: np.ndarray
    elbo_bits_per_dim: np.ndarray
    iwae_bits_per_dim: np.ndarray
    timings: Timings


@dataclass(frozen=True)
class Classification:
    """p(y | x) per image over `labels`, by the model's generative classifier."""

    model: str
    labels: list[str]
    probabilities: np.ndarray  # (N, len(labels))
    predicted: list[int]
    timings: Timings

    @property
    def predicted_labels(self) -> list[str]:
        return [self.labels[i] for i in self.predicted]


@dataclass(frozen=True)
class ModelInfo:
    """A served model: what it takes and how good it measured (`quality`, from its card)."""

    name: str
    family: str
    description: str
    image_shape: tuple[int, int, int]
    labels: list[str]
    unconditional: bool
    samplers: list[str]
    max_steps: int | None
    steps: list[int] | None
    max_images: int
    routes: list[str]
    quality: dict[str, dict[str, float]]
    # text2image: size_multiple and max_side (the sizes it draws), default_guidance, max_prompt_chars
    text: dict[str, Any] | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(
            name=d["name"], family=d["family"], description=d["description"], image_shape=tuple(d["image_shape"]),
            labels=list(d["labels"]), unconditional=bool(d["unconditional"]), samplers=list(d["samplers"]),
            max_steps=d.get("max_steps"), steps=d.get("steps"), max_images=int(d["max_images"]),
            routes=list(d.get("routes", [])), quality=dict(d.get("quality", {})), text=d.get("text"),
        )  # fmt: skip

    def label_index(self, label: str | int | None) -> int | None:
        """A label by name ("3", "seven" if the card names it so) or by index."""
        if label is None or isinstance(label, int):
            return label
        if label in self.labels:
            return self.labels.index(label)
        if label.isdigit() and int(label) < len(self.labels):
            return int(label)
        raise ValueError(f"model {self.name!r} has no label {label!r}; its labels: {', '.join(self.labels)}")


# ---- stream events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    seed: int
    label: int | None
    total: int | None


@dataclass(frozen=True)
class Progress:
    """Every image of the request has made `step` of `total` steps."""

    step: int
    total: int


@dataclass(frozen=True)
class Preview:
    """Each image's clean-image estimate at `step` (PNG files)."""

    step: int
    files: list[bytes]

    @property
    def images(self) -> list[Image.Image]:
        return [open_image(f) for f in self.files]


@dataclass(frozen=True)
class ImageReady:
    index: int
    seed: int
    file: bytes

    @property
    def image(self) -> Image.Image:
        return open_image(self.file)


@dataclass(frozen=True)
class Done:
    timings: Timings


Event = Accepted | Progress | Preview | ImageReady | Done


class EventReader:
    """Server-sent event lines in, genserve's events out: `feed` returns an event when a blank
    line completes one, None otherwise."""

    def __init__(self) -> None:
        self.kind, self.data = "message", list[str]()

    def feed(self, line: str) -> Event | None:
        if line.startswith("event:"):
            self.kind = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        elif line == "" and self.data:
            kind, text = self.kind, "\n".join(self.data)
            self.kind, self.data = "message", []
            return event_of(kind, text)
        return None


def event_of(kind: str, text: str) -> Event | None:
    """One of genserve's stream events; an `error` event raises; unknown ones are skipped."""
    d = json.loads(text)
    if kind == "accepted":
        return Accepted(int(d["seed"]), d.get("label"), d.get("total"))
    if kind == "progress":
        return Progress(int(d["step"]), int(d["total"]))
    if kind == "preview":
        return Preview(int(d["step"]), [base64.b64decode(b) for b in d["images"]])
    if kind == "image":
        return ImageReady(int(d["index"]), int(d["seed"]), base64.b64decode(d["image_base64"]))
    if kind == "done":
        return Done(Timings.of(d["timings"]))
    if kind == "error":
        err = d.get("error", {})
        raise GenserveError(200, str(err.get("code")), str(err.get("message")), err.get("field"))
    return None


# ---- calls: a route, a body, and how to read the answer --------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    method: Literal["GET", "POST"]
    path: str
    body: dict[str, Any] | None
    parse: Callable[[Any], T] = field(repr=False)


def encode_image(image: ImageLike) -> str:
    """An image as the base64 PNG/JPEG the server takes: a PIL image, a (H, W[, C]) uint8 array,
    a file's bytes, or a path."""
    if isinstance(image, Image.Image | np.ndarray):
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.squeeze(np.asarray(image)))
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        data = buf.getvalue()
    elif isinstance(image, bytes):
        data = image
    else:
        data = Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _images(d: dict[str, Any]) -> Images:
    grid = d.get("grid_base64")
    if d.get("images") and isinstance(d["images"][0], dict):  # /generate: one object per image
        files = [base64.b64decode(im["image_base64"]) for im in d["images"]]
        seed = int(d["images"][0]["seed"])
    else:  # /reconstruct, /interpolate: base64 strings
        files, seed = [base64.b64decode(s) for s in d["images"]], None
    return Images(
        model=d["model"], output_format=d.get("output_format", "png"), files=files, seed=seed,
        timings=Timings.of(d["timings"]), grid_file=base64.b64decode(grid) if grid else None,
    )  # fmt: skip


def _scores(d: dict[str, Any]) -> Scores:
    def col(key: str) -> np.ndarray:
        return np.array([s[key] for s in d["scores"]], dtype=np.float64)

    return Scores(
        model=d["model"], label=d["label"], k=int(d["k"]), elbo=col("elbo"), iwae=col("iwae"),
        elbo_bits_per_dim=col("elbo_bits_per_dim"), iwae_bits_per_dim=col("iwae_bits_per_dim"),
        timings=Timings.of(d["timings"]),
    )  # fmt: skip


def _classification(d: dict[str, Any]) -> Classification:
    return Classification(
        model=d["model"], labels=list(d["labels"]), probabilities=np.array(d["probabilities"], dtype=np.float64),
        predicted=[int(i) for i in d["predicted"]], timings=Timings.of(d["timings"]),
    )  # fmt: skip


def _route(model: str, route: str) -> str:
    return f"/v1/models/{model}/{route}"


def models_call() -> Call[list[ModelInfo]]:
    return Call("GET", "/v1/models", None, lambda d: [ModelInfo.of(m) for m in d["data"]])


def model_call(name: str) -> Call[ModelInfo]:
    return Call("GET", f"/v1/models/{name}", None, ModelInfo.of)


def generate_call(model: str, params: Sampling) -> Call[Images]:
    return Call("POST", _route(model, "generate"), dict(params), _images)


def stream_body(params: Streamed) -> dict[str, Any]:
    return {**params, "stream": True}


def edit_call(model: str, image: ImageLike, mask: ImageLike | None, params: Editing) -> Call[Images]:
    body: dict[str, Any] = {**params, "image": encode_image(image)}
    if mask is not None:
        body["mask"] = encode_image(mask)
    return Call("POST", _route(model, "inpaint" if mask is not None else "img2img"), body, _images)


def score_call(model: str, images: list[ImageLike], label: int | None, params: Scoring) -> Call[Scores]:
    body = {**params, "images": [encode_image(i) for i in images], "label": label}
    return Call("POST", _route(model, "score"), body, _scores)


def classify_call(model: str, images: list[ImageLike], params: Scoring) -> Call[Classification]:
    body = {**params, "images": [encode_image(i) for i in images]}
    return Call("POST", _route(model, "classify"), body, _classification)


def reconstruct_call(model: str, images: list[ImageLike], label: int | None, params: Encoding) -> Call[Images]:
    body = {**params, "images": [encode_image(i) for i in images], "label": label}
    return Call("POST", _route(model, "reconstruct"), body, _images)


def interpolate_call(model: str, from_seed: int, to_seed: int, frames: int, params: Framing) -> Call[Images]:
    body = {**params, "from_seed": from_seed, "to_seed": to_seed, "frames": frames}
    return Call("POST", _route(model, "interpolate"), body, _images)
