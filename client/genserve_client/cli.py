"""`genserve-client`: images from a genserve server into files, and images scored, classified
or edited from files. `genserve-client COMMAND --help` describes each command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from genserve_client._api import Accepted, Done, GenserveError, ImageReady, Images, ModelInfo, Progress
from genserve_client.client import DEFAULT_URL, Client

EXAMPLES = f"""examples:
  genserve-client models
  genserve-client generate diffusion -n 8 --label 3 --steps 20 --seed 42 --out samples/
  genserve-client generate gan -n 16 --label 7 --grid --out samples/
  genserve-client generate emoji-text --prompt "red apple" -n 4 --seed 1 --out samples/
  genserve-client classify vae samples/*.png
  genserve-client score vae samples/diffusion-42-0.png --label 3 -k 256
  genserve-client edit diffusion samples/diffusion-42-0.png --label 8 --strength 0.6 --out edits/

The server is --url, else $GENSERVE_URL, else {DEFAULT_URL}; the bearer token is --token, else
$GENSERVE_API_KEY. Exit status: 0 done, 1 the server refused or could not be reached, 2 bad usage.
"""


class ProgressBar:
    """Steps of a streamed request on stderr: a redrawn bar on a terminal, else a line every 10%."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width, self.last_decile = out, width, -1
        self.tty = out.isatty()

    def update(self, step: int, total: int) -> None:
        if self.tty:
            filled = self.width * step // max(total, 1)
            self.out.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] step {step}/{total}")
            self.out.flush()
        elif (decile := 10 * step // max(total, 1)) > self.last_decile:
            self.last_decile = decile
            self.out.write(f"step {step}/{total}\n")

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"server address (default: $GENSERVE_URL or {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (default: $GENSERVE_API_KEY)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer (default: 300)")


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=1, help="number of images (default: 1)")
    p.add_argument("--label", help="label by name or index (default: unconditional where the model allows)")
    p.add_argument("--prompt", help="what to draw (text-to-image models)")
    p.add_argument("--negative-prompt", help="what to steer away from (text-to-image models, with guidance)")
    p.add_argument("--height", type=int, help="image height in pixels (text-to-image; default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels (text-to-image; default: the model's)")
    p.add_argument("--seed", type=int, help="seed; the same seed gives the same images (default: random)")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    p.add_argument("--sampler", help="diffusion sampler: ddpm, ddim, dpmpp_2m (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (diffusion)")
    p.add_argument("--eta", type=float, help="DDIM noise, 0 = deterministic")
    p.add_argument("--truncation", type=float, help="GAN latent truncation")
    p.add_argument("--temperature", type=float, help="VAE prior temperature")
    p.add_argument("--format", dest="output_format", choices=["png", "jpeg", "webp"], default="png")
    p.add_argument("--quality", type=int, help="JPEG/WebP quality 1-100")
    p.add_argument("--out", type=Path, default=Path("."), help="directory for the files (default: .)")
    p.add_argument("--prefix", help="file name prefix (default: the model's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for diffusion models")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="genserve-client",
        description="Images from a genserve server into files; images from files scored, classified or edited.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the served models and their measured quality")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the models as JSON")

    p = sub.add_parser("generate", help="generate images into files (one per image, or one grid)")
    _common(p)
    p.add_argument("model", help="model name, as `models` lists it")
    _sampling(p)
    p.add_argument("--grid", action="store_true", help="write one grid of all images instead of one file each")

    p = sub.add_parser("edit", help="image-to-image, or inpainting with --mask, by a diffusion model")
    _common(p)
    p.add_argument("model")
    p.add_argument("image", type=Path, help="PNG or JPEG of the model's size")
    p.add_argument("--mask", type=Path, help="white = regenerate, black = keep (inpainting)")
    p.add_argument("--strength", type=float, help="how far to move from the image, 0-1 (default 0.6; 1 with a mask)")
    _sampling(p)

    for name, what in (
        ("score", "log-likelihood bounds of image files"),
        ("classify", "p(label | image) of image files"),
    ):
        p = sub.add_parser(name, help=what)
        _common(p)
        p.add_argument("model")
        p.add_argument("images", type=Path, nargs="+", help="PNG or JPEG files of the model's size")
        p.add_argument("-k", type=int, help="importance samples per image (default: the server's)")
        p.add_argument("--seed", type=int, help="seed of the importance samples")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "score":
            p.add_argument("--label", help="score log p(x | label); default: log p(x) over all labels")
    return top


def _params(args: argparse.Namespace, info: ModelInfo, keys: Sequence[str]) -> dict[str, Any]:
    params = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "label", None) is not None:
        params["label"] = info.label_index(args.label)
    return params


SAMPLING = ("n", "seed", "steps", "sampler", "guidance", "eta", "truncation", "temperature", "output_format", "quality",
            "prompt", "negative_prompt", "height", "width")  # fmt: skip
STREAMED = ("diffusion", "text2image")  # the families whose requests run in steps, with progress


def _write(result: Images, args: argparse.Namespace, out: TextIO) -> None:
    if result.grid_file is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.prefix or result.model}-{result.seed}-grid.{result.extension}"
        path.write_bytes(result.grid_file)
        paths = [path]
    else:
        paths = result.save(args.out, args.prefix)
    for path in paths:
        out.write(f"{path}\n")
    out.write(f"# seed {result.seed}, {result.timings.total_seconds:.2f} s\n")


def _generate(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    info = client.model(args.model)
    params = _params(args, info, SAMPLING)
    if args.grid or args.no_progress or info.family not in STREAMED:
        _write(client.generate(args.model, grid=args.grid, **params), args, out)
        return
    bar, files, seed, timings = ProgressBar(err), dict[int, bytes](), None, None
    for event in client.generate_stream(args.model, **params):
        if isinstance(event, Accepted):
            seed = event.seed
        elif isinstance(event, Progress):
            bar.update(event.step, event.total)
        elif isinstance(event, ImageReady):
            files[event.index] = event.file
        elif isinstance(event, Done):
            timings = event.timings
    bar.finish()
    if timings is None:
        raise GenserveError(0, "stream_ended", "the stream ended before the request finished")
    fmt = params.get("output_format", "png")
    _write(Images(args.model, fmt, [files[i] for i in sorted(files)], seed, timings), args, out)


def _edit(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    info = client.model(args.model)
    params = _params(args, info, (*SAMPLING, "strength"))
    if args.mask is not None:
        _write(client.inpaint(args.model, args.image, args.mask, **params), args, out)
    else:
        _write(client.img2img(args.model, args.image, **params), args, out)


def _models(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    models = client.models()
    if args.json:
        out.write(json.dumps([m.__dict__ for m in models], indent=2) + "\n")
        return
    for m in models:
        h, w, c = m.image_shape[1], m.image_shape[2], m.image_shape[0]
        steps = f", steps {m.steps}" if m.steps else (f", up to {m.max_steps} steps" if m.max_steps else "")
        samplers = f", samplers {'/'.join(m.samplers)}" if m.samplers else ""
        takes = f"{len(m.labels)} labels"
        if m.text is not None:
            takes = f"prompts, sides multiple of {m.text['size_multiple']} up to {m.text['max_side']}"
        out.write(f"{m.name} ({m.family}, {w}x{h}x{c}, {takes}{samplers}{steps})\n")
        out.write(f"  {m.description}\n")
        for setting, figures in m.quality.items():
            shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
            out.write(f"  {setting}: {shown}\n")


def _score(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    info = client.model(args.model)
    params = _params(args, info, ("k", "seed"))
    label = params.pop("label", None)
    scores = client.score(args.model, args.images, label, **params)
    rows = [
        {"file": str(f), "elbo": float(e), "iwae": float(i), "iwae_bits_per_dim": float(b)}
        for f, e, i, b in zip(args.images, scores.elbo, scores.iwae, scores.iwae_bits_per_dim, strict=True)
    ]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    for r in rows:
        out.write(
            f"{r['file']}: elbo {r['elbo']:.2f} nats, iwae {r['iwae']:.2f} nats, {r['iwae_bits_per_dim']:.4f} bits/dim\n"
        )


def _classify(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    info = client.model(args.model)
    result = client.classify(args.model, args.images, **_params(args, info, ("k", "seed")))
    probabilities = [dict(zip(result.labels, p.tolist(), strict=True)) for p in result.probabilities]
    if args.json:
        rows = [
            {"file": str(f), "predicted": label, "probabilities": probs}
            for f, label, probs in zip(args.images, result.predicted_labels, probabilities, strict=True)
        ]
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    for f, label, probs in zip(args.images, result.predicted_labels, probabilities, strict=True):
        top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
        out.write(f"{f}: {label}  ({', '.join(f'{k} {v:.3f}' for k, v in top)})\n")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.url, token=args.token, timeout=args.timeout) as client:
            {"models": lambda: _models(client, args, out), "generate": lambda: _generate(client, args, out, err),
             "edit": lambda: _edit(client, args, out), "score": lambda: _score(client, args, out),
             "classify": lambda: _classify(client, args, out)}[args.command]()  # fmt: skip
    except GenserveError as e:
        err.write(f"genserve-client: {e}\n")
        return 1
    except httpx.TransportError as e:
        err.write(f"genserve-client: cannot reach the server: {type(e).__name__}: {e}\n")
        return 1
    except (ValueError, OSError) as e:  # a label the model lacks, an image file that cannot be read
        err.write(f"genserve-client: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
