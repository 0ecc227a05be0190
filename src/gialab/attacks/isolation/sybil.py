"""Sybil devices: a malicious server isolates one victim under secure aggregation and distributed DP.

Paper: Boenisch et al. 2023a, "Reconstructing Individual Data Points in Federated Learning Hardened
with Differential Privacy and Secure Aggregation" (IEEE EuroS&P); survey section 3.1, "Gradient
Isolation", and its Table 1 column "Malicious Server + Sybil Devices".

The protocol samples M participants per round. Under distributed DP each clips its update to C
and adds its share of the noise, N(0, sigma^2 C^2 / (M - 1)) (the survey's formula), so any M - 1
honest shares sum to the sigma^2 C^2 the DP analysis promises every update in the sum, and
secure aggregation hides the lightly noised single updates. The server instead fills the round
with the victim and M - 1 sybil devices it runs itself. They take part in secure aggregation like
clients but send empty updates (zeros weighted by 0 examples), skip their noise shares, and count
in the M the protocol announces, so the victim still adds only sigma^2 C^2 / (M - 1). The
aggregate the protocol reveals is then the victim's own update with its own share alone:

    aggregate = (n_v (g_v + e_v) + sum_s n_s u_s) / (n_v + sum_s n_s) = g_v + e_v   (n_s = 0),
    e_v ~ N(0, sigma^2 C^2 / (M - 1)),

a noise std sqrt(M - 1) times below the promise. Known non-empty sybil updates would be subtracted
the same way; with zero weight there is nothing to subtract and the victim's example count never
enters. The model sent carries trap weights (Boenisch et al. 2023b, survey eq. 10;
``trap_weights.trap_initialize`` through ``TrapWeights.plan_server``), and the exposed update is
read with ``trap_weights.read_single_sample_rows``: a first-layer row fired by one sample alone
gives it back as ``dL/dW_i / dL/db_i``.

What the noise changes, and how the read-out adapts (no truth used). Rows no sample fired are
exactly zero before noise, so the noise std ``s`` the exposed update carries is measured on the
wire from them: a robust first guess from the bias gradient's median absolute value (trap units
fire rarely, so most rows are idle), then the weight gradients of the rows whose bias gradient
lies within 3 such stds of zero (3072 coordinates a row). A row's estimate
``(g x + e_W) / (g + e_b)`` errs by about ``s sqrt(1 + x_j^2) / |g|`` per pixel, so rows with
``|dL/db_i| < noise_gate * s`` are treated as idle; two estimates of one image then differ by a
relative ~``2.8 / noise_gate`` (each relative error ~``2 s / |g|`` for natural images), which is
added to ``group_tol``, and a lone row may leave [0, 1] by ``3 / noise_gate`` more than
``range_slack``. Without noise (an exactly zero idle row exists) the read-out is trap weights' own.

Measured (``bench/sybil.py``, FC net, batch 4, C = 1): the victim's exposed noise matches
sigma C / sqrt(M - 1), but pixel-exact recovery needs that noise below ~5e-6 per coordinate,
because a clipped update of norm C spreads over 7M coordinates and a lone row's bias gradient is
~1e-4 C. So sybils break distributed DP's noise by the promised factor, yet at noise multipliers
that give a meaningful epsilon nothing is recovered, isolated or not.

``sybils`` below M - 1 leaves the other slots to honestly sampled clients (their updates and noise
shares stay in the aggregate); ``sybils=0`` is the honest protocol with the victim in the round,
the ablation that shows what the sybils add.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import IsolatedUpdate, Reconstruction
from gialab.attacks.input_layer import input_linear
from gialab.attacks.registry import register
from gialab.attacks.sparsification.trap_weights import (
    TrapWeights, TrapWeightsParams, read_single_sample_rows,
)
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.protocol import ServerPlan, SybilDevices
from gialab.threats import Capability, Observation

_MAD = 1.4826  # median absolute deviation to std for a Gaussian


class SybilParams(TrapWeightsParams):
    sybils: int | None = Field(None, ge=0, description="sybil devices in the victim's round; None: the other "
                               "M - 1 slots (fl.clients_per_round = M); fewer leave slots to honest clients")
    noise_gate: float = Field(20.0, gt=0, description="rows whose |dL/db_i| is below this many noise stds "
                              "count as idle")


def idle_row_noise_std(grad_w: torch.Tensor, grad_b: torch.Tensor) -> float:
    """Per-coordinate noise std of a first layer's gradient, from the rows no sample fired.

    A unit that fired for no sample has exactly zero weight and bias gradient before noise, so
    any such row left exactly zero means no noise (0.0). Else: a first guess from the bias
    gradient's median absolute deviation (robust while most units are idle), then the median
    absolute deviation of the weight gradients of the rows whose bias gradient is within 3 stds
    of zero, twice (the second pass drops rows the rough first guess let in).
    """
    if bool((grad_w == 0).all(dim=1).any()):
        return 0.0
    std = _MAD * float(grad_b.abs().median())
    for _ in range(2):
        idle = grad_b.abs() < 3 * std
        if not bool(idle.any()):
            break
        std = _MAD * float(grad_w[idle].abs().median())
    return std


@register
class Sybil(TrapWeights):
    name = "sybil"
    requires = frozenset({
        Capability.MODIFY_PARAMETERS, Capability.OBSERVE_AGGREGATE, Capability.CONTROL_SAMPLING,
        Capability.SYBIL_CLIENTS,
    })
    Params = SybilParams
    update_kinds = frozenset({"gradient"})
    demo_overrides = {}
    smoke_overrides = {}

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        """Trap weights for everyone, the victim alone among real clients, sybils in every other slot."""
        trapped = super().plan_server(model, data).model
        params: SybilParams = self.params  # type: ignore[assignment]
        return ServerPlan(model=trapped, participants=(self.context.target,),
                          sybils=SybilDevices(count=params.sybils))

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: SybilParams = self.params  # type: ignore[assignment]
        if observation.aggregate is None:
            raise GialabError(f"sybil reads the aggregate, which {observation.threat_model} does not grant")
        layer, index = input_linear(observation.model, observation.data, self.name)
        rows = params.rows or layer.out_features
        grad_w = observation.aggregate[index][:rows].double()
        grad_b = observation.aggregate[index + 1][:rows].double()
        noise = idle_row_noise_std(grad_w, grad_b)
        noisy = noise > 0
        gated = torch.where(grad_b.abs() >= params.noise_gate * noise, grad_b, torch.zeros_like(grad_b))
        # Every real participant's samples are in the aggregate; the read-out cannot tell whose a row is.
        counts = observation.example_counts
        wanted = sum(counts[c] for c in observation.participants if c in counts) if counts else params.max_images
        images, details = read_single_sample_rows(
            grad_w, gated, wanted,
            tol=params.group_tol + (2.8 / params.noise_gate if noisy else 0.0),
            min_bias_grad=params.min_bias_grad,
            range_slack=params.range_slack + (3.0 / params.noise_gate if noisy else 0.0),
            weight=layer.weight[:rows].detach().double(), bias=layer.bias[:rows].detach().double(),
        )
        isolated = tuple(observation.participants) == (observation.target,)
        round_size = len(observation.participants) + len(observation.sybils)
        details = dict(details) | {
            "round_size": float(round_size), "sybils": float(len(observation.sybils)),
            "isolated": float(isolated), "noise_std_estimated": noise,
            # If isolated, the estimate is the victim's own share sigma C / sqrt(M - 1): this is the
            # sigma C the protocol promised, as far as the wire tells it.
            **({"noise_std_promised_estimated": noise * math.sqrt(round_size - 1)}
               if isolated and round_size > 1 else {}),
        }
        shape = observation.data.shape
        recovered = (images.reshape(len(images), *shape).float().clamp(0, 1) if images is not None
                     else torch.zeros(0, *shape))
        return Reconstruction(
            images=recovered, labels=None, source=observation.target, details=details,
            isolated_update=IsolatedUpdate(observation.target, observation.aggregate,
                                           tuple(range(len(observation.aggregate))), observation.model)
            if isolated else None,
        )
