"""`genserve` command line: train, export and evaluate the shipped models."""

from __future__ import annotations

import argparse
import sys

FAMILIES = ("diffusion", "gan", "vae", "classifier")


def _train(args: argparse.Namespace) -> None:
    import torch

    from training.train import TRAINERS, default_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = default_config(args.family, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    TRAINERS[args.family](cfg)


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from training.export import EXPORTERS

    for family in args.families or list(EXPORTERS):
        err = EXPORTERS[family](Path(args.out))
        print(f"exported {family} to {args.out}: ONNX Runtime vs torch max abs error {err:.2e}")


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from service.cards import discover
    from training.evaluate import run_eval

    model_dir = Path(args.model_dir)
    names = args.models or [p.name for p in discover(model_dir)]
    table = run_eval(model_dir, names, args.threads or 2, args.settings, Path(args.report))
    print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one family (resumes from checkpoints/<family>.pt)")
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--steps", type=int, help="total optimiser steps (default: the shipped model's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.set_defaults(func=_train)
    p = sub.add_parser("export", help="export checkpoints to ONNX model folders with cards (checks parity)")
    p.add_argument("families", nargs="*", help=f"any of {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--out", default="exported")
    p.set_defaults(func=_export)
    p = sub.add_parser("eval", help="measure FID, precision/recall and label accuracy; update cards and reports")
    p.add_argument("models", nargs="*", help="model folder names (default: all)")
    p.add_argument("--model-dir", default="exported")
    p.add_argument("--settings", nargs="*", help="only these settings, e.g. dpmpp_2m-20 ddim-50")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads")
    p.add_argument("--report", default="docs/quality.md")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
