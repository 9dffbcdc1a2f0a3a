"""The emoji image sets on the npm registry, as a colour text-to-image data set.

`emoji-datasource-{apple,google,twitter,facebook}` (version pinned below) each ship one 64-pixel
PNG per emoji and the same `emoji.json` index: a name ("GRINNING FACE WITH BIG EYES"), short
names ("smiley"), a category ("Smileys & Emotion") and subcategory. Four drawing styles of one
emoji are natural variation. `fetch` takes the packages with `npm pack` (a registry package, no
data-set download) into a cache folder; `load_split` composites every drawing onto a fixed
background at the asked size and splits by emoji, not by vendor, so a held-out emoji is unseen
in every style. The "Component" category (bare skin-tone and hair swatches) is left out, and so
are skin-tone variants: each emoji appears once per vendor.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = "16.0.0"
VENDORS = ("apple", "google", "twitter", "facebook")
BACKGROUND = (255, 255, 255)
HELDOUT_SHARE = 0.1
SPLIT_SALT = "genserve-emoji-split-1"
CATEGORIES = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
DATA = (
    f"emoji-datasource-{{apple,google,twitter,facebook}}@{VERSION} from the npm registry (64-pixel PNGs and "
    "emoji.json); base emoji without skin-tone variants or the Component category; held out by emoji"
)


def cache_dir() -> Path:
    return Path(os.environ.get("GENSERVE_DATA", Path.home() / ".cache" / "genserve")) / "emoji" / VERSION


def fetch(cache: Path | None = None) -> Path:
    """Each vendor's package unpacked under `cache` (once): `<vendor>/emoji.json`, `<vendor>/64/*.png`."""
    cache = cache or cache_dir()
    for vendor in VENDORS:
        done = cache / vendor / ".complete"
        if done.exists():
            continue
        (cache / vendor / "64").mkdir(parents=True, exist_ok=True)
        package = f"emoji-datasource-{vendor}@{VERSION}"
        out = subprocess.run(
            ["npm", "pack", package, "--pack-destination", str(cache), "--silent"],
            capture_output=True, text=True, check=False, cwd=cache,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"npm pack {package} failed: {out.stderr[-2000:]}")
        tgz = cache / out.stdout.strip().splitlines()[-1]
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if member.name == "package/emoji.json":
                    target = cache / vendor / "emoji.json"
                elif parts[1:3] == ["img", vendor] and parts[3:4] == ["64"] and member.name.endswith(".png"):
                    target = cache / vendor / "64" / parts[-1]
                else:
                    continue
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
        tgz.unlink()
        done.write_text(package)
    return cache


@dataclass(frozen=True)
class Emoji:
    unified: str
    name: str  # lower case: "grinning face with big eyes"
    short_names: tuple[str, ...]  # underscores as spaces: "smiley"
    category: str
    subcategory: str
    image: str  # file name, the same in every vendor's folder
    vendors: tuple[str, ...]  # the vendors that draw it


def index(cache: Path) -> list[Emoji]:
    """Every base emoji outside the Component category, in the packages' order."""
    raw = json.loads((cache / VENDORS[0] / "emoji.json").read_text())
    out = []
    for e in sorted(raw, key=lambda e: e["sort_order"]):
        if e["category"] == "Component":
            continue
        vendors = tuple(v for v in VENDORS if e.get(f"has_img_{v}") and (cache / v / "64" / e["image"]).is_file())
        if not vendors:
            continue
        name = (e.get("name") or e["short_name"].replace("_", " ")).lower()
        shorts = tuple(s.replace("_", " ") for s in e["short_names"])
        out.append(Emoji(e["unified"], name, shorts, e["category"], e["subcategory"], e["image"], vendors))
    return out


def is_heldout(emoji: Emoji) -> bool:
    """A fixed ~10% of emoji, by a salted hash of the code point (stable across versions)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{emoji.unified}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_SHARE


def render(path: Path, size: int) -> np.ndarray:
    """One drawing: RGBA composited onto the background, resized to (size, size): uint8 (3, size, size)."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, np.uint8).transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class EmojiSplit:
    """Images uint8 (N, 3, S, S); per image its emoji (index into `emoji`) and vendor index."""

    emoji: list[Emoji]
    images: np.ndarray
    emoji_of: np.ndarray
    vendor_of: np.ndarray
    heldout: np.ndarray  # bool per image

    def part(self, heldout: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = self.heldout == heldout
        return self.images[keep], self.emoji_of[keep], self.vendor_of[keep]

    def category_of(self, emoji_ids: np.ndarray) -> np.ndarray:
        return np.array([CATEGORIES.index(self.emoji[i].category) for i in emoji_ids], np.int64)


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 drawings (N, 3, S, S) -> float32 in [-1, 1], what the emoji networks take."""
    return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def load_split(size: int = 32, cache: Path | None = None) -> EmojiSplit:
    """All drawings at `size` pixels (rendered once, then read from the cache)."""
    cache = fetch(cache)
    emoji = index(cache)
    stored = cache / f"rendered-{size}.npz"
    if stored.is_file():
        data = np.load(stored)
        images, emoji_of, vendor_of = data["images"], data["emoji_of"], data["vendor_of"]
    else:
        from tqdm import tqdm

        rows = [(k, v) for k, e in enumerate(emoji) for v, vendor in enumerate(VENDORS) if vendor in e.vendors]
        images = np.stack(
            [render(cache / VENDORS[v] / "64" / emoji[k].image, size) for k, v in tqdm(rows, desc="render")]
        )
        emoji_of = np.array([k for k, _ in rows], np.int64)
        vendor_of = np.array([v for _, v in rows], np.int64)
        np.savez(stored, images=images, emoji_of=emoji_of, vendor_of=vendor_of)
    heldout = np.array([is_heldout(emoji[k]) for k in emoji_of])
    return EmojiSplit(emoji, images, emoji_of, vendor_of, heldout)


def captions(e: Emoji) -> list[str]:
    """The texts an emoji is trained with: its name and short names, each also with its category,
    and the bare category (so a category alone is a prompt: "food & drink")."""
    texts = [e.name, *(s for s in e.short_names if s != e.name)]
    return texts + [f"{e.category.lower()}: {t}" for t in texts] + [e.category.lower()]


def main() -> None:
    """`python -m training.emoji_data`: fetch, render, and print what the split holds."""
    split = load_split()
    held = {int(k) for k in split.emoji_of[split.heldout]}
    print(f"{len(split.emoji)} emoji, {len(split.images)} drawings at {split.images.shape[-1]} px")
    print(f"held out: {len(held)} emoji, {int(split.heldout.sum())} drawings")


if __name__ == "__main__":
    main()
