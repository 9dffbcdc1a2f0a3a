"""The generative-model trilemma as one picture: quality (FID / floor) against cost (network calls
per image, and measured milliseconds per image), with diversity (recall) as colour, one point
per model and setting.

Quality and recall come from the cards (`genserve eval`); milliseconds per image from
`docs/bench-core.json` (`make bench-core`: images per second through the serving library at 64
images per call, 2 threads, on the machine that ran it). `genserve eval` redraws the picture
after measuring; `genserve trilemma` redraws it from what is already measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from training.evaluate import is_digit_card, is_sample_quality, quality_from_dict

MARKERS = {"gan": "s", "vae": "D", "diffusion": "o", "distilled": "^"}  # by model, else by family


@dataclass(frozen=True)
class Point:
    model: str
    family: str
    setting: str
    calls: int  # network calls per image
    fid_ratio: float
    recall: float
    ms_per_image: float | None
    label_accuracy: float | None = None


def calls_per_image(family: str, setting: str) -> int | None:
    """Network calls one image takes: 1 for a GAN or VAE, the step count for a diffusion setting
    `sampler-steps`; None for settings the picture leaves out (unconditional, guided)."""
    if "uncond" in setting or "cfg" in setting:
        return None
    if family in ("gan", "vae"):
        return 1
    return int(setting.rsplit("-", 1)[1])


def points(model_dir: Path, bench_core: Path) -> list[Point]:
    costs: dict[tuple[str, str], float] = {}
    if bench_core.exists():
        for row in json.loads(bench_core.read_text())["costs"]:
            costs[(row["model"], row["setting"])] = float(row["ms_per_image"])
    out = []
    for card_path in sorted(model_dir.glob("*/model.json")):
        card = json.loads(card_path.read_text())
        measured = dict(card.get("quality", {}))
        floor = measured.pop("floor", None)
        if floor is None or not is_digit_card(card):  # digits only: one floor, one classifier
            continue
        for setting, values in measured.items():
            calls = calls_per_image(card["family"], setting) if is_sample_quality(values) else None
            if calls is None:
                continue
            q = quality_from_dict(values)
            name = card["name"]
            out.append(
                Point(
                    name,
                    card["family"],
                    setting,
                    calls,
                    q.fid / floor["fid"],
                    q.recall,
                    costs.get((name, setting)),
                    q.label_accuracy,
                )
            )
    return out


def plot(pts: list[Point], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120, sharey=True)
    lo = min(p.recall for p in pts)
    for ax, x_of, label in (
        (axes[0], lambda p: p.calls, "network calls per image (log)"),
        (axes[1], lambda p: p.ms_per_image, "measured ms per image, 64 per call, 2 CPU threads (log)"),
    ):
        shown = [p for p in pts if x_of(p) is not None]
        for kind, marker in MARKERS.items():
            fam = [p for p in shown if (p.model if p.model in MARKERS else p.family) == kind]
            if not fam:
                continue
            sc = ax.scatter(
                [x_of(p) for p in fam],
                [p.fid_ratio for p in fam],
                c=[p.recall for p in fam],
                cmap="viridis",
                vmin=lo,
                vmax=1.0,
                marker=marker,
                s=70,
                edgecolors="black",
                linewidths=0.5,
                label=kind,
            )
        # The multi-step diffusion settings sit close together: one label lists them, left to right.
        crowd = sorted((p for p in shown if p.model == "diffusion"), key=x_of)
        seen: dict[float, int] = {}
        for p in sorted((p for p in shown if p not in crowd), key=lambda p: (x_of(p), p.fid_ratio)):
            x = x_of(p)
            nth = seen[x] = seen.get(x, -1) + 1  # points at the same cost: labels stacked, not overlaid
            ax.annotate(
                p.model if p.setting == "default" else p.setting,  # the marker says which model
                (x, p.fid_ratio),
                fontsize=6.5,
                xytext=(5, -8 + 9 * nth),
                textcoords="offset points",
            )
        if crowd:
            ax.annotate(
                "diffusion, left to right:\n" + "\n".join(p.setting for p in crowd),
                (x_of(crowd[-1]), crowd[-1].fid_ratio),
                fontsize=6.5,
                xytext=(8, 6),
                textcoords="offset points",
                ha="left",
                va="bottom",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        if shown:
            xs = [x_of(p) for p in shown]
            ax.set_xlim(min(xs) / 1.5, max(xs) * 12)  # room for the labels on the right
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks([0.8, 1.0, 1.5, 2.0, 3.0, 5.0])
        ax.set_xlabel(label)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("FID / floor (log; 1 = training digits vs held-out)")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.colorbar(sc, ax=axes, label="recall (diversity)")
    fig.suptitle("Quality, cost and diversity: one point per model and setting (lower left is better)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def plot_steps(pts: list[Point], floor_accuracy: float | None, out: Path) -> None:
    """FID / floor and label accuracy against steps: one line per model and sampler (the step-
    count settings of each diffusion model), GAN and VAE as single points at one call."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (fid_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharex=True)
    lines: dict[tuple[str, str], list[Point]] = {}
    for p in pts:
        key = (p.model, p.setting.split("-")[0]) if p.family == "diffusion" else (p.model, "")
        lines.setdefault(key, []).append(p)
    for (model, sampler), group in sorted(lines.items()):
        group.sort(key=lambda p: p.calls)
        name = f"{model}, {sampler}" if sampler else model
        style = {"marker": MARKERS.get(model, MARKERS.get(group[0].family, "o")), "markersize": 6, "label": name}
        fid_ax.plot([p.calls for p in group], [p.fid_ratio for p in group], **style)
        acc = [p for p in group if p.label_accuracy is not None]
        acc_ax.plot([p.calls for p in acc], [p.label_accuracy for p in acc], **style)
    fid_ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    fid_ax.set_ylabel("FID / floor (1 = training digits vs held-out)")
    if floor_accuracy is not None:
        acc_ax.axhline(floor_accuracy, color="grey", linewidth=0.8, linestyle="--")
    acc_ax.set_ylabel("label accuracy (dashed: the classifier's own)")
    for ax in (fid_ax, acc_ax):
        ax.set_xscale("log")
        ax.set_xlabel("steps (network calls per image, log)")
        ax.grid(alpha=0.3, which="both")
    fid_ax.set_yscale("log")
    fid_ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    fid_ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fid_ax.set_yticks([0.8, 1.0, 1.5, 2.0, 3.0, 5.0])
    acc_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Sample quality against steps, per model and sampler (guidance 1; docs/quality.md)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def floor_label_accuracy(model_dir: Path) -> float | None:
    for card_path in sorted(model_dir.glob("*/model.json")):
        floor = json.loads(card_path.read_text()).get("quality", {}).get("floor")
        if floor and floor.get("label_accuracy") is not None:
            return float(floor["label_accuracy"])
    return None


def write_trilemma(model_dir: Path, bench_core: Path, out: Path) -> list[Point]:
    """The trilemma picture at `out`, and quality against steps beside it (`quality-vs-steps.png`)."""
    pts = points(model_dir, bench_core)
    plot(pts, out)
    plot_steps(pts, floor_label_accuracy(model_dir), out.with_name("quality-vs-steps.png"))
    return pts
