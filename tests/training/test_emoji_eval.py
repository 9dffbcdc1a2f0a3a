"""The emoji model's evaluation: the retrieval measure on features whose answer is known, and
the whole chain (classifier trained and exported, a tiny text-to-image model exported, every
measure run through the serving library, card, reports and grid written) on synthetic drawings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.registry import check_models
from tests.training.synthetic_emoji import NAMES, TINY, synthetic_split
from training.emoji_category import export_emoji_category, train_emoji_category
from training.emoji_data import CATEGORIES
from training.emoji_eval import (
    CLASSIFIER,
    GRID_PROMPTS,
    Chance,
    Counts,
    export_emoji_classifier,
    retrieval,
    run,
    train_emoji_classifier,
)
from training.evaluate import FeatureNet, is_digit_card, table_from_cards
from training.text2image_train import SIZE, export_text2image, train_text2image
from training.train import default_config


def test_retrieval_counts_the_named_emoji_among_the_nearest_drawings() -> None:
    bank = np.array([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [9, 0], [9.1, 0.1], [9.2, 0], [9.3, 0], [9.4, 0]])
    emoji = np.array([0, 0, 1, 1, 2, 3, 3, 3, 3])
    queries = np.array([[0.05, 0.0], [5.0, 5.0], [9.25, 0.0]])
    assert retrieval(queries, np.array([0, 1, 2]), bank, emoji) == pytest.approx((2 / 3, 3 / 3))
    # Asking for another emoji: the first query finds emoji 1 fourth-nearest (top-5 only), the
    # second has emoji 0 sixth-nearest (behind the five at x >= 9), the third is right.
    assert retrieval(queries, np.array([1, 0, 3]), bank, emoji) == pytest.approx((1 / 3, 2 / 3))
    # Real drawings as queries: each is left out of its own search, so its twin is its nearest.
    assert retrieval(bank[:4], emoji[:4], bank, emoji, rows=np.arange(4)) == (1.0, 1.0)
    top1, _ = retrieval(bank[:4], emoji[:4], bank, emoji)
    assert top1 == 1.0, "without leaving out, each finds itself (also its own emoji)"
    lonely = retrieval(bank[4:5], emoji[4:5], bank, emoji, rows=np.array([4]))
    assert lonely == (0.0, 0.0), "an emoji with one drawing cannot be found once that drawing is left out"


def test_chance_figures_follow_the_split() -> None:
    ref = Chance.of(synthetic_split(heldout=(6, 7)))
    assert ref.drawings == 2 * len(NAMES) and ref.majority == 1.0
    assert ref.chance1 == pytest.approx(2 / 16) and ref.chance5 == pytest.approx(1 - (14 / 16) ** 5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding an emoji classifier trained for a few steps on the synthetic split."""
    root = tmp_path_factory.mktemp("emoji")
    cfg = default_config("emoji-classifier", steps=4, batch_size=8, checkpoint_dir=root / "ckpt")
    assert train_emoji_classifier(cfg, SPLIT).step == 4
    assert export_emoji_classifier(root / "ckpt" / "emoji-classifier.safetensors", root / "models") < 1e-4
    return root / "models"


SPLIT = synthetic_split(heldout=(2, 6))


def test_the_classifier_reads_colour_drawings(models: Path) -> None:
    predicted, feats = FeatureNet(models / CLASSIFIER, 1)(np.zeros((3, 3, SIZE, SIZE), np.float32))
    assert predicted.shape == (3,) and feats.shape == (3, 256) and set(predicted) <= set(range(len(CATEGORIES)))


def test_train_export_and_measure_a_text_model(models: Path, tmp_path: Path) -> None:
    t2i = default_config("text2image", steps=2, batch_size=4, checkpoint_dir=tmp_path / "ckpt", run="t2i")
    train_text2image(t2i, TINY, SPLIT)
    export_text2image(tmp_path / "ckpt" / "t2i.safetensors", models / "emoji-text")

    counts = Counts(per_name=2, train_names=3, per_category=2, grid_seeds=2)
    report, figure = tmp_path / "docs" / "emoji-text.md", tmp_path / "docs" / "figures" / "grid.png"
    report.parent.mkdir()
    measured = run(models, "emoji-text", report, figure, threads=1, split=SPLIT, counts=counts)

    rows = measured["rows"]
    assert rows["training names"]["n"] == 3 * 2 and rows["held-out names"]["n"] == 2 * 2
    assert rows["category prompts"]["n"] == len(CATEGORIES) * 2
    assert rows["floor: training drawings"]["n"] == 2 * 2, "as many training drawings as held-out ones"
    assert "fid" not in rows["reference: held-out drawings"], "no FID of the held-out drawings against themselves"
    for row in rows.values():
        assert all(np.isfinite(v) for v in row.values()), row
        assert 0.0 <= row["category_accuracy"] <= 1.0
    assert rows["reference: held-out drawings"]["name_top1"] == 1.0, "each drawing's twin is its nearest"
    assert json.loads((models / "emoji-text" / "report.json").read_text()) == measured
    card = json.loads((models / "emoji-text" / "model.json").read_text())
    wanted = ("training names", "held-out names", "category prompts")
    assert set(card["quality"]) == {f"{measured['setting']} {k}" for k in wanted}
    text = report.read_text()
    assert "](figures/grid.png)" in text and "| held-out names | generated | 4 |" in text
    link = (models / "emoji-text" / "report.md").read_text().split("](")[1].split(")")[0]
    assert (models / "emoji-text" / link).resolve() == figure.resolve(), "the folder's report links the same grid"
    with Image.open(figure) as im:
        assert im.size[1] == 2 * (len(GRID_PROMPTS) * (SIZE + 2) + 2), "one row per prompt, 2x"
    with pytest.raises(ValueError, match="no evaluated model"):
        table_from_cards(models)  # the digit table leaves the emoji cards out


def test_a_colour_model_by_category_is_an_ordinary_diffusion_folder(models: Path, tmp_path: Path) -> None:
    cfg = default_config("emoji-category", steps=2, batch_size=4, checkpoint_dir=tmp_path / "ckpt")
    assert train_emoji_category(cfg, SPLIT).step == 2
    assert export_emoji_category(tmp_path / "ckpt" / "emoji-category.safetensors", models / "emoji-category") < 1e-4
    cards, broken = check_models(models)
    card = cards["emoji-category"]
    assert broken == {} and card.family == "diffusion" and card.image_shape == (3, SIZE, SIZE)
    assert card.labels == [c.lower() for c in CATEGORIES] and card.null_label == len(CATEGORIES)
    assert not is_digit_card(card.model_dump()), "the digit evaluation leaves it out"

    counts = Counts(per_category=2, grid_seeds=2)
    report, figure = tmp_path / "emoji-category.md", tmp_path / "grid.png"
    measured = run(models, "emoji-category", report, figure, threads=1, split=SPLIT, counts=counts)
    rows = measured["rows"]
    assert set(rows) == {"floor: training drawings", "category labels, guidance 1", "category labels, guidance 3"}
    assert rows["category labels, guidance 3"]["n"] == len(CATEGORIES) * 2
    assert (
        measured["setting"] == "dpmpp_2m-20"
        and "| category labels, guidance 1 | generated | 18 |" in report.read_text()
    )
    with Image.open(figure) as im:
        assert im.size[1] == 2 * (len(CATEGORIES) * (SIZE + 2) + 2) and im.mode == "RGB"
