"""Trap weights on text: a transformer's first feed-forward layer becomes a token trap.

Paper: Boenisch, Dziedzic, Schuster, Shamsabadi, Shumailov, Papernot 2023b, "When the Curious
Abandon Honesty: Federated Learning Is Not Private" (IEEE EuroS&P), trap weights applied to
language models; survey section 3.1, eq. 10 (the trap's activation condition).

Why it works. In a transformer every token passes the first feed-forward linear layer on its
own, so that layer is a fully connected layer whose batch is every token of every sequence.
Trap-weight rows (eq. 10, :func:`~gialab.attacks.sparsification.trap_weights.trap_initialize`,
with thresholds placed so each row fires for a ``fire_rate`` share of tokens) make most rows
fire for few tokens; a row that fired for exactly one token gives that token's normalised
residual exactly, ``r = dL/dW_i / dL/db_i``. With attention switched off (its output projections
zeroed) the residual is the token embedding plus the position embedding, so ``r`` is compared
with ``LayerNorm(E[v] + P[t])`` for every leaked token ``v`` (embedding-gradient rows that are
non-zero) and position ``t``: the nearest embedding names the token and its place.
Rows are scaled by ``sharpness`` (and the second layer by its inverse) so GELU acts as the
ReLU the trap argument assumes; the ratio ``dW/db`` does not change with the scale. The scale
stays moderate (10): a FedAvg delta ``w_start - w_end`` of rows scaled by 1000 drowns in float32
rounding (no row survives; measured).

Trap weights recover tokens, not sequences. Sequences are chained through the output head's
gradient: its row for a label token is minus the final residual that predicted it, and with
attention off a token's final residual depends only on the token and its position, which the
server can compute. At each position the candidates are assigned to the sequences whose previous
token predicts them best (linear sum assignment); a sequence left without a candidate takes the
label its previous token predicted. Works on FedSGD gradients and on single-step FedAvg deltas
(the learning rate cancels in ``dW/db``).
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.registry import register
from gialab.attacks.sparsification.decepticons import (
    UNK_ID, check_text_model, leaked_tokens, nearest_rows, next_token_readout,
)
from gialab.attacks.sparsification.imprint import attacked_update
from gialab.attacks.sparsification.trap_weights import trap_initialize
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation


class TrapWeightsTextParams(AttackParams):
    fire_rate: float = Field(0.01, gt=0, lt=1, description="share of tokens each trap row should fire for")
    correlation: float = Field(0.0, ge=0, le=1, description="assumed mean feature correlation in the threshold model")
    sharpness: float = Field(10.0, gt=0, description="scale on the trap rows so GELU acts as a step; "
                             "far larger loses FedAvg's small weight change to float32 rounding")
    probe_sequences: int = Field(32, ge=2, description="random-token sequences used to estimate the layer's input statistics")
    min_cosine: float = Field(0.9999, gt=0, le=1, description="a row estimate is a token when this close to its nearest embedding")
    max_sequences: int = Field(4, ge=1, description="sequences to return when the example count is unknown")


@register
class TrapWeightsText(Attack):
    name = "trap-weights-text"
    requires = frozenset({Capability.MODIFY_PARAMETERS, Capability.OBSERVE_AGGREGATE})
    Params = TrapWeightsTextParams
    smoke_overrides = {"probe_sequences": 4}

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        check_text_model(model, data, self.name)

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        p: TrapWeightsTextParams = self.params  # type: ignore[assignment]
        lm = check_text_model(model, data, self.name)
        sent = copy.deepcopy(lm)
        gen = torch.Generator().manual_seed(self.context.seed)
        seq_len = data.sequence_length  # type: ignore[attr-defined]
        block = sent.blocks[0]
        with torch.no_grad():
            for b in sent.blocks:  # attention off: each token's residual is its embeddings alone
                b.attn.proj.weight.zero_()
                b.attn.proj.bias.zero_()
            probe = torch.randint(0, sent.vocab_size, (p.probe_sequences, seq_len), generator=gen)
            r = block.ln2(_embed(sent, probe)).reshape(-1, sent.config.width).double()
        trap_initialize(block.ff.fc1, generator=gen, fire_rate=p.fire_rate, input_mean=r.mean(0),
                        input_std=r.std(0), correlation=p.correlation)
        with torch.no_grad():
            block.ff.fc1.weight.mul_(p.sharpness)
            block.ff.fc1.bias.mul_(p.sharpness)
            block.ff.fc2.weight.div_(p.sharpness)
        return ServerPlan(model=sent)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: TrapWeightsTextParams = self.params  # type: ignore[assignment]
        model = observation.model
        update, source, count = attacked_update(observation)
        n_seq = count or p.max_sequences
        seq_len = observation.data.sequence_length  # type: ignore[attr-defined]
        fc1 = model.blocks[0].ff.fc1
        grad_w = update[parameter_index(model, fc1.weight)].double()
        grad_b = update[parameter_index(model, fc1.bias)].double()
        present = leaked_tokens(update[parameter_index(model, model.token_embedding.weight)])
        if len(present) == 0:
            raise GialabError("trap-weights-text: the embedding gradient is zero; the update carries no tokens")

        # Row estimates, each named by its nearest (token, position) embedding.
        live = grad_b.abs() > 1e-9 * grad_b.abs().max().clamp_min(1e-300)
        estimates = grad_w[live] / grad_b[live, None]
        table_tok = present.repeat_interleave(seq_len)
        table_pos = torch.arange(seq_len).repeat(len(present))
        with torch.no_grad():
            table = model.blocks[0].ln2(_embed_pairs(model, table_tok, table_pos)).double()
        idx, cos = nearest_rows(estimates, table)
        hit = cos >= p.min_cosine
        pairs = sorted({(int(table_pos[i]), int(table_tok[i])) for i in idx[hit].tolist()})
        by_position: dict[int, list[int]] = {}
        for t, v in pairs:
            by_position.setdefault(t, []).append(v)

        head_grad = update[parameter_index(model, model.head.weight)]
        tokens = _chain(model, by_position, head_grad, n_seq, seq_len, self.context.seed)
        caught = sum(len(v) for v in by_position.values())
        used = set(tokens[tokens >= 0].tolist())
        spare = [int(v) for v in present.tolist() if int(v) not in used]
        tokens[tokens < 0] = spare[0] if spare else UNK_ID
        return Reconstruction(
            images=tokens, labels=None, source=source,
            details={
                "leaked_tokens": float(len(present)),
                "active_rows": float(live.sum()),
                "rows_matching_a_token": float(hit.sum()),
                "tokens_caught": float(caught),
            },
        )


def _embed(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1])
    return model.token_embedding(ids) + model.position_embedding(positions)[None]


def _embed_pairs(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return model.token_embedding(tokens) + model.position_embedding(positions)


@torch.no_grad()
def _final_hidden(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The normalised final residual of each (token, position): with attention off a token's
    path through the blocks is its own, so each pair is run as a one-token sequence."""
    x = _embed_pairs(model, tokens, positions)[:, None, :]
    for block in model.blocks:
        x = block(x)
    return model.ln_f(x)[:, 0].double()


def _chain(model: nn.Module, by_position: dict[int, list[int]], head_grad: torch.Tensor,
           n_seq: int, seq_len: int, seed: int) -> torch.Tensor:
    """Sequences from per-position tokens, linked by which token's residual predicted which label.

    A label's head-gradient row is minus the sum of the residuals that predicted it, over all its
    occurrences. Residuals share large components (their position's embedding, a common mean),
    so raw dot products favour frequent labels; the inner product is therefore whitened with the
    inverse second moment of residuals of random (token, position) pairs, which the server can
    compute. A residual then scores about ``d`` against a row it is part of and about
    ``sqrt(d)`` against any other.
    """
    from scipy.optimize import linear_sum_assignment

    gen = torch.Generator().manual_seed(seed)
    d = model.config.width
    n_probe = 4 * d
    probe = _final_hidden(model, torch.randint(0, model.vocab_size, (n_probe,), generator=gen),
                          torch.randint(0, seq_len, (n_probe,), generator=gen))
    metric = torch.linalg.inv(probe.T @ probe / n_probe + 1e-6 * torch.eye(d, dtype=torch.float64))
    rows_g = -head_grad.double() @ metric  # whitened label rows

    out = torch.full((n_seq, seq_len), -1, dtype=torch.long)
    first = by_position.get(0, [])[:n_seq]
    out[: len(first), 0] = torch.tensor(first, dtype=torch.long)
    n_labels = n_seq * (seq_len - 1)
    for t in range(1, seq_len):
        known = torch.nonzero(out[:, t - 1] >= 0).flatten()
        h = _final_hidden(model, out[known, t - 1], torch.full((len(known),), t - 1)) if len(known) else None
        candidates = by_position.get(t, [])
        free = list(range(len(candidates)))
        if candidates and h is not None:
            score = (h @ rows_g[torch.tensor(candidates)].T).numpy()
            rows, cols = linear_sum_assignment(-score)
            for r, c in zip(rows, cols):
                out[known[r], t] = candidates[c]
                free.remove(int(c))
        missing = [int(b) for b in torch.nonzero(out[:, t] < 0).flatten() if out[b, t - 1] >= 0]
        if missing and h is not None:
            hp = h[[int(torch.nonzero(known == b)[0]) for b in missing]]
            out[missing, t] = next_token_readout(head_grad, hp, n_labels, metric=metric)
        for b, c in zip([int(b) for b in torch.nonzero(out[:, t] < 0).flatten()], free):
            out[b, t] = candidates[c]
    return out
