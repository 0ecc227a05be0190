"""The causal transformer LMs: shapes, causality, the LM loss, the embedding leak, configs, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gialab.errors import GialabError
from gialab.fl import fedsgd_update
from gialab.fl.client import parameter_index
from gialab.models import build_model
from gialab.models.transformer import (
    TransformerConfig, TransformerLM, check_vocabulary, gpt2_small_config, lm_loss, transformer3_config,
)


def _small(vocab: int = 50) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=vocab, max_positions=16, width=32, layers=2, heads=4))


def test_logits_shape_and_causality() -> None:
    model = _small()
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    assert logits.shape == (3, 10, 50)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 50
    # a later token changes nothing before it (causal mask) and something from its own position on
    assert torch.equal(model(changed)[:, :6], logits[:, :6])
    assert not torch.allclose(model(changed)[:, 6], logits[:, 6])


def test_lm_loss_is_next_token_cross_entropy() -> None:
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    manual = sum(F.cross_entropy(logits[b, t][None], ids[b, t + 1][None]) for b in range(2) for t in range(4)) / 8
    assert torch.allclose(lm_loss(logits, ids), manual)


def test_embedding_gradient_rows_are_nonzero_exactly_for_tokens_before_the_last() -> None:
    model = _small()
    ids = torch.tensor([[3, 7, 7, 11], [5, 3, 20, 2]])
    update = fedsgd_update(model, lm_loss, ids, ids)
    grad = update[parameter_index(model, model.token_embedding.weight)]
    used = set(torch.nonzero(grad.norm(dim=1) > 0).flatten().tolist())
    # The head is untied, so only the inputs touch the table; and a causal LM's last token predicts
    # nothing and is seen by no later position, so it leaks only as a label (11 and 2 here).
    assert used == set(ids[:, :-1].flatten().tolist())


def test_configs_and_registry() -> None:
    small = transformer3_config(30522)
    assert (small.layers, small.width, small.heads, small.hidden, small.max_positions) == (3, 256, 4, 1024, 512)
    gpt2 = gpt2_small_config(30522)
    assert (gpt2.layers, gpt2.width, gpt2.heads, gpt2.hidden, gpt2.max_positions) == (12, 768, 12, 3072, 1024)
    torch.manual_seed(0)
    model = build_model("transformer3", (32,), 30522)
    assert isinstance(model, TransformerLM) and model.vocab_size == 30522
    with pytest.raises(GialabError, match="exceeds model 'transformer3'"):
        build_model("transformer3", (600,), 30522)
    with pytest.raises(GialabError, match="takes token sequences"):
        build_model("transformer3", (3, 32, 32), 10)
    with pytest.raises(GialabError, match="takes images"):
        build_model("lenet", (32,), 30522)


def test_a_checkpoint_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lm.pt"
    torch.save(_small(vocab=1000).state_dict(), path)
    with pytest.raises(GialabError, match="vocabulary of 1000 tokens but the dataset's tokenizer has 30522") as err:
        check_vocabulary(path, 30522)
    assert "\n" not in str(err.value)
    check_vocabulary(path, 1000)  # the same vocabulary passes
