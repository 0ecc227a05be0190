"""A causal transformer language model, defined here so no weights or configs are downloaded.

GPT-2's layout (Radford et al. 2019): learned token and position embeddings, pre-LayerNorm
blocks of causal multi-head self-attention (one fused query/key/value projection) and a GELU
feed-forward network, a final LayerNorm and a linear head over the vocabulary. The head is not
tied to the token embedding, so the embedding's gradient has non-zero rows exactly for the
tokens a client used, the leak Decepticons reads first (Fowl et al. 2022, sec. 3).

``transformer3`` is a small 3-layer model for tests; ``gpt2-small`` has GPT-2 small's shape
(12 layers, width 768, 12 heads, 1024 positions) with the tokenizer's vocabulary, randomly
initialized with GPT-2's N(0, 0.02) scheme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gialab.errors import GialabError


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    max_positions: int = 512
    width: int = 256
    layers: int = 3
    heads: int = 4
    ff_width: int | None = None  # default 4 x width

    @property
    def hidden(self) -> int:
        return self.ff_width or 4 * self.width


def transformer3_config(vocab_size: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=vocab_size, max_positions=512, width=256, layers=3, heads=4)


def gpt2_small_config(vocab_size: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=vocab_size, max_positions=1024, width=768, layers=12, heads=12)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not divisible by {config.heads} heads")
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        y = scores.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.width)
        self.ff = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class TransformerLM(nn.Module):
    """Token ids (B, T) int64 -> next-token logits (B, T, vocab)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_positions, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.apply(_init_gpt2)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.config.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds the model's {self.config.max_positions} positions")
        positions = torch.arange(t, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init_gpt2(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Causal language-modelling loss: each position predicts the next token (mean over tokens)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))


def check_vocabulary(weights: Path, vocab_size: int) -> None:
    """Refuse a checkpoint whose token embedding has another vocabulary than the tokenizer's.

    A model trained with another tokenizer would otherwise fail with a bare shape error (or,
    worse, with a same-sized vocabulary, silently map ids to the wrong words, which no check
    can see). Unreadable files are left to :func:`gialab.models.load_weights` to report.
    """
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_weights reports unreadable files with their reason
        return
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    table = state.get("token_embedding.weight") if isinstance(state, dict) else None
    if isinstance(table, torch.Tensor) and table.ndim == 2 and table.shape[0] != vocab_size:
        raise GialabError(
            f"weights {weights} have a vocabulary of {table.shape[0]} tokens but the dataset's tokenizer has "
            f"{vocab_size} (BERT WordPiece); text models must be trained with the dataset's tokenizer"
        )
