"""`genserve` command line: train, export and evaluate the shipped models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FAMILIES = ("diffusion", "gan", "vae", "classifier", "text2image", "emoji-classifier", "emoji-category")
ON_THEIR_OWN = ("text2image", "emoji-classifier", "emoji-category")  # the emoji models: by name only
DISTILL_ARCHS = ("small", "base", "narrow")  # a student's UNet shapes (training.nets.UNET_ARCHS)


def _config(args: argparse.Namespace, family: str) -> Any:
    import torch

    from training.train import DiffusionRecipe, default_config

    arch = getattr(args, "arch", None)
    allowed = {"vae": ("small", "res"), "distilled": DISTILL_ARCHS}.get(family, ("small", "base"))
    if arch is not None and arch not in allowed:
        sys.exit(f"--arch {arch}: {family} takes {' or '.join(allowed)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    recipe = DiffusionRecipe(
        **{
            k: v
            for k, v in {
                "prediction": getattr(args, "prediction", None),
                "schedule": getattr(args, "schedule", None),
                "min_snr": getattr(args, "min_snr", None),
                "arch": getattr(args, "arch", None) if family != "vae" else None,
                "ema_decay": args.ema_decay,
            }.items()
            if v is not None
        }
    )
    return default_config(
        family,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        run=args.run,
        device=device,
        minutes=args.minutes,
        snapshots=tuple(args.snapshots or ()),
        resume_from=Path(args.resume_from) if args.resume_from else None,
        lr_decay=args.lr_decay or None,
        label_dropout=getattr(args, "label_dropout", None),
        vae_arch=getattr(args, "arch", None) if family == "vae" else None,
        recipe=recipe,
    )


def _finish(trainer: Any, args: argparse.Namespace) -> None:
    if args.weights_out:
        trainer.save_weights(Path(args.weights_out))
        print(f"weights (no optimiser state) written to {args.weights_out}")


def _train(args: argparse.Namespace) -> None:
    from training.train import TRAINERS

    cfg = _config(args, args.family)
    if args.family == "text2image":  # its own module: it builds on diffusers and transformers
        from training.text2image_train import train_text2image

        _finish(train_text2image(cfg), args)
        if args.weights_out:  # the vocabulary travels with the weights
            from training.text2image_train import copy_tokenizer

            copy_tokenizer(cfg, Path(args.weights_out))
        return
    if args.family == "emoji-classifier":
        from training.emoji_eval import train_emoji_classifier

        _finish(train_emoji_classifier(cfg), args)
        return
    if args.family == "emoji-category":
        from training.emoji_category import train_emoji_category

        _finish(train_emoji_category(cfg), args)
        return
    _finish(TRAINERS[args.family](cfg), args)


def _distill(args: argparse.Namespace) -> None:
    from training.distill import distill

    cfg = _config(args, "distilled")
    _finish(distill(cfg, Path(args.teacher), guidance=args.guidance, pool_size=args.pool_size, arch=args.arch), args)


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.export import EXPORTERS, export_vae

    for family in args.families or [f for f in EXPORTERS if f not in ON_THEIR_OWN]:
        out = Path(args.out)
        err = export_vae(out, prior=args.vae_prior) if family == "vae" else EXPORTERS[family](out)
        print(f"exported {family} to {args.out}: ONNX Runtime vs torch max abs error {err:.2e}")


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from service.cards import discover, load_card
    from training.evaluate import is_digit_card, run_eval

    model_dir = Path(args.model_dir)
    names = args.models or [p.name for p in discover(model_dir) if is_digit_card(load_card(p).model_dump())]
    table = run_eval(model_dir, names, args.threads or 2, args.settings, Path(args.report), args.n, args.bootstrap)
    print(table)


def _eval_emoji(args: argparse.Namespace) -> None:
    from training.emoji_eval import run

    measured = run(Path(args.model_dir), args.model, Path(args.report), Path(args.figure), args.threads or 2)
    print(f"evaluation classifier, held-out emoji: {measured['classifier_heldout_accuracy']:.3f}")
    for key, row in measured["rows"].items():
        print(key, row)


def _eval_density(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.density_eval import run

    measured = run(Path(args.model_dir), args.model, args.k, args.k_ood, Path(args.report), Path(args.figures))
    for key, value in measured.items():
        print(f"{key}: {value:.4f}")


def _eval_edits(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.edit_eval import run

    for key, row in run(Path(args.model_dir), args.model, Path(args.report), Path(args.figures)).items():
        print(key, row)


def _trilemma(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.trilemma import write_trilemma

    for p in write_trilemma(Path(args.model_dir), Path(args.bench_core), Path(args.out)):
        ms = f"{p.ms_per_image:.2f} ms" if p.ms_per_image is not None else "ms not measured"
        print(f"{p.model} {p.setting}: {p.calls} calls, {ms}, FID {p.fid_ratio:.2f}x floor, recall {p.recall:.3f}")


def _sd_parity(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.sd_layout import write_parity_report

    for row in write_parity_report(Path(args.report)):
        print(
            f"{row['sampler']} {row['steps']} steps, guidance {row['guidance']:g}: max abs diff {row['max_abs_diff']:.2e}"
        )


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, help="total optimiser steps (default: the shipped model's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--run", help="checkpoint name under checkpoints/ (default: the family)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--minutes", type=float, help="stop, with a checkpoint, after this much wall time")
    p.add_argument("--snapshots", type=int, nargs="*", help="also keep the EMA weights alone at these steps")
    p.add_argument("--resume-from", help="weights to start from when checkpoints/<run> does not exist yet")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the weights (diffusion, distilled)")
    p.add_argument(
        "--lr-decay",
        action="store_true",
        help="denoisers: cosine decay of the learning rate to zero at --steps, counted from where this run's"
        " optimiser starts (a fine-tune of committed weights: --resume-from W --steps MORE --lr-decay)",
    )
    p.add_argument("--weights-out", help="at the end, also write the weights alone (the committable form) here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one family (resumes from checkpoints/<run>.safetensors)")
    p.add_argument("family", choices=FAMILIES)
    _run_options(p)
    p.add_argument("--prediction", choices=("epsilon", "v_prediction"), help="diffusion: the network's target")
    p.add_argument("--schedule", choices=("linear", "cosine"), help="diffusion: the noise schedule")
    p.add_argument("--min-snr", type=float, help="diffusion: Min-SNR-gamma loss weighting (e.g. 5)")
    p.add_argument(
        "--arch",
        choices=("small", "base", "res"),
        help="diffusion: UNet shape, small or base (training.nets.UNET_ARCHS); vae: small or res (VAE_ARCHS)",
    )
    p.add_argument(
        "--label-dropout",
        type=float,
        help="diffusion: share of labels replaced by the null label, which trains the unconditional mode and"
        " classifier-free guidance (default 0.1)",
    )
    p.set_defaults(func=_train)
    p = sub.add_parser("distill", help="distil a diffusion checkpoint into a 1/2/4-call student (training.distill)")
    p.add_argument("--teacher", required=True, help="diffusion checkpoint (.safetensors) whose EMA weights teach")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of the teacher's samples")
    p.add_argument("--pool-size", type=int, default=65536, help="teacher trajectories kept at a time")
    p.add_argument(
        "--arch",
        choices=DISTILL_ARCHS,
        help="the student's UNet shape (training.nets.UNET_ARCHS; default: the teacher's); a narrower one"
        " starts from a slice of the teacher's weights",
    )
    _run_options(p)
    p.set_defaults(func=_distill, family="distilled")
    p = sub.add_parser("export", help="export checkpoints to ONNX model folders with cards (checks parity)")
    p.add_argument("families", nargs="*", help=f"any of {', '.join((*FAMILIES, 'distilled'))} (default: all)")
    p.add_argument("--out", default="exported")
    p.add_argument(
        "--vae-prior",
        choices=("fitted", "standard"),
        default="fitted",
        help="the VAE's latent prior: a Gaussian per label fitted to its training posteriors, or N(0, I)",
    )
    p.set_defaults(func=_export)
    p = sub.add_parser("eval", help="measure FID, precision/recall and label accuracy; update cards and reports")
    p.add_argument("models", nargs="*", help="model folder names (default: all)")
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--settings", nargs="*", help="only these settings, e.g. dpmpp_2m-20 ddim-50")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads")
    p.add_argument("--report", default="docs/quality.md")
    p.add_argument("--n", type=int, default=1000, help="generated images per setting (a multiple of 10)")
    p.add_argument("--bootstrap", type=int, default=100, help="resamples for the FID and sFID intervals (0: none)")
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "eval-emoji",
        help="an emoji model (text-to-image or by category): FID, category accuracy, name retrieval; grid "
        "(training.emoji_eval)",
    )
    p.add_argument("model", nargs="?", default="emoji-text", help="emoji-text or emoji-category")
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads")
    p.add_argument("--report", default="docs/emoji-text.md")
    p.add_argument("--figure", default="docs/figures/emoji-text-grid.png")
    p.set_defaults(func=_eval_emoji)
    p = sub.add_parser(
        "eval-density",
        help="the VAE as density, classifier and anomaly detector on the held-out digits; pictures (training.density_eval)",
    )
    p.add_argument("--model", default="vae", help="a model folder whose card has a `density` block")
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--k", type=int, default=1024, help="importance samples for the test NLL and the classifier")
    p.add_argument("--k-ood", type=int, default=128, help="importance samples for the anomaly scores")
    p.add_argument("--report", default="docs/density.md")
    p.add_argument("--figures", default="docs/figures")
    p.set_defaults(func=_eval_density)
    p = sub.add_parser(
        "eval-edits",
        help="diffusion image-to-image and inpainting on the held-out digits; pictures (training.edit_eval)",
    )
    p.add_argument("--model", default="diffusion", help="a diffusion model folder")
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--report", default="docs/editing.md")
    p.add_argument("--figures", default="docs/figures")
    p.set_defaults(func=_eval_edits)
    p = sub.add_parser(
        "trilemma",
        help="redraw the quality/cost/diversity picture, and quality against steps, from the cards and "
        "docs/bench-core.json",
    )
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--bench-core", default="docs/bench-core.json", help="`make bench-core` writes it")
    p.add_argument("--out", default="docs/figures/trilemma.png")
    p.set_defaults(func=_trilemma)
    p = sub.add_parser(
        "sd-parity",
        help="genserve against diffusers' OnnxStableDiffusionPipeline on a tiny Stable-Diffusion-layout pipeline",
    )
    p.add_argument("--report", default="docs/text-to-image.md")
    p.set_defaults(func=_sd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
