"""CLIP's byte-level BPE tokenizer in plain Python, for the text encoders of pipeline folders.

Reads the files a Stable-Diffusion-layout `tokenizer/` folder holds: either `vocab.json` with
`merges.txt` (CLIP's own format) or a `tokenizer.json` (the Hugging Face tokenizers format),
plus `tokenizer_config.json` / `special_tokens_map.json` for the length and special tokens.
Its ids equal those of transformers' `CLIPTokenizer` (tests/service/test_clip_tokenizer.py
checks them string by string), without torch or a tokenizer library on the serving path.

The steps, as the reference runs them: NFC, runs of whitespace to one space, lower case; split
into words, single digits and punctuation runs; each word's UTF-8 bytes mapped to printable
characters (GPT-2's byte table); the word's last symbol marked `</w>`; merges applied lowest
rank first; then `<|startoftext|>` ids `<|endoftext|>`, truncated and padded to the length.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import regex

from service.errors import ModelLoadError, read_json_object

_WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_SPACE = regex.compile(r"\s+")
WORD_END = "</w>"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character (printable bytes map to themselves)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def normalize(text: str) -> str:
    return str(_SPACE.sub(" ", unicodedata.normalize("NFC", text))).lower()


def pre_tokenize(text: str) -> list[str]:
    """The words of already-normalised-or-not `text`, each as byte characters."""
    table = bytes_to_unicode()
    return ["".join(table[b] for b in w.encode("utf-8")) for w in _WORDS.findall(normalize(text))]


class ClipTokenizer:
    """Text to fixed-length token ids, as the pipeline's text encoder was trained on."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Iterable[tuple[str, str]],
        *,
        max_length: int,
        bos: str = "<|startoftext|>",
        eos: str = "<|endoftext|>",
        pad: str = "<|endoftext|>",
        unk: str = "<|endoftext|>",
    ) -> None:
        for name, tok in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
            if tok not in vocab:
                raise ValueError(f"the {name} token {tok!r} is not in the vocabulary")
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = vocab[bos], vocab[eos], vocab[pad], vocab[unk]
        self._specials = regex.compile(
            "(" + "|".join(regex.escape(t) for t in sorted({bos, eos, pad}, key=len, reverse=True)) + ")"
        )
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_folder(cls, folder: Path) -> ClipTokenizer:
        """Loads `vocab.json` + `merges.txt`, or `tokenizer.json`; a missing or malformed file
        fails with a message naming it."""
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                config.update({k: _token_text(v) for k, v in read_json_object(folder / name).items()})
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = read_json_object(folder / "vocab.json")
            merges = _read_merges(
                (folder / "merges.txt").read_text(encoding="utf-8").splitlines(), folder / "merges.txt"
            )
        elif (folder / "tokenizer.json").is_file():
            model = read_json_object(folder / "tokenizer.json").get("model", {})
            if model.get("type") != "BPE" or "vocab" not in model:
                raise ModelLoadError(
                    f"{folder / 'tokenizer.json'}: not a BPE tokenizer (model.type {model.get('type')!r})"
                )
            vocab = model["vocab"]
            lines = [" ".join(m) if isinstance(m, list) else str(m) for m in model.get("merges", [])]
            merges = _read_merges(lines, folder / "tokenizer.json")
        else:
            raise ModelLoadError(f"{folder}: no tokenizer files (want vocab.json and merges.txt, or tokenizer.json)")
        length = config.get("model_max_length", 77)
        if not isinstance(length, int) or not 2 < length <= 4096:
            raise ModelLoadError(
                f"{folder / 'tokenizer_config.json'}: model_max_length {length!r} is not a usable length"
            )
        specials = {k: str(config[k]) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
        try:
            return cls(
                vocab,
                merges,
                max_length=length,
                bos=specials.get("bos_token", "<|startoftext|>"),
                eos=specials.get("eos_token", "<|endoftext|>"),
                pad=specials.get("pad_token", "<|endoftext|>"),
                unk=specials.get("unk_token", "<|endoftext|>"),
            )
        except ValueError as e:
            raise ModelLoadError(f"{folder}: {e}") from None

    def _bpe(self, word: str) -> list[int]:
        """One pre-tokenized word's ids."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        symbols = [*word[:-1], word[-1] + WORD_END]
        while len(symbols) > 1:
            pairs = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
            ranked = [(r, i) for r, i in pairs if r is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and self.ranks.get((symbols[i], symbols[i + 1])) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.vocab.get(s, self.unk_id) for s in symbols]
        if len(self._cache) < 50_000:
            self._cache[word] = ids
        return ids

    def tokens(self, text: str) -> list[int]:
        """The ids of `text` without the start and end tokens, untruncated."""
        ids: list[int] = []
        for k, part in enumerate(self._specials.split(text)):
            if k % 2:  # a special token written in the text
                ids.append(self.vocab[part])
                continue
            for word in pre_tokenize(part):
                ids.extend(self._bpe(word))
        return ids

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """(len(texts), max_length) int32 ids, each text truncated to fit with its start and end
        tokens and padded after them; and how many of each text's tokens were cut."""
        out = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        cut: list[int] = []
        for i, text in enumerate(texts):
            ids = self.tokens(text)
            keep = ids[: self.max_length - 2]
            cut.append(len(ids) - len(keep))
            row = [self.bos_id, *keep, self.eos_id]
            out[i, : len(row)] = row
        return out, cut


def _token_text(value: Any) -> Any:
    """A special token as the configs write it: a string or {"content": ...}."""
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    return value


def _read_merges(lines: list[str], path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ModelLoadError(f"{path}: merge {n} {line!r} is not two symbols")
        merges.append((parts[0], parts[1]))
    return merges
