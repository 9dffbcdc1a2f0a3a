"""genserve's torch-free CLIP tokenizer gives transformers' CLIPTokenizer ids, text by text, from
both file formats a pipeline's tokenizer folder may hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from service.clip_tokenizer import ClipTokenizer
from service.errors import ModelLoadError
from training.sd_layout import TINY_CORPUS, learn_bpe, write_tokenizer

TEXTS = [
    *TINY_CORPUS,
    "",
    "a",
    "Héllo   WORLD 123 !!",
    "café naïve résumé Ångström",
    "cafe\u0301 decomposed: e + combining acute, NFC makes it one letter",
    "emoji 😀 face 🍎🍎 and 👩‍🚀",
    "don't it's we're they'll I'd you've I'm",
    "tab\tnew\nline\r\n  spaced   out  ",
    "x <|endoftext|> y <|startoftext|>",
    "heart-shaped, 4k; (high detail) [masterpiece] {x} ~`@#$%^&*",
    "日本語のテキストと中文",
    "numbers 1234567890 and 3.14159 and 1e-4",
    "a " * 100,  # past the length: truncated
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab, merges = learn_bpe(TINY_CORPUS, 150)
    path = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(path, vocab, merges, max_length=24)
    return path


def reference_ids(folder: Path, texts: list[str], length: int) -> np.ndarray:
    ref = CLIPTokenizer.from_pretrained(str(folder))
    out = ref(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np").input_ids
    return np.asarray(out)


def test_ids_equal_transformers_from_vocab_and_merges(folder: Path) -> None:
    ours = ClipTokenizer.from_folder(folder)
    got, cut = ours(TEXTS)
    want = reference_ids(folder, TEXTS, 24)
    for text, g, w in zip(TEXTS, got, want, strict=True):
        assert g.tolist() == w.tolist(), text
    assert got.dtype == np.int32 and got.shape == (len(TEXTS), 24)
    assert cut[TEXTS.index("a " * 100)] == 100 - 22 and cut[0] == 0
    # The vocabulary merges whole words, so the comparison covers merges, not bytes only.
    assert len(ours.tokens("grinning face")) < len("grinning face")


def test_ids_equal_transformers_from_tokenizer_json(folder: Path, tmp_path: Path) -> None:
    """transformers saves tokenizer.json (and no vocab.json) today; that folder loads the same."""
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
    got, _ = ClipTokenizer.from_folder(tmp_path)(TEXTS)
    assert got.tolist() == reference_ids(folder, TEXTS, 24).tolist()


def test_bad_folders_name_the_file(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        ClipTokenizer.from_folder(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ModelLoadError, match=r"merges\.txt: merge 2 'a b c'"):
        ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_bytes((folder / "merges.txt").read_bytes())
    (tmp_path / "vocab.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"vocab\.json: expected a JSON object"):
        ClipTokenizer.from_folder(tmp_path)
    vocab = json.loads((folder / "vocab.json").read_text())
    del vocab["<|startoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelLoadError, match=re.escape("bos token '<|startoftext|>' is not in the vocabulary")):
        ClipTokenizer.from_folder(tmp_path)
