"""A handful of synthetic emoji drawings in `EmojiSplit` form, for tests of the emoji recipes
(the real drawings come from npm and train for hours)."""

from __future__ import annotations

import numpy as np

from training.emoji_data import VENDORS, Emoji, EmojiSplit
from training.text2image_train import SIZE, Arch

TINY = Arch(text_hidden=32, text_layers=1, text_heads=2, blocks=(32, 32), unet_heads=2, cross_levels=1)
NAMES = ["red apple", "green apple", "banana", "grapes", "lemon", "cherries", "dog face", "cat face"]
CATEGORY = ["Food & Drink"] * 6 + ["Animals & Nature"] * 2


def synthetic_split(heldout: tuple[int, ...] = ()) -> EmojiSplit:
    """Eight emoji, two drawings each (one random picture per emoji, each drawing of it that
    picture plus a little noise, like two vendors' styles); `heldout`: the emoji held out."""
    rng = np.random.default_rng(0)
    emoji = [
        Emoji(f"1F{k:03X}", name, (name.split()[-1],), CATEGORY[k], "s", f"{k}.png", VENDORS[:2])
        for k, name in enumerate(NAMES)
    ]
    emoji_of = np.repeat(np.arange(len(NAMES)), 2)
    pictures = rng.integers(0, 256, (len(NAMES), 3, SIZE, SIZE))
    noise = rng.integers(-8, 9, (len(emoji_of), 3, SIZE, SIZE))
    images = np.clip(pictures[emoji_of] + noise, 0, 255).astype(np.uint8)
    return EmojiSplit(emoji, images, emoji_of, np.tile([0, 1], len(NAMES)), np.isin(emoji_of, heldout))
