"""The emoji text-to-image recipe end to end on a handful of synthetic drawings (the real data
comes from npm and trains for hours): a few optimiser steps, resume, export to the Stable
Diffusion layout with genserve's card, and generation through the serving library."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.jobs import DiffusionJob
from service.registry import check_models, load_model
from service.text2image import TextToImage
from tests.training.synthetic_emoji import TINY, synthetic_split
from training import checkpoint
from training.emoji_data import VENDORS, Emoji, captions, is_heldout, render
from training.text2image_train import SIZE, copy_tokenizer, export_text2image, train_text2image
from training.train import default_config


def test_train_resume_export_and_serve(tmp_path: Path) -> None:
    cfg = default_config("text2image", steps=3, batch_size=4, checkpoint_dir=tmp_path / "ckpt", run="t2i")
    trainer = train_text2image(cfg, TINY, synthetic_split())
    assert trainer.step == 3 and (tmp_path / "ckpt" / "t2i-tokenizer" / "vocab.json").is_file()
    more = default_config("text2image", steps=5, batch_size=4, checkpoint_dir=tmp_path / "ckpt", run="t2i")
    trained = train_text2image(more, TINY, synthetic_split())
    assert trained.step == 5, "resumed at 3, ran 2 more"
    assert checkpoint.read_meta(tmp_path / "ckpt" / "t2i.safetensors")["step"] == 5
    weights = tmp_path / "weights" / "t2i.safetensors"  # committed form: no optimiser state, tokenizer beside
    trained.save_weights(weights)
    copy_tokenizer(more, weights)
    elsewhere = default_config("text2image", steps=6, batch_size=4, checkpoint_dir=tmp_path / "b", run="t2i",
                               resume_from=weights)  # fmt: skip
    assert train_text2image(elsewhere, TINY, synthetic_split()).step == 6, "resumed from the weights at 5"
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "b" / "t2i-tokenizer" / name).read_text() == (
            tmp_path / "ckpt" / "t2i-tokenizer" / name
        ).read_text()

    models = tmp_path / "models"
    diffs = export_text2image(tmp_path / "ckpt" / "t2i.safetensors", models / "emoji-text")
    assert max(diffs.values()) < 1e-4, diffs
    assert not (models / "emoji-text" / "vae_decoder").exists(), "pixel space: no VAE"
    cards, broken = check_models(models)
    assert broken == {} and cards["emoji-text"].image.height == SIZE and cards["emoji-text"].image.channels == 3
    text = cards["emoji-text"].text
    assert text is not None and text.size_multiple == TINY.patch * 2, "2x2 patches, then one halving"
    model = load_model(models / "emoji-text", device="cpu")
    assert model.pipeline is not None

    async def go() -> np.ndarray:
        service = TextToImage(model.pipeline)
        try:
            job = DiffusionJob(seed=1, n=2, steps=3, sampler="ddim", guidance=3.0, prompt="red apple")
            return (await service.generate(job)).images
        finally:
            await service.close()

    images = asyncio.run(go())
    assert images.shape == (2, 3, SIZE, SIZE) and np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_captions_and_the_split_by_emoji() -> None:
    apple = Emoji("1F34E", "red apple", ("apple",), "Food & Drink", "food-fruit", "1f34e.png", VENDORS)
    assert captions(apple) == ["red apple", "apple", "food & drink: red apple", "food & drink: apple", "food & drink"]
    codes = [Emoji(f"{k:05X}", "x", (), "Symbols", "s", "x.png", VENDORS) for k in range(4000)]
    share = np.mean([is_heldout(e) for e in codes])
    assert 0.08 < share < 0.12
    assert is_heldout(codes[7]) == is_heldout(Emoji(codes[7].unified, "other", (), "Flags", "f", "y.png", ()))


@pytest.mark.parametrize("size", [32, 16])
def test_drawings_are_composited_on_white(tmp_path: Path, size: int) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (255, 0, 0, 255)  # an opaque red square on a transparent field
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    (tmp_path / "e.png").write_bytes(buf.getvalue())
    out = render(tmp_path / "e.png", size)
    assert out.shape == (3, size, size) and out.dtype == np.uint8
    assert tuple(out[:, 0, 0]) == (255, 255, 255) and tuple(out[:, size // 2, size // 2]) == (255, 0, 0)
