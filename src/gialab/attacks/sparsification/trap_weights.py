"""Trap weights: a malicious initialization that makes a ReLU layer's units fire for single inputs.

Paper: Boenisch et al. 2023b, "When the Curious Abandon Honesty: Federated Learning Is Not
Private" (IEEE EuroS&P), section "trap weights"; survey section 3.1, eq. 10.

Why it works. For a fully connected layer ``z = W x + b`` with ReLU, a unit's gradients are
``dL/dW_i = (1/B) sum_n delta_{n,i} x_n^T`` and ``dL/db_i = (1/B) sum_n delta_{n,i}``, where
``delta_{n,i}`` is zero unless the unit fired for sample ``n``. A unit that fired for exactly one
sample gives that sample back exactly, ``x = dL/dW_i / dL/db_i`` (natural leakage, see
``analytic/fc_leakage.py``). An honest initialization makes units fire for about half the batch,
so almost every row is a mixture. Survey eq. 10 (the paper's activation condition): unit ``i``
fires only when the inputs weighted by its negative weights are outweighed by those weighted by
its positive weights, ``sum_{n in N} |w_i^n| x_n < sum_{p in P} w_i^p x_p``. With non-negative
inputs (pixels), giving each row half negative and half positive weights of paired magnitudes,
and shrinking the positive half by ``scale_factor`` < 1, makes the condition hold only for inputs
whose pixels under the positive half are markedly brighter than under the negative half: each
unit becomes a rare "trap" that catches few inputs, and with hundreds of units most inputs are
caught alone by at least one of them.

Where the thresholds come from. The paper's form (``fire_rate=None``: bias 0, the positive half
shrunk by ``scale_factor``) fixes how often a unit fires only through the input statistics it
happens to meet: on the natural crops ``scale_factor=0.9`` fires for 0.6% of inputs, 1.0 for
about half. gialab's default keeps eq. 10's half-negative rows and instead puts each row's bias
at the ``1 - fire_rate`` quantile of a Gaussian model of its pre-activation built from the public
``DataSpec`` pixel statistics (no private data), so units fire for ~3% of inputs (measured 2.6%).
Measured on the FC net, batch 32, seed 0: 0.69 of the batch recovered with the default, 0.28
with the paper's form at ``scale_factor=0.9``, 0.375 with untrapped halves (bias 0, scale 1).

Read-out. Every active row gives an estimate ``dL/dW_i / dL/db_i``; rows that caught the same
single sample agree to float precision while mixtures almost never coincide (their mixing
weights ``delta_{n,i}`` differ from unit to unit). So coinciding rows are grouped
(:func:`group_coinciding_rows`); groups of two or more rows are confident single samples and are
returned first, then single-row estimates whose pixels stay inside [0, 1] (a mixture with
mixed-sign ``delta`` extrapolates outside), up to the number of examples the attacker saw.
The returned images are what those rows say, so ``fraction_recovered`` is honest about how many
true samples a trap caught alone.

Only the first layer (the one seeing the raw input) is trapped: it is the only one whose rows
are inputs. The paper also traps deeper layers to keep the first layer's gradient alive through
the network; gialab's FC net passes gradient with its default deeper layers, so they are left as
sent. ``trap_initialize`` is public because ``trap-weights-text`` reuses it on a transformer's
first feed-forward layer.
"""

from __future__ import annotations

import copy
import math
from statistics import NormalDist

import numpy as np
import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.input_layer import input_linear
from gialab.attacks.registry import register
from gialab.attacks.sparsification.imprint import attacked_update
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation


@torch.no_grad()
def trap_initialize(
    layer: nn.Linear,
    *,
    scale_factor: float = 0.95,
    sigma: float | None = None,
    bias: float = 0.0,
    rows: int | None = None,
    generator: torch.Generator | None = None,
    paired: bool = True,
    fire_rate: float | None = None,
    input_mean: torch.Tensor | None = None,
    input_std: torch.Tensor | None = None,
    correlation: float = 0.3,
) -> None:
    """Overwrite ``layer`` in place with trap weights (survey eq. 10).

    Weights: for each of the first ``rows`` rows (all rows when ``None``) a random half of the
    inputs get negative weights ``-|g_j|`` and the other half positive weights
    ``scale_factor * |g'_j|``, ``g ~ N(0, sigma^2)`` (``sigma`` defaults to ``1/sqrt(in_features)``).
    ``paired=True`` uses the same magnitudes for both halves (``g' = g``), so each row's positive
    mass is exactly ``scale_factor`` times its negative mass; ``paired=False`` draws them
    independently, so rows also differ in their net sum.

    Biases: ``bias`` for every trap row, unless ``fire_rate`` is given: then each row's bias puts
    its threshold at the ``1 - fire_rate`` quantile of a Gaussian model of its pre-activation,
    mean ``w . input_mean`` and variance ``(1 - rho) sum_j w_j^2 s_j^2 + rho (sum_j w_j s_j)^2``
    with ``s = input_std`` and ``rho = correlation`` (an assumed average correlation between
    inputs; 0 treats them as independent). ``input_mean``/``input_std`` are per input feature
    (shape ``(in_features,)``, or broadcastable to it). Rows beyond ``rows`` keep their values.
    Deterministic given ``generator``.
    """
    out_features, in_features = layer.weight.shape
    rows = out_features if rows is None else rows
    if not 1 <= rows <= out_features:
        raise GialabError(f"trap weights: {rows} trap rows asked but the layer has {out_features} units; "
                          f"use 1..{out_features}")
    if in_features < 2:
        raise GialabError("trap weights need a layer with at least 2 inputs to split into negative and positive")
    sigma = 1.0 / math.sqrt(in_features) if sigma is None else sigma
    half = in_features // 2
    order = torch.argsort(torch.rand(rows, in_features, generator=generator), dim=1)
    negative = (torch.randn(rows, half, generator=generator, dtype=torch.float64) * sigma).abs()
    positive = negative if paired else (torch.randn(rows, half, generator=generator, dtype=torch.float64) * sigma).abs()
    weight = torch.zeros(rows, in_features, dtype=torch.float64)
    weight.scatter_(1, order[:, :half], -negative)
    weight.scatter_(1, order[:, half : 2 * half], scale_factor * positive)
    layer.weight[:rows] = weight.to(layer.weight.dtype)
    if layer.bias is None:
        return
    if fire_rate is None:
        layer.bias[:rows] = bias
        return
    if not 0 < fire_rate < 1:
        raise GialabError(f"trap weights: fire_rate must lie in (0, 1), got {fire_rate}")
    if input_mean is None or input_std is None:
        raise GialabError("trap weights: fire_rate needs input_mean and input_std to place the thresholds")
    mean = torch.as_tensor(input_mean, dtype=torch.float64).expand(in_features)
    std = torch.as_tensor(input_std, dtype=torch.float64).expand(in_features)
    centre = weight @ mean
    spread = ((1 - correlation) * (weight**2 @ std**2) + correlation * (weight @ std) ** 2).sqrt()
    z = NormalDist().inv_cdf(1 - fire_rate)
    layer.bias[:rows] = (-(centre + z * spread)).to(layer.bias.dtype)


def group_coinciding_rows(rows: torch.Tensor, tol: float) -> list[torch.Tensor]:
    """Greedy groups of row estimates within relative L2 distance ``tol`` of a group's first row.

    Rows that caught the same single input coincide to float precision (relative ~1e-7);
    mixtures differ by far more than ``tol``, so distances are compared on a fixed 64-dimensional
    random sketch of the rows (Johnson-Lindenstrauss: relative distances kept to ~15%), which is
    what keeps the read-out well under a second for a thousand rows of 3072 pixels; exact
    all-pairs distances took most of the attack's time. Returns index tensors, in order of
    first appearance.
    """
    norms = rows.norm(dim=1).clamp_min(1e-12)
    generator = torch.Generator().manual_seed(0)
    sketch = rows @ (torch.randn(rows.shape[1], 64, generator=generator, dtype=rows.dtype) / 8.0)
    close = (torch.cdist(sketch, sketch) < tol * norms[:, None]).numpy()
    unassigned = np.ones(len(rows), dtype=bool)
    groups: list[torch.Tensor] = []
    for seed in range(len(rows)):
        if not unassigned[seed]:
            continue
        members = np.flatnonzero(unassigned & close[seed])
        groups.append(torch.from_numpy(members))
        unassigned[members] = False
    return groups


class TrapWeightsParams(AttackParams):
    scale_factor: float = Field(1.0, gt=0, le=1, description="positive weights x scale_factor (eq. 10's trap when < 1)")
    paired: bool = Field(False, description="same magnitudes for the negative and positive half of a row")
    fire_rate: float | None = Field(0.035, gt=0, lt=1, description="share of inputs each unit should fire for; "
                                    "None keeps bias 0 and relies on scale_factor alone (the paper's form)")
    correlation: float = Field(0.3, ge=0, le=1, description="assumed mean pixel correlation in the threshold model")
    rows: int | None = Field(None, ge=1, description="trap rows in the first layer; None traps every unit")
    group_tol: float = Field(1e-3, gt=0, description="relative distance under which row estimates are one image")
    min_bias_grad: float = Field(1e-7, gt=0, description="rows with |dL/db_i| below this times the max are idle")
    range_slack: float = Field(0.02, ge=0, description="a lone row's estimate may leave [0, 1] by this much")
    max_images: int = Field(100, ge=1, description="images to return when the example count is unknown")


@register
class TrapWeights(Attack):
    name = "trap-weights"
    requires = frozenset({Capability.MODIFY_PARAMETERS, Capability.OBSERVE_AGGREGATE})
    Params = TrapWeightsParams
    demo_overrides = {}
    smoke_overrides = {}

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        params: TrapWeightsParams = self.params  # type: ignore[assignment]
        layer, _ = input_linear(model, data, self.name)
        if params.rows is not None and params.rows > layer.out_features:
            raise GialabError(f"trap-weights: {params.rows} trap rows asked but the first layer has "
                              f"{layer.out_features} units; use attack.rows <= {layer.out_features}")

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        params: TrapWeightsParams = self.params  # type: ignore[assignment]
        sent = copy.deepcopy(model)
        layer, _ = input_linear(sent, data, self.name)
        generator = torch.Generator().manual_seed(self.context.seed)
        c, h, w = data.shape
        mean = torch.tensor(data.mean, dtype=torch.float64).repeat_interleave(h * w)
        std = torch.tensor(data.std, dtype=torch.float64).repeat_interleave(h * w)
        trap_initialize(layer, scale_factor=params.scale_factor, rows=params.rows, generator=generator,
                        paired=params.paired, fire_rate=params.fire_rate, input_mean=mean, input_std=std,
                        correlation=params.correlation)
        return ServerPlan(model=sent)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: TrapWeightsParams = self.params  # type: ignore[assignment]
        update, source, count = attacked_update(observation)
        wanted = count or params.max_images
        layer, index = input_linear(observation.model, observation.data, self.name)
        rows = params.rows or layer.out_features
        grad_w, grad_b = update[index][:rows].double(), update[index + 1][:rows].double()
        images, details = read_single_sample_rows(
            grad_w, grad_b, wanted, tol=params.group_tol, min_bias_grad=params.min_bias_grad,
            range_slack=params.range_slack, weight=layer.weight[:rows].detach().double(),
            bias=layer.bias[:rows].detach().double(),
        )
        if images is None:  # no row passes the read-out (noise or compression drowned it): nothing recovered
            images = torch.zeros(0, *observation.data.shape)
        return Reconstruction(
            images=images.reshape(len(images), *observation.data.shape).float().clamp(0, 1),
            labels=None, source=source, details=details,
        )


def read_single_sample_rows(
    grad_w: torch.Tensor, grad_b: torch.Tensor, wanted: int, *, tol: float, min_bias_grad: float,
    range_slack: float, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Row estimates ``dW_i / db_i``, grouped; confident groups first, then lone rows that pass.

    A lone row (the only one giving its estimate) passes when its estimate stays in [0, 1] and,
    given the layer's sent ``weight``/``bias``, no image already taken fires that row: a row
    fired by a recovered sample ``x_k`` holds ``x_k``'s contribution, so an estimate different
    from ``x_k`` is a mixture. Lone rows are tried in order of ascending ``|dL/db_i|`` (fewer
    samples give smaller sums) and each accepted one joins the taken images.
    Returns at most ``wanted`` flattened images (``None`` when none) and counts the attacker sees.
    """
    if grad_b.abs().max() == 0:
        return None, {}
    active = grad_b.abs() > min_bias_grad * grad_b.abs().max()
    keep = torch.nonzero(active).flatten()
    rows = grad_w[keep] / grad_b[keep, None]
    strength = grad_b[keep] ** 2
    groups = group_coinciding_rows(rows, tol)
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    in_range = (lo >= -range_slack) & (hi <= 1 + range_slack)
    confident = sorted((g for g in groups if len(g) >= 2), key=lambda g: -len(g))
    lone = sorted((g for g in groups if len(g) == 1 and bool(in_range[g[0]])), key=lambda g: float(strength[g[0]]))
    taken = [(strength[g, None] * rows[g]).sum(0) / strength[g].sum() for g in confident]
    rejected = 0
    for g in lone:
        if len(taken) >= wanted:
            break
        candidate = rows[g[0]]
        if weight is not None and bias is not None:
            row = keep[g[0]]
            if taken and bool(((torch.stack(taken) @ weight[row] + bias[row]) > 0).any()):
                rejected += 1
                continue
        taken.append(candidate)
    taken = taken[:wanted]
    details = {"active_rows": float(len(keep)), "groups": float(len(groups)),
               "confident_groups": float(len(confident)), "lone_rejected": float(rejected),
               "returned": float(len(taken))}
    return (torch.stack(taken) if taken else None), details
