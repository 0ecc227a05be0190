"""The imprint module of Robbing the Fed and its read-out: bins of a linear measurement.

Paper: Fowl et al. 2021 (ICLR 2022), "Robbing the Fed: Directly Obtaining Private Data in
Federated Learning with Modified Models", section 3; survey section 3.1, eqs. 6-7.

The server puts a block in front of the model: ``k`` ReLU units on the flattened input,
``z_i = <W_i, x> + b_i``, whose rows all compute the same measurement ``h(x) = <a, x>`` (here a
fixed random projection), standardized by the measurement's estimated mean ``mu`` and std
``sigma``, and offset by the standard normal quantiles ``c_i = Phi^-1(i/k)``:

    W_i = g * a / sigma,    b_i = -g * (mu / sigma + c_i),    c_0 = -inf (every sample fires unit 0).

Unit ``i`` then fires for every sample whose standardized measurement exceeds ``c_i``: the units
are cumulative, and the ``k`` intervals between consecutive thresholds are equally likely under
a Gaussian model of the measurement. A second linear layer maps the ``k`` units back to the input
shape and adds them to the input (a residual), so any model can follow and still sees (almost)
the image. All of its columns are equal; that is what makes the read-out exact: the gradient
reaching unit ``i`` from sample ``n`` is then ``delta_n`` for every unit the sample fires, so
adjacent units differ only by the samples whose measurement lies between their thresholds.
Survey eq. 6-7 (paper eq. 3):

    (dL/dW_l - dL/dW_{l+1}) / (dL/db_l - dL/db_{l+1}) = sum_{n in bin l} delta_n x_n / sum delta_n,

which is ``x_t`` exactly when sample ``t`` is alone in bin ``l``.

How many are alone. With ``n`` samples falling independently into bins with probabilities
``p_i``, a sample is alone with probability ``sum_i p_i (1 - p_i)^(n-1)``; for the equiprobable
bins above that is ``(1 - 1/k)^(n-1)`` (:func:`expected_single_fraction`). This holds only as
far as the Gaussian model of the measurement holds; the attack reports it as
``expected_fraction`` next to what was really recovered.

``g`` (``gain``) rescales the imprint rows without moving the bins; the way back carries
``1/g``. This is the paper's FedAvg "linear scaling" (survey Table 1: "FedAVG case necessitates
additional linear scaling in imprint module"). Under FedAvg the client takes several local
steps; each step moves the imprint rows by ``lr * delta * x``, which would move the bins
mid-round and mix samples across them. Since the gradient reaching the rows scales as ``1/g``
and the rows as ``g``, the bins move ``1/g^2`` as much per step: with a large gain every step
adds ``lr * delta_{n,t} x_n`` to the same bin, the update stays linear in each sample's
contributions, and the ratio of eq. 6 still returns ``x_n`` (tests/test_robbing_the_fed.py:
gain 1 recovers 0.09 of a batch under aggressive local training, gain 100 recovers 0.50 of an
expected 0.61). The block computes in float64: FedAvg sends ``w_start - w_end``, and in float32
a per-sample change ``1e-8`` of weights of size ``g`` would be lost to rounding; the server picks
the block's precision like any other part of the architecture it sends.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import nn

from gialab.errors import GialabError
from gialab.threats import Capability, Observation


def bin_thresholds(num_bins: int) -> torch.Tensor:
    """``c_i = Phi^-1(i/k)`` for ``i = 0..k-1`` (float64), with ``c_0 = -inf``."""
    normal = NormalDist()
    return torch.tensor([-math.inf] + [normal.inv_cdf(i / num_bins) for i in range(1, num_bins)],
                        dtype=torch.float64)


def expected_single_fraction(batch: int, bin_probabilities: torch.Tensor | int) -> float:
    """Expected share of ``batch`` independent samples that land alone in their bin.

    ``bin_probabilities`` is the probability of each bin, or an int ``k`` for ``k`` equiprobable
    bins, where the answer is ``(1 - 1/k)^(batch - 1)``.
    """
    if isinstance(bin_probabilities, int):
        return (1.0 - 1.0 / bin_probabilities) ** (batch - 1)
    p = bin_probabilities.double()
    return float((p * (1 - p) ** (batch - 1)).sum())


class ImprintBlock(nn.Module):
    """``x + s * sum_i relu(<W_i, x> + b_i)``: ``k`` cumulative measurement bins added back to the input.

    ``imprint`` holds the bins (rows ``g * a / sigma``, biases ``-g * (mu / sigma + c_i)``). The
    way back to the input is a fixed buffer ``s`` (every pixel ``out_scale / (g * k)``) applied to
    the *sum* of the units, not a trainable layer: every unit then receives the same gradient
    ``delta_n = s . dL/dx'_n`` from sample ``n``, in every local step, however the rest of the
    model trains. A trainable ``k``-column layer would start equal and drift apart under FedAvg,
    breaking eq. 6's cancellation. The server chooses the architecture, fixed connections
    included (threat model: ``modify_architecture``).
    """

    def __init__(
        self, shape: tuple[int, int, int], direction: torch.Tensor, mean: float, std: float, num_bins: int,
        *, gain: float = 1.0, out_scale: float = 1e-2, dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if std <= 0:
            raise GialabError(f"imprint: the measurement's std must be positive, got {std}")
        self.shape = tuple(shape)
        size = math.prod(shape)
        if direction.numel() != size:
            raise GialabError(f"imprint: the measurement has {direction.numel()} weights but the input has "
                              f"{'x'.join(map(str, shape))} = {size} values")
        self.imprint = nn.Linear(size, num_bins, dtype=dtype)
        self.relu = nn.ReLU()
        thresholds = bin_thresholds(num_bins)
        # c_0 = -inf: unit 0 must fire for everything; 10 standard deviations below the mean does.
        thresholds[0] = min(-10.0, float(thresholds[1]) - 10.0) if num_bins > 1 else -10.0
        with torch.no_grad():
            a = direction.double().flatten()
            self.imprint.weight.copy_((gain * a / std).expand(num_bins, size))
            self.imprint.bias.copy_(-gain * (mean / std + thresholds))
        self.register_buffer("spread", torch.full((size,), out_scale / (gain * num_bins), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.flatten(1).to(self.spread.dtype)
        fired = self.relu(self.imprint(inputs)).sum(dim=1, keepdim=True)
        return x + (fired * self.spread).to(x.dtype).view(x.shape[0], *self.shape)


class ImprintedModel(nn.Module):
    """The imprint block in front of an unchanged model (its parameters come first)."""

    def __init__(self, block: ImprintBlock, model: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.block(x))


def bin_differences(grad_w: torch.Tensor, grad_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacent differences of cumulative bins (survey eq. 6, numerator and denominator).

    Row ``l`` becomes ``g_l - g_{l+1}``; the last row stays (nothing lies above its threshold).
    """
    dw, db = grad_w.clone(), grad_b.clone()
    dw[:-1] -= grad_w[1:]
    db[:-1] -= grad_b[1:]
    return dw, db


def attacked_update(observation: Observation) -> tuple[tuple[torch.Tensor, ...], int | None, int | None]:
    """The update a sparsification attack reads: the target's own when individual updates are
    observable, else the aggregate (these attacks survive secure aggregation: every sample
    still lands in its own bin). Returns ``(tensors, source, example count or None)``."""
    counts = observation.example_counts
    if Capability.OBSERVE_INDIVIDUAL in observation.capabilities and observation.target in observation.updates:
        count = counts[observation.target] if counts else None
        return observation.updates[observation.target], observation.target, count
    if observation.aggregate is None:
        raise GialabError(f"the attack needs the target's update or the aggregate; {observation.threat_model} "
                          "grants neither")
    count = sum(counts[c] for c in observation.participants if c in counts) if counts else None
    return observation.aggregate, None, count
