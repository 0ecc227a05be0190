"""The client's checks on a received model, one function per malicious-server signature.

Each check looks for what a malicious-server attack (survey section 3) must put into the model
it sends, and returns one ``AuditFinding`` per layer that shows it:

* ``imprint``: Robbing the Fed's imprint module (survey eqs. 6-7) and Decepticons' feed-forward
  imprints (eqs. 8-9) need many rows of one linear layer measuring the *same* direction, with
  biases at distinct thresholds along it, so adjacent rows differ by exactly one bin. Rows of a
  trained or freshly initialised layer are far from parallel (random rows in ``d`` dimensions
  have cosines of about ``1/sqrt(d)``).
* ``trap``: trap weights (Boenisch et al. 2023b, survey eq. 10) make a layer's units fire for
  few inputs (a few percent), so that many fire for one sample of a batch alone. Untrained
  layers fire for about half of the inputs; trained ReLU layers often have many dead units, but
  then few units fire at all, or the living ones fire broadly. Measured on the client's batch.
* ``balanced_rows``: the paper's construction of those weights: every trap row exactly half
  negative, half positive, which chance gives a row of ``d`` weights with probability about
  ``sqrt(2/(pi d))``.
* ``single_units``: the consequence every sparsification attack is after, measured directly: the
  share of a layer's units that fire for exactly one of the client's inputs, each of which
  hands that input to the server (``dL/dW_i / dL/db_i = x``). A unit firing for half the
  inputs does so for exactly one of ``B`` with probability ``B / 2^B``, and real layers, whose
  units fire at skewed rates, reach 15% of units at 16 inputs (measured on FC nets), so the
  check only speaks for at least ``min_inputs`` inputs and above 20%.
* ``zero_rows``: fishing (Wen et al. 2022, survey eqs. 11-14) zeroes every classifier row but the
  target class's, and Decepticons/trap-weights-text zero attention and feed-forward outputs; no
  trained or initialised layer has an all-zero row.
* ``large_bias``: class fishing gives the zeroed rows a large constant bias ``alpha`` (eq. 12) so
  every sample is confidently wrong; a bias that dwarfs what the layer's weights make of the
  client's data turns units into constants. Measured against the layer's typical data-dependent
  pre-activation on the client's batch, or the default initialisation's bias bound if larger.
* ``commitment``: a model that does not hash to the digest the server published for everyone
  (``fl.commitment``) was made for this client (model inconsistency, Pasquini et al. 2022).

Activations come from one forward pass of the client's batch through a copy of the model (train
mode, as training will see it; the copy keeps BatchNorm statistics of the received model
untouched). "Fires" means a positive pre-activation (ReLU, LeakyReLU, GELU). The layers whose
output is the model's output (classifier, language-model head) produce logits, not features,
so the firing checks skip them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gialab.defenses.base import AuditFinding
from gialab.fl.commitment import model_commitment


@dataclass(frozen=True)
class LinearStats:
    """What one forward pass of the client's batch showed about one linear layer.

    ``inputs`` counts the rows the layer saw (samples, or tokens for a sequence model: each
    token passes a transformer's feed-forward layer on its own). ``fire_counts[u]``: inputs for
    which unit ``u``'s pre-activation was positive; ``data_part[u]``: mean ``|W_u x|`` over them
    (the pre-activation without its bias); ``live``: units whose weight row is not zero.
    """

    name: str
    inputs: int
    fire_counts: torch.Tensor
    data_part: torch.Tensor
    live: torch.Tensor
    is_output: bool


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def linear_statistics(model: nn.Module, inputs: torch.Tensor) -> dict[str, LinearStats]:
    """Run ``inputs`` through a copy of ``model`` and summarise every linear layer's pre-activations."""
    probe = copy.deepcopy(model).train()
    raw: dict[str, tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    handles = []

    def hook(name: str, layer: nn.Linear):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            z = output.detach().reshape(-1, layer.out_features).double()
            bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(layer.out_features,
                                                                                           dtype=torch.float64)
            raw[name] = (z.shape[0], (z > 0).sum(0), (z - bias).abs().mean(0), output)
        return record

    layers = linear_layers(probe)
    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(hook(name, layer)))
    try:
        out = probe(inputs)
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for name, (n, fire, data, output) in raw.items():
        is_output = output is out or (output.shape == out.shape and torch.equal(output, out))
        live = layers[name].weight.detach().reshape(layers[name].out_features, -1).abs().amax(1) > 0
        stats[name] = LinearStats(name, n, fire, data, live, is_output)
    return stats


def check_commitment(model: nn.Module, commitment: str | None) -> list[AuditFinding]:
    """The received model must hash to the digest published for every client (nothing to check if none was)."""
    if commitment is None:
        return []
    received = model_commitment(model)
    if received == commitment:
        return []
    return [AuditFinding("commitment", f"the received model hashes to {received[:12]}..., not to the "
                                       f"{commitment[:12]}... the server committed to for every client")]


def _parallel_group(rows: torch.Tensor, cosine: float, chunk: int = 1024) -> torch.Tensor:
    """Indices of the largest set of rows within ``|cos| >= cosine`` of one row (that row included)."""
    unit = rows / rows.norm(dim=1, keepdim=True)
    best_count, best_row = 0, 0
    for start in range(0, len(unit), chunk):
        counts = ((unit[start:start + chunk] @ unit.T).abs() >= cosine).sum(1)
        top = int(counts.argmax())
        if int(counts[top]) > best_count:
            best_count, best_row = int(counts[top]), start + top
    return torch.nonzero((unit @ unit[best_row]).abs() >= cosine).flatten()


def check_imprint(
    model: nn.Module, *, cosine: float = 0.99, min_rows: int = 8, max_rows: int = 2048, seed: int = 0
) -> list[AuditFinding]:
    """Layers with ``min_rows`` or more near-parallel rows whose biases form a ladder of thresholds.

    Along the shared direction ``a`` row ``i`` switches on at ``t_i = -b_i / <w_i, a>``; an
    imprint needs these thresholds distinct (one bin between each pair), so the group's distinct
    thresholds are counted. Layers with more than ``max_rows`` rows are checked on a seeded random
    sample of that many (an imprint group keeps its share of the sample).
    """
    findings = []
    for name, layer in linear_layers(model).items():
        weight = layer.weight.detach().double().reshape(layer.out_features, -1)
        index = torch.nonzero(weight.norm(dim=1) > 0).flatten()
        if len(index) > max_rows:
            pick = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:max_rows]
            index = index[pick.sort().values]
        if len(index) < min_rows:
            continue
        group = index[_parallel_group(weight[index], cosine)]
        if len(group) < min_rows or layer.bias is None:
            continue
        direction = weight[group[0]] / weight[group[0]].norm()
        thresholds = -layer.bias.detach().double()[group] / (weight[group] @ direction)
        scale = float(thresholds.abs().max()) or 1.0
        distinct = int(torch.unique(torch.round(thresholds / scale * 1e9)).numel())
        if distinct < min_rows:
            continue
        findings.append(AuditFinding("imprint", (
            f"layer {name}: {len(group)} near-parallel rows (|cos| >= {cosine}) with an ascending bias ladder "
            f"({distinct} distinct thresholds from {float(thresholds.min()):.3g} to {float(thresholds.max()):.3g})")))
    return findings


def check_trap(
    stats: Mapping[str, LinearStats], *, max_fire_rate: float = 0.2, min_active: float = 0.25, min_inputs: int = 16
) -> list[AuditFinding]:
    """Hidden layers whose units fire for some of my inputs, but each for few of them.

    A layer is flagged when at least ``min_active`` of its live units fire for one input or more
    and those units fire, on average, for less than ``max_fire_rate`` of the inputs. Units that
    never fire are left out on purpose: honestly trained ReLU layers often have many dead units
    (they carry no gradient, so they leak nothing), while a trap unit is alive but selective. With
    ``B`` inputs a unit that fires at all fires for at least ``1/B`` of them, so the check needs
    ``min_inputs`` inputs to tell "a few percent" from "one of a handful".
    """
    findings = []
    for s in stats.values():
        counts = s.fire_counts[s.live]
        active = counts > 0
        if s.is_output or len(counts) == 0 or s.inputs < min_inputs or int(active.sum()) < min_active * len(counts):
            continue
        rate = float(counts[active].sum()) / (int(active.sum()) * s.inputs)
        if rate < max_fire_rate:
            findings.append(AuditFinding("trap", (
                f"layer {s.name}: {int(active.sum())} of its {len(counts)} units fire for my {s.inputs} inputs, each "
                f"for {100 * rate:.1f}% of them on average (trap weights; threshold {100 * max_fire_rate:.0f}%)")))
    return findings


def balanced_chance(negative_share: torch.Tensor) -> float:
    """Probability that a row has exactly ``d // 2`` negative weights when its weight ``j`` is
    negative with probability ``negative_share[j]``, independently (a Poisson-binomial law).

    For weights symmetric about 0 every share is 1/2 and this is ``C(d, d/2) / 2^d``, about
    ``sqrt(2 / (pi d))``. Training can shift a whole layer's rows by one common direction (Adam
    moves the output rows of tokens a batch never holds alike), which fixes the sign of some columns
    and makes exact balance more likely; the shares measured on the layer's own rows account for it.
    For odd ``d`` the trap's extra weight is exactly zero, which chance never gives, so the value is
    an upper bound.
    """
    q = negative_share.double().clamp(0, 1)
    pmf = torch.zeros(len(q) + 1, dtype=torch.float64)
    pmf[0] = 1.0
    for qj in q:  # add one column: the count stays (weight >= 0) or grows by one (weight < 0)
        pmf[1:] = pmf[1:] * (1 - qj) + pmf[:-1] * qj
        pmf[0] = pmf[0] * (1 - qj)
    return float(pmf[len(q) // 2])


def check_balanced_rows(model: nn.Module, *, sigmas: float = 6.0, min_rows: int = 8,
                        min_inputs: int = 16) -> list[AuditFinding]:
    """Layers with far more rows of exactly as many negative as positive weights than chance gives.

    Trap weights are built that way (Boenisch et al. 2023b, survey eq. 10): each row gets a random
    half of its inputs negative and the other half positive, so that the unit fires only for
    inputs markedly brighter under its positive half. A random or trained row of ``d`` weights is
    exactly balanced with probability ``p`` of :func:`balanced_chance` (1.4% for 3072 symmetric
    inputs, 5% for 256; more where training shifted the rows alike, measured from the share of
    negative weights in each column), so ``n`` honest rows hold about ``n p`` balanced ones; a layer is flagged when it
    holds at least ``min_rows`` and more than ``n p + sigmas * sqrt(n p (1 - p))``. Layers with fewer
    than ``min_inputs`` inputs are skipped. Identical rows count once: an imprint's copies of one
    direction are balanced all together or not at all.
    """
    findings = []
    for name, layer in linear_layers(model).items():
        weight = torch.unique(layer.weight.detach().reshape(layer.out_features, -1), dim=0)
        rows, d = weight.shape
        if d < min_inputs or rows < min_rows:
            continue
        balanced = int((((weight < 0).sum(1) == d // 2) & ((weight > 0).sum(1) == d // 2)).sum())
        p = balanced_chance((weight < 0).double().mean(0))
        bound = rows * p + sigmas * math.sqrt(rows * p * (1 - p))
        if balanced >= min_rows and balanced > bound:
            findings.append(AuditFinding("balanced_rows", (
                f"layer {name}: {balanced} of {rows} distinct rows have exactly {d // 2} negative and {d // 2} "
                f"positive weights (trap weights; chance gives {rows * p:.0f}, flagged above {bound:.0f})")))
    return findings


def check_single_units(
    stats: Mapping[str, LinearStats], *, max_fraction: float = 0.2, min_inputs: int = 16
) -> list[AuditFinding]:
    """Hidden layers where more than ``max_fraction`` of the live units fire for exactly one input."""
    findings = []
    for s in stats.values():
        live = int(s.live.sum())
        if s.is_output or live == 0 or s.inputs < min_inputs:
            continue
        single = int((s.fire_counts[s.live] == 1).sum())
        if single > max_fraction * live:
            findings.append(AuditFinding("single_units", (
                f"layer {s.name}: {single} of {live} units fire for exactly one of my {s.inputs} inputs "
                f"({100 * single / live:.0f}% > {100 * max_fraction:.0f}%; each hands that input to the server)")))
    return findings


def check_zero_rows(model: nn.Module, *, tolerance: float = 1e-6) -> list[AuditFinding]:
    """Linear layers with rows of norm at most ``tolerance`` times the layer's largest row norm."""
    findings = []
    for name, layer in linear_layers(model).items():
        norms = layer.weight.detach().double().reshape(layer.out_features, -1).norm(dim=1)
        finite = norms[torch.isfinite(norms)]  # rows with NaN/Inf are broken, not zeroed
        if len(finite) == 0:
            continue
        zero = int((finite <= tolerance * finite.max()).sum())
        if zero:
            findings.append(AuditFinding("zero_rows", f"layer {name}: {zero} of {len(norms)} weight rows are zero"))
    return findings


def check_large_bias(stats: Mapping[str, LinearStats], model: nn.Module, *, max_ratio: float = 100.0) -> list[AuditFinding]:
    """Units whose ``|b_u|`` exceeds ``max_ratio`` times the layer's scale.

    The scale is the larger of the RMS data-dependent pre-activation ``|W_u x|`` on the client's
    batch and ``1/sqrt(fan_in)``, the bound of PyTorch's default bias initialisation: some honest
    untrained layers (R-GAP's CNN6 classifier) see features so small that their ordinary biases
    are 60 times the data part, but no initialised bias exceeds the bound.
    """
    findings = []
    layers = linear_layers(model)
    for s in stats.values():
        layer = layers[s.name]
        if layer.bias is None or s.inputs == 0:
            continue
        bias = layer.bias.detach().double().abs()
        typical = max(float(s.data_part.pow(2).mean().sqrt()), layer.in_features ** -0.5)
        large = bias > max_ratio * typical
        count = int(large.sum())
        if count:
            values = torch.unique(layer.bias.detach().double()[large])
            shared = f", {count} sharing the value {float(values[0]):.4g}" if len(values) == 1 and count > 1 else ""
            findings.append(AuditFinding("large_bias", (
                f"layer {s.name}: {count} units have a bias up to {float(bias[large].max()):.3g}, over {max_ratio:g} "
                f"times what the weights make of my data (RMS {typical:.3g}){shared}")))
    return findings
