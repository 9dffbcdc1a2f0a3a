"""`python -m training.ablation`: the diffusion recipe ablation in docs/training.md.

Reads `weights/ablation.safetensors` (each run's EMA weights at the same step count, stored in
float16 to keep the repository small; written by scripts/train_gpu.sh), exports every run to
ONNX in a temporary folder and measures it exactly as `genserve eval` measures a shipped model.
Prints the markdown table the doc quotes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from training import export
from training.evaluate import CLASSIFIER, FeatureNet, evaluate_model, floor
from training.train import DiffusionRecipe, make_unet

ABLATION = export.WEIGHTS_DIR / "ablation.safetensors"
SETTINGS = ["dpmpp_2m-10", "ddim-20"]  # keys of training.evaluate.DIFFUSION_SETTINGS
WHAT = {
    "abl-eps-linear": "epsilon, linear schedule (the first shipped recipe), small UNet",
    "abl-v-cosine": "v-prediction, cosine schedule, small UNet",
    "abl-v-cosine-minsnr": "v-prediction, cosine, Min-SNR-5, small UNet",
    "diffusion": "v-prediction, cosine, Min-SNR-5, base UNet (attention at 7x7): the first distilled model's teacher",
}


def runs(path: Path = ABLATION) -> dict[str, tuple[DiffusionRecipe, int, dict[str, torch.Tensor]]]:
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    out = {}
    for name, m in meta.items():
        prefix = f"{name}/ema/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        out[name] = (DiffusionRecipe(**m["recipe"]), int(m["step"]), state)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="exported", help="where the evaluation classifier is")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    features = FeatureNet(Path(args.model_dir) / CLASSIFIER, args.threads)
    floor_q, real = floor(features)
    rows = [
        f"| floor (training digits) | - | - | {floor_q.fid:.2f} | 1.00x | {floor_q.precision:.3f} | "
        f"{floor_q.recall:.3f} | {floor_q.label_accuracy:.3f} |"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (recipe, step, state) in runs().items():
            unet = make_unet(recipe)
            unet.load_state_dict(state)
            folder = Path(tmp) / "ablation"
            export._checked_export(unet, export._diffusion_inputs, folder / "model.onnx", ["x", "t", "label"], ["out"])
            card = export._card(
                "ablation", "diffusion", WHAT[name], step,
                schedule=recipe.noise_schedule(),
                onnx={"file": "model.onnx", "inputs": {"sample": "x", "timestep": "t", "label": "label"}, "output": "out"},
            )  # fmt: skip
            (folder / "model.json").write_text(json.dumps(card))
            # Measured exactly as `genserve eval` measures a shipped model, at the settings below.
            results = evaluate_model(Path(tmp), "ablation", features, real, args.threads, SETTINGS)
            for key, q in results.items():
                rows.append(
                    f"| {WHAT[name]} | {step} | {key} | {q.fid:.2f} | {q.fid / floor_q.fid:.2f}x | "
                    f"{q.precision:.3f} | {q.recall:.3f} | {q.label_accuracy:.3f} |"
                )
    head = "| recipe | steps | setting | FID | FID / floor | precision | recall | label accuracy |\n"
    print("\n" + head + "|---|---:|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
