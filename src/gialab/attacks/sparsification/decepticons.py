"""Decepticons: a server's corrupted transformer turns its feed-forward layers into token imprints.

Paper: Fowl, Geiping, Reich, Wen, Czaja, Goldblum, Goldstein 2022, "Decepticons: Corrupted
Transformers Breach Privacy in Federated Learning for Language Models" (ICLR 2023, arXiv
2201.12675), section 3; survey section 3.1, eqs. 8-9, with the bins of Robbing the Fed
(survey eqs. 6-7, :mod:`gialab.attacks.sparsification.imprint`).

Why it works. A transformer's first feed-forward linear layer sees every token's (normalised)
residual vector ``r`` on its own. If all its rows measure one direction ``w`` and the biases
ascend, row ``j`` fires for exactly the tokens whose measurement ``w . r`` exceeds edge ``e_j``;
the edges sit at the Gaussian quantiles ``e_j = mu + sigma * Phi^-1(j / k)`` of the measurement
(Robbing the Fed's choice, so the ``k`` bins are about equally likely). The weight gradient of
row ``j`` is then ``sum_{t: w.r_t > e_j} c_t r_t`` and its bias gradient ``sum c_t``, so adjacent
rows differ by ``lambda^j u_k`` (survey eq. 8) and ``lambda^j`` (eq. 9) when only token ``k``
lies between their edges: their ratio is that token's ``r``, and the unknown factor ``c_t``
cancels. The server's other changes make ``r`` decodable:

- Token embeddings keep only the first ``d_T`` coordinates (centred, fixed norm); learned
  position embeddings live in the next ``d_P`` coordinates, and the last ``d_G`` are left free for
  a sequence tag. Disjoint, zero-mean parts make LayerNorm a pure rescaling, so the token, its
  position and its tag can each be read by direction from one recovered ``r``.
- The first attention layer's query is a constant (zero weights, large bias: the paper's
  ``W_Q = 0, b_Q = gamma p_0``) and its key reads a position component shared only by the first
  ``tag_tokens`` positions, so every token attends uniformly to its sequence's first tokens; the
  value is a random projection of their token embeddings, written into the tag coordinates.
  Tokens of one sequence thus carry one tag, which k-means groups. The paper tags with the
  first token alone (``tag_tokens=1``); the default 3 avoids tags that collide when two
  sequences start with the same word, frequent in real text.
- All other attention outputs are zeroed and every second feed-forward layer keeps one tiny row,
  so the residual stream reaches each layer unchanged while gradients still flow to the imprints.

Each layer measures its own random direction by default (``shared_measurement=false``): a token
colliding with another in one layer is likely alone in the next, so ``n`` tokens in ``L`` layers
of ``k`` bins are read with probability about ``1 - (1 - exp(-n/k))^L``, against
``exp(-n/(L k))`` for the paper's one measurement split over all layers. That is better while
``n`` stays below about ``k`` (measured on transformer3, k = 1024, L = 3: 256 tokens 0.98 vs
0.93 token accuracy, 1024 tokens 0.79 vs 0.70) and worse beyond (2048 tokens: 0.35 vs 0.50), so
very large batches should set ``shared_measurement=true``.
The read-out: tokens that occur come from the rows of the embedding gradient that are non-zero
(the paper's first step); each recovered ``r`` is matched to the vocabulary and to a position by
cosine, positions are assigned with capacity (linear sum assignment), tags are clustered by
k-means, and tokens at each position are assigned to sequences by a second linear sum assignment.
Positions before the tag is complete are assigned backwards, subtracting the known token's
contribution from the tag. Tokens the imprint cannot see (a causal LM's last position predicts
nothing, so it gets no gradient) are read from the output head's gradient, whose row for a label
token is minus the residual that predicted it. The attack reads the target's update, or the
aggregate under secure aggregation (every token still lands in its own bin; the tags keep
clients' sequences apart). FedSGD only: a FedAvg update mixes several steps' imprints.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.registry import register
from gialab.attacks.sparsification.imprint import attacked_update
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation

UNK_ID = 100  # [UNK] in the BERT vocabulary; fills slots no token was recovered for


def check_text_model(model: nn.Module, data: DataSpec, attack: str):  # -> TransformerLM
    """Refuse anything but a gialab transformer LM whose vocabulary matches the tokenizer's."""
    from gialab.data.text import TextSpec
    from gialab.models.transformer import TransformerLM

    if not isinstance(data, TextSpec):
        raise GialabError(f"{attack} attacks language models; dataset {data.name!r} is not text (use dataset=pydoc)")
    if not isinstance(model, TransformerLM):
        raise GialabError(f"{attack} needs a transformer language model; valid models: transformer3, gpt2-small")
    if model.vocab_size != data.vocab_size:
        raise GialabError(
            f"model vocabulary ({model.vocab_size} tokens) does not match the tokenizer's "
            f"({data.vocab_size} tokens); build the model for the dataset's tokenizer"
        )
    if data.sequence_length > model.config.max_positions:
        raise GialabError(
            f"sequence_length {data.sequence_length} exceeds the model's {model.config.max_positions} positions"
        )
    return model


def leaked_tokens(embedding_grad: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """Token ids whose embedding row received gradient: the tokens present in the batch."""
    norms = embedding_grad.detach().double().norm(dim=1)
    if float(norms.max()) == 0.0:
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(norms > rel_tol * norms.max()).flatten()


def nearest_rows(vectors: torch.Tensor, table: torch.Tensor, candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (into ``table``) and cosine of each vector's nearest row by cosine similarity."""
    rows = table if candidates is None else table[candidates]
    v = torch.nn.functional.normalize(vectors.double(), dim=1)
    r = torch.nn.functional.normalize(rows.double(), dim=1)
    cos, idx = (v @ r.T).max(dim=1)
    if candidates is not None:
        idx = candidates[idx]
    return idx, cos


class DecepticonsParams(AttackParams):
    tag_tokens: int = Field(3, ge=1, description="leading tokens whose embeddings tag a sequence")
    tag_dims: int = Field(32, ge=2, description="residual coordinates reserved for the sequence tag")
    position_dims: int = Field(64, ge=4, description="residual coordinates reserved for positions")
    shared_measurement: bool = Field(
        False, description="one measurement with bins split across layers (the paper) instead of one per layer")
    sharpness: float = Field(20.0, gt=0, description="GELU pre-activation across the narrowest bin; large makes GELU a step")
    probe_sequences: int = Field(64, ge=4, description="random-token sequences used to estimate the measurement's mean/std")
    norm_tolerance: float = Field(1e-2, gt=0, description="relative slack on |r|^2 = d that marks a single-token read-out")
    max_sequences: int = Field(8, ge=1, description="sequences to return when the example count is unknown")


@dataclass(frozen=True)
class _Layout:
    """What the server keeps of its corruption, to read the gradient back."""

    token_dims: int
    position_dims: int
    tag_dims: int
    tokens: torch.Tensor  # (V, d_T) token part of the corrupted embedding
    positions: torch.Tensor  # (max_positions, d_P)
    tag_map: torch.Tensor  # (d_G, d_T): tag contribution of a token = tag_map @ tokens[id]
    x_norm: float  # |token part + position part|, the same for every token
    groups: tuple[tuple[tuple[int, torch.Tensor, torch.Tensor], ...], ...]  # ((layer, edges, w), ...) per measurement
    tag_tokens: int


@register
class Decepticons(Attack):
    name = "decepticons"
    requires = frozenset({Capability.MODIFY_PARAMETERS, Capability.OBSERVE_AGGREGATE})
    Params = DecepticonsParams
    update_kinds = frozenset({"gradient"})
    smoke_overrides = {"probe_sequences": 8}

    def __init__(self, params: AttackParams, context=None) -> None:
        super().__init__(params, context)
        self._layout: _Layout | None = None
        self._sent: nn.Module | None = None

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        p: DecepticonsParams = self.params  # type: ignore[assignment]
        lm = check_text_model(model, data, self.name)
        cfg = lm.config
        head = cfg.width // cfg.heads
        if p.tag_dims > head:
            raise GialabError(f"tag_dims {p.tag_dims} exceeds the attention head width {head}; use tag_dims <= {head}")
        if cfg.width - p.tag_dims - p.position_dims < 16:
            raise GialabError(
                f"width {cfg.width} leaves fewer than 16 token coordinates after tag_dims {p.tag_dims} "
                f"and position_dims {p.position_dims}; lower them"
            )

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        self.check_model(model, data)
        sent, self._layout = corrupt(model, data.sequence_length, self.params, self.context.seed)  # type: ignore[attr-defined,arg-type]
        self._sent = sent
        return ServerPlan(model=sent)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: DecepticonsParams = self.params  # type: ignore[assignment]
        if self._layout is None:
            raise GialabError("decepticons reads a corrupted model's gradient; the server plan never ran")
        model = observation.model
        update, source, count = attacked_update(observation)
        n_seq = count or p.max_sequences
        seq_len = observation.data.sequence_length  # type: ignore[attr-defined]

        emb = update[parameter_index(model, model.token_embedding.weight)]
        present = leaked_tokens(emb)
        vectors = imprint_readout(model, update, self._layout, p.norm_tolerance)
        decoded = _decode(vectors, self._layout, present, seq_len)
        slots = _assemble(decoded, self._layout, n_seq, seq_len, self.context.seed)
        filled = float((slots >= 0).float().mean())
        tokens = torch.full((n_seq, seq_len), -1, dtype=torch.long)
        if len(decoded["token"]):
            tokens = torch.where(slots >= 0, decoded["token"][slots.clamp_min(0)], tokens)
        # Empty slots after a known one: the label that followed it, read from the head gradient.
        head_grad = update[parameter_index(model, model.head.weight)].double()  # converted once, read per position
        for t in range(1, seq_len):
            gap = (slots[:, t] < 0) & (slots[:, t - 1] >= 0)
            if gap.any():
                prev = decoded["vector"][slots[gap, t - 1]]
                tokens[gap, t] = next_token_readout(head_grad, prev, n_seq * (seq_len - 1))
        used = set(tokens[tokens >= 0].tolist())
        spare = [int(v) for v in present.tolist() if int(v) not in used]
        tokens[tokens < 0] = spare[0] if spare else UNK_ID
        return Reconstruction(
            images=tokens, labels=None, source=source,
            details={
                "leaked_tokens": float(len(present)),
                "single_token_readouts": float(len(vectors)),
                "unique_tokens_recovered": float(len(decoded["token"])),
                "slots_filled_by_imprint": filled,
            },
        )


def corrupt(model: nn.Module, seq_len: int, params: DecepticonsParams, seed: int) -> tuple[nn.Module, _Layout]:
    """The malicious model: a deep copy with embeddings, attention and feed-forward layers rewritten."""
    gen = torch.Generator().manual_seed(seed)
    sent = copy.deepcopy(model)
    cfg = sent.config
    d, d_g, d_p = cfg.width, params.tag_dims, params.position_dims
    d_t = d - d_g - d_p
    m = min(params.tag_tokens, seq_len)
    tok_sl, pos_sl, tag_sl = slice(0, d_t), slice(d_t, d_t + d_p), slice(d_t + d_p, d)
    scale = math.sqrt(d)

    with torch.no_grad():
        # Token part: centred, fixed norm, in the first d_T coordinates only.
        tok = sent.token_embedding.weight[:, :d_t].clone()
        tok = tok - tok.mean(dim=1, keepdim=True)
        tok = scale * tok / tok.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sent.token_embedding.weight.zero_()
        sent.token_embedding.weight[:, tok_sl] = tok
        # Position part: centred random directions; the first m positions share a component
        # (the attention key), every other position is orthogonal to it.
        pos = torch.randn(cfg.max_positions + 1, d_p, generator=gen)
        pos = pos - pos.mean(dim=1, keepdim=True)
        shared, pos = pos[-1] / pos[-1].norm(), pos[:-1]
        pos = pos - (pos @ shared)[:, None] * shared[None]
        pos = pos / pos.norm(dim=1, keepdim=True)
        weight = 0.5
        pos[:m] = weight * shared + math.sqrt(1 - weight**2) * pos[:m]
        pos = scale * pos
        sent.position_embedding.weight.zero_()
        sent.position_embedding.weight[:, pos_sl] = pos
        x_norm = math.sqrt(2.0) * scale  # |token part| = |position part| = sqrt(d), orthogonal
        sigma = x_norm / scale  # LayerNorm's std of every embedded token

        for norm in [sent.ln_f, *(n for b in sent.blocks for n in (b.ln1, b.ln2))]:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        for block in sent.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            block.ff.fc2.weight.zero_()
            block.ff.fc2.bias.zero_()

        # First attention: constant query, key = the shared position component, value = a random
        # projection of the token part, written centred into the tag coordinates.
        attn = sent.blocks[0].attn
        head = d // cfg.heads
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        key_level = weight * scale / sigma  # <shared, LN(x_j)> for j < m
        attn.qkv.bias[0] = 1e4 * math.sqrt(head) / key_level
        attn.qkv.weight[d, pos_sl] = shared
        proj = torch.randn(d_g, d_t, generator=gen) / math.sqrt(d_g)
        attn.qkv.weight[2 * d : 2 * d + d_g, tok_sl] = proj
        centre = torch.eye(d_g) - 1.0 / d_g
        attn.proj.weight[tag_sl, :d_g] = centre
        tag_map = centre @ proj / sigma

    groups = _imprint(sent, params, gen, seq_len)
    layout = _Layout(d_t, d_p, d_g, tok.clone(), pos.clone(), tag_map, x_norm, groups, m)
    return sent, layout


def _imprint(sent: nn.Module, params: DecepticonsParams, gen: torch.Generator, seq_len: int):
    """Rows of each first feed-forward layer measure one direction; biases ascend (eqs. 8-9)."""
    cfg = sent.config
    d, hidden, layers = cfg.width, cfg.hidden, cfg.layers
    # The residual every layer sees (feed-forward outputs are still zero here): probe its
    # distribution with random tokens, which the server can do without any client data.
    probe = torch.randint(0, cfg.vocab_size, (params.probe_sequences, seq_len), generator=gen)
    with torch.no_grad():
        x = sent.token_embedding(probe) + sent.position_embedding(torch.arange(seq_len))[None]
        x = x + sent.blocks[0].attn(sent.blocks[0].ln1(x))
        r = sent.blocks[0].ln2(x).reshape(-1, d).double()

    if params.shared_measurement:
        w = torch.nn.functional.normalize(torch.randn(d, generator=gen, dtype=torch.float64), dim=0)
        directions = [w] * layers
        edge_sets = _edges(r @ w, hidden * layers)
        per_layer = [edge_sets[i * hidden : (i + 1) * hidden] for i in range(layers)]
        groups = (tuple((i, per_layer[i], w) for i in range(layers)),)
        spacing = _min_spacing(edge_sets)
        scales = [params.sharpness / spacing] * layers
    else:
        directions, per_layer, scales, group_list = [], [], [], []
        for i in range(layers):
            w = torch.nn.functional.normalize(torch.randn(d, generator=gen, dtype=torch.float64), dim=0)
            edges = _edges(r @ w, hidden)
            directions.append(w)
            per_layer.append(edges)
            scales.append(params.sharpness / _min_spacing(edges))
            group_list.append(((i, edges, w),))
        groups = tuple(group_list)

    eps = 1e-8
    with torch.no_grad():
        for block, w, edges, s in zip(sent.blocks, directions, per_layer, scales, strict=True):
            block.ff.fc1.weight.copy_((s * w)[None].expand(hidden, d))
            block.ff.fc1.bias.copy_(-s * edges)
            block.ff.fc2.weight[d - 1].fill_(eps / hidden)
    return groups


def _edges(measured: torch.Tensor, k: int) -> torch.Tensor:
    """Survey eq. 8: edges at the Gaussian quantiles i/k of the measurement, ascending; the first
    edge sits far below so its row collects every token."""
    mu, sd = float(measured.mean()), float(measured.std())
    inv = NormalDist().inv_cdf
    edges = [mu - 50 * sd] + [mu + sd * inv(i / k) for i in range(1, k)]
    return torch.tensor(edges, dtype=torch.float64)


def _min_spacing(edges: torch.Tensor) -> float:
    return float((edges[2:] - edges[1:-1]).min()) if len(edges) > 2 else 1.0


def imprint_readout(model: nn.Module, update: tuple[torch.Tensor, ...], layout: _Layout, tol: float,
                    rounds: int = 4) -> torch.Tensor:
    """Eq. 9: each bin's token vector from adjacent-row differences; only single-token bins kept.

    A single token's read-out is a LayerNorm output, so it has zero mean and squared norm d, and
    its measurement lies in its own bin; a mixture of several tokens fails these checks. A token
    found alone in one layer also tells its gradient factor ``c_t`` (the bias-gradient
    difference), so it is subtracted from the bins it shares in other layers, which can leave a
    second token alone there (successive cancellation, repeated for a few rounds).
    """
    d = model.config.width
    bins = []
    for group in layout.groups:
        gw, gb, edges, ws = [], [], [], []
        for layer, layer_edges, w in group:
            fc1 = model.blocks[layer].ff.fc1
            gw.append(update[parameter_index(model, fc1.weight)].double())
            gb.append(update[parameter_index(model, fc1.bias)].double())
            edges.append(layer_edges)
            ws.append(w)
        gw_all, gb_all = torch.cat(gw), torch.cat(gb)
        lower = torch.cat(edges)
        upper = torch.cat([lower[1:], torch.tensor([math.inf], dtype=torch.float64)])
        dw = gw_all - torch.cat([gw_all[1:], torch.zeros_like(gw_all[:1])])
        db = gb_all - torch.cat([gb_all[1:], torch.zeros_like(gb_all[:1])])
        # With a shared measurement one direction serves the whole group; else the group is one layer.
        bins.append((dw, db, lower, upper, ws[0]))
    floor = 1e-9 * max(float(b[1].abs().max()) for b in bins) if bins else 0.0

    known_r: list[torch.Tensor] = []
    known_c: list[float] = []
    for _ in range(rounds):
        fresh: list[tuple[torch.Tensor, float]] = []
        for dw, db, lower, upper, w in bins:
            dw, db = dw.clone(), db.clone()
            if known_r:
                kr = torch.stack(known_r)
                kc = torch.tensor(known_c, dtype=torch.float64)
                where = (torch.searchsorted(lower, kr @ w) - 1).clamp(0, len(lower) - 1)
                dw.index_add_(0, where, -kc[:, None] * kr)
                db.index_add_(0, where, -kc)
            live = db.abs() > floor
            r = dw[live] / db[live, None]
            norm_ok = ((r.pow(2).sum(1) / d) - 1).abs() < tol
            mean_ok = r.mean(1).abs() < tol
            m = r @ w
            width = (upper - lower)[live].clamp(max=1e6)
            in_bin = (m >= lower[live] - tol * width) & (m <= upper[live] + tol * width)
            ok = norm_ok & mean_ok & in_bin
            fresh.extend(zip(r[ok], db[live][ok].tolist()))
        if not fresh:
            break
        cand = torch.stack([r for r, _ in fresh])
        pool = torch.cat([torch.stack(known_r), cand]) if known_r else cand
        close = _within(cand, pool, 0.05 * math.sqrt(d))  # the same token read in several layers
        offset = len(known_r)
        for i, (r, c) in enumerate(fresh):
            if close[i, : offset + i].any():
                continue
            known_r.append(r)
            known_c.append(c)
        if len(known_r) == offset:
            break
    return torch.stack(known_r) if known_r else torch.zeros(0, d, dtype=torch.float64)


def _within(a: torch.Tensor, b: torch.Tensor, radius: float, dims: int = 64) -> torch.Tensor:
    """``|a_i - b_j| < radius`` for every pair, exactly, without measuring every pair in full.

    A projection onto orthonormal directions never lengthens a difference, so pairs that are
    apart in ``dims`` random directions are apart in all; only the few pairs close there are
    measured in full. Read-outs of different tokens are about ``sqrt(2 d)`` apart, of the same
    token almost 0, so hardly any pair needs the second look (GPT-2 small: 12x fewer flops).
    """
    if a.shape[1] <= dims:
        return torch.cdist(a, b) < radius
    gen = torch.Generator().manual_seed(0)  # any directions give the same answer
    basis, _ = torch.linalg.qr(torch.randn(a.shape[1], dims, generator=gen, dtype=a.dtype))
    close = torch.cdist(a @ basis, b @ basis) < radius
    i, j = close.nonzero(as_tuple=True)
    for part in torch.split(torch.arange(len(i)), 4096):  # bounded memory for many duplicates
        close[i[part], j[part]] = (a[i[part]] - b[j[part]]).norm(dim=1) < radius
    return close


def _decode(vectors: torch.Tensor, layout: _Layout, present: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """Each read-out's token (nearest leaked embedding), position cosines and tag; duplicates merged."""
    d_t, d_p = layout.token_dims, layout.position_dims
    if len(vectors) == 0:
        empty = torch.zeros(0)
        return {"token": empty.long(), "pos_cos": torch.zeros(0, seq_len), "tag": torch.zeros(0, layout.tag_dims),
                "vector": vectors}
    candidates = present if len(present) else None
    token, _ = nearest_rows(vectors[:, :d_t], layout.tokens, candidates)
    pos_part = torch.nn.functional.normalize(vectors[:, d_t : d_t + d_p], dim=1)
    pos_cos = pos_part @ torch.nn.functional.normalize(layout.positions[:seq_len].double(), dim=1).T
    # Undo LayerNorm's scale: the token+position part has a known norm, so the tag's scale follows.
    scale = layout.x_norm / vectors[:, : d_t + d_p].norm(dim=1)
    tag = vectors[:, d_t + d_p :] * scale[:, None]
    # The same token is read once per layer (and sometimes twice in one): keep one copy. Copies
    # share token and position, so only read-outs with the same pair are compared.
    best_pos = pos_cos.argmax(dim=1)
    same_pair: dict[tuple[int, int], list[int]] = {}
    for i, pair in enumerate(zip(token.tolist(), best_pos.tolist())):
        same_pair.setdefault(pair, []).append(i)
    keep: list[int] = []
    for members in same_pair.values():
        kept: list[int] = []
        for i in members:
            if all((tag[i] - tag[j]).norm() > 1e-2 * tag[j].norm().clamp_min(1e-12) for j in kept):
                kept.append(i)
        keep.extend(kept)
    keep.sort()
    idx = torch.tensor(keep, dtype=torch.long)
    return {"token": token[idx], "pos_cos": pos_cos[idx], "tag": tag[idx], "vector": vectors[idx]}


def _assemble(decoded: dict[str, torch.Tensor], layout: _Layout, n_seq: int, seq_len: int, seed: int) -> torch.Tensor:
    """Slots (sequence, position) -> index of the decoded read-out placed there (-1: none).

    Positions by capacity-constrained assignment (every position holds n_seq tokens), sequences
    by k-means on the tags and a per-position assignment to the clusters; positions before the
    tag is complete are assigned backwards, removing the next token's known tag contribution.
    """
    from scipy.optimize import linear_sum_assignment

    slots = torch.full((n_seq, seq_len), -1, dtype=torch.long)
    token, pos_cos, tag = decoded["token"], decoded["pos_cos"].numpy(), decoded["tag"].numpy()
    n = len(token)
    if n == 0:
        return slots
    rows, cols = linear_sum_assignment(-np.repeat(pos_cos, n_seq, axis=1))
    position = np.full(n, -1)
    position[rows] = cols // n_seq
    m = layout.tag_tokens
    full = np.flatnonzero(position >= m - 1)
    centroids = _kmeans(tag[full], n_seq, seed) if len(full) else np.zeros((n_seq, tag.shape[1]))
    for t in range(m - 1, seq_len):
        _assign(slots, t, np.flatnonzero(position == t), tag, centroids)
    # Backwards: the tag at t averages the first t+1 tokens' contributions.
    expected = centroids.copy()
    for t in range(m - 2, -1, -1):
        nxt = np.full_like(expected, np.nan)
        for c in range(n_seq):
            k = int(slots[c, t + 1])
            if k >= 0:
                nxt[c] = (layout.tag_map.double() @ layout.tokens[int(token[k])].double()).numpy()
        expected = ((t + 2) * expected - nxt) / (t + 1)
        _assign(slots, t, np.flatnonzero(position == t), tag, expected)
    return slots


def _assign(slots: torch.Tensor, t: int, members: np.ndarray, tag: np.ndarray, centres: np.ndarray) -> None:
    from scipy.optimize import linear_sum_assignment

    if len(members) == 0:
        return
    dist = ((tag[members, None, :] - centres[None]) ** 2).sum(-1)
    dist = np.where(np.isfinite(dist), dist, 1e12)
    rows, cols = linear_sum_assignment(dist)
    for r, c in zip(rows, cols):
        slots[c, t] = int(members[r])


def next_token_readout(head_grad: torch.Tensor, previous: torch.Tensor, n_labels: int,
                       metric: torch.Tensor | None = None) -> torch.Tensor:
    """The token that follows each given residual, from the output head's gradient.

    With cross-entropy, the head row of token v gets ``-(1/N) sum_{t: y_t = v} h_t`` plus terms of
    size ``p_tv`` (about 1/V for the corrupted model), and ``h_t`` is the final normalised residual,
    which the imprint already recovered. So the label after position t is the row most aligned
    with ``-h_t``. This recovers the tokens the imprint cannot see: a causal LM's last position
    predicts nothing, so its token gets no gradient except as a label. ``metric`` (d x d), when
    given, whitens the inner product (see ``trap_weights_text``).
    """
    g = head_grad.double()
    h = previous.double()
    d = h.shape[1]
    norms = g.norm(dim=1)
    labels = torch.nonzero(norms > 0.3 * math.sqrt(d) / max(n_labels, 1)).flatten()
    if len(labels) == 0:
        return torch.full((len(h),), UNK_ID, dtype=torch.long)
    score = -(h @ (g[labels] if metric is None else g[labels] @ metric).T)
    return labels[score.argmax(dim=1)]


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if len(points) < k:
        pad = np.full((k - len(points), points.shape[1]), 1e6)
        return np.concatenate([points, pad])
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points).cluster_centers_
