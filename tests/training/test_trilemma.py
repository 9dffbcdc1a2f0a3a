"""The trilemma picture's points: from the cards' sample quality and bench-core's measured costs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.trilemma import calls_per_image, floor_label_accuracy, points, write_trilemma

SHIPPED = Path(__file__).resolve().parents[2] / "exported"


def test_calls_per_image() -> None:
    assert calls_per_image("gan", "default") == 1 and calls_per_image("vae", "default") == 1
    assert calls_per_image("diffusion", "dpmpp_2m-10") == 10 and calls_per_image("diffusion", "ddim-50") == 50
    assert calls_per_image("diffusion", "dpmpp_2m-10-uncond") is None  # unconditional: not a cost point
    assert calls_per_image("diffusion", "dpmpp_2m-20-cfg2") is None


def test_points_take_quality_from_cards_and_ms_from_bench_core(tmp_path: Path) -> None:
    for name in ("gan", "diffusion"):
        (tmp_path / name).mkdir()
        shutil.copy(SHIPPED / name / "model.json", tmp_path / name / "model.json")
    bench = tmp_path / "bench-core.json"
    bench.write_text(json.dumps({"costs": [{"model": "diffusion", "setting": "dpmpp_2m-10", "ms_per_image": 13.5}]}))
    pts = {(p.model, p.setting): p for p in points(tmp_path, bench)}
    card = json.loads((SHIPPED / "diffusion" / "model.json").read_text())["quality"]
    p = pts[("diffusion", "dpmpp_2m-10")]
    assert p.calls == 10 and p.ms_per_image == 13.5 and p.recall == card["dpmpp_2m-10"]["recall"]
    assert p.fid_ratio == pytest.approx(card["dpmpp_2m-10"]["fid"] / card["floor"]["fid"])
    assert pts[("gan", "default")].ms_per_image is None and pts[("gan", "default")].calls == 1
    assert not any("edit" in s or "uncond" in s for _, s in pts)  # edits and unconditional rows are not cost points
    out = tmp_path / "trilemma.png"
    write_trilemma(tmp_path, bench, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "quality-vs-steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn beside it
    assert pts[("diffusion", "dpmpp_2m-10")].label_accuracy == card["dpmpp_2m-10"]["label_accuracy"]
    assert floor_label_accuracy(tmp_path) == card["floor"]["label_accuracy"]


def test_the_readme_and_the_quality_report_show_the_cards_figures() -> None:
    """The quality table in the README and docs/quality.md is the one `genserve eval` makes from
    the shipped cards: a figure changed in one place and not the other fails here."""
    from training.evaluate import table_from_cards

    table = table_from_cards(SHIPPED)
    assert table in (SHIPPED.parent / "docs" / "quality.md").read_text()
    assert table in (SHIPPED.parent / "README.md").read_text()
