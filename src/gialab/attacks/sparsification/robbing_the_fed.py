"""Robbing the Fed: a malicious server puts an imprint module in front of any model.

Paper: Fowl et al. 2021 (ICLR 2022), "Robbing the Fed: Directly Obtaining Private Data in
Federated Learning with Modified Models"; survey section 3.1, eqs. 6-7. The module and the
bin arithmetic live in ``imprint.py``; this file decides what the server measures, how it
estimates the measurement's distribution, and which bins it believes.

The measurement. The bins cut a scalar measurement ``h(x) = <a, x>`` of each input into ``k``
intervals that are equally likely under a Gaussian model ``N(mu, sigma^2)``. The paper uses
brightness; we default to a fixed random unit direction ``a`` (drawn from the run's seed) because
a projection on many pixels is much closer to Gaussian than brightness is (on the natural crops
with the measurement's own mean/std, brightness bins leave about 91% of the expected single
samples, random projections 95-100%), and the equiprobable-bin count is only as good as that
model. ``measurement=brightness`` gives the paper's choice.

Where ``mu`` and ``sigma`` come from (the attacker never sees the data):
* first round: the public ``DataSpec`` statistics through a formula. ``mu = sum_j a_j m_c(j)`` is
  exact for a linear measurement given per-channel pixel means; ``sigma = sqrt(sum_j a_j^2
  s_c(j)^2)`` assumes uncorrelated pixels, which natural images are not, so it is off by a
  factor that depends on ``a`` (0.8x-2x on the natural crops).
* later rounds (``fl.rounds > 1``): ``observe_round`` measures every image the previous rounds
  gave back (a recovered sample's measurement is exact) and refits ``mu``, ``sigma`` to them.
  This is the multi-query power the malicious-server threat model grants; the preset uses one
  calibration round on other examples of the victim before the attacked round (batch 64, 128
  bins, seeds 0-4 on the natural crops: median 0.625 of the batch recovered at 100 dB against a
  closed form 0.61; see bench/imprint_fraction.py for one round against two).

FedAvg is handled by the block's gain (default 100; see ``imprint.py``), which changes nothing
under FedSGD.

What is returned. Every non-empty bin gives ``(dW_l - dW_{l+1}) / (db_l - db_{l+1})``: the
sample itself when it was alone, a weighted mix otherwise. By default (``keep=plausible``) only
estimates that could be one sample are returned: pixels inside [0, 1] and a measurement inside
the bin's own interval (a mix whose weights ``delta_n`` have mixed signs extrapolates and fails
either test; a mix with same-sign weights passes, so some returned images are blends). ``keep=all``
returns every non-empty bin. Either way at most as many images as the update has examples.

Details reported: ``expected_fraction`` (closed form ``(1 - 1/k)^(n-1)``), ``nonempty_bins``,
``returned``, the ``measurement_mean``/``measurement_std`` the bins were built with.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackContext, AttackParams, Reconstruction
from gialab.attacks.registry import register
from gialab.attacks.sparsification.imprint import (
    ImprintBlock, ImprintedModel, attacked_update, bin_differences, expected_single_fraction,
)
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.fl.protocol import ServerPlan
from gialab.threats import Capability, Observation

MAX_BINS = 4096  # the imprint layer holds k x C*H*W float64 weights; 4096 x 3x32x32 is 100 MB per copy


class RobbingTheFedParams(AttackParams):
    num_bins: int = Field(128, ge=2, le=MAX_BINS, description="imprint bins k (ReLU units of the imprint layer)")
    measurement: Literal["random", "brightness"] = Field("random", description="what the bins measure")
    gain: float = Field(100.0, gt=0, description="imprint row scale g (back path 1/g): large g keeps bins still over FedAvg steps")
    out_scale: float = Field(1e-2, gt=0, description="size of the signal the block adds to the input")
    keep: Literal["plausible", "all"] = Field("plausible", description="return bins that could be one sample, or all")
    min_bias_grad: float = Field(1e-9, gt=0, description="bins with |db diff| below this times the max are empty")
    range_slack: float = Field(0.02, ge=0, description="a plausible estimate may leave [0, 1] by this much")
    max_images: int = Field(512, ge=1, description="images to return when the example count is unknown")


@register
class RobbingTheFed(Attack):
    name = "robbing-the-fed"
    requires = frozenset({Capability.MODIFY_ARCHITECTURE, Capability.OBSERVE_AGGREGATE})
    Params = RobbingTheFedParams

    def __init__(self, params: AttackParams, context: AttackContext | None = None) -> None:
        super().__init__(params, context)
        self._seen: list[torch.Tensor] = []  # measurements of images recovered in earlier rounds
        self._block: ImprintBlock | None = None
        self._stats: tuple[float, float] = (0.0, 1.0)

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        probe = torch.zeros(2, *data.shape)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(probe)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0][:120]
            raise GialabError(f"robbing-the-fed: the imprint outputs {'x'.join(map(str, data.shape))} images but the "
                              f"model does not take them ({first}); build the model for the data's shape") from None
        finally:
            model.train(was_training)

    def direction(self, data: DataSpec) -> torch.Tensor:
        """The measurement's unit direction ``a`` over the flattened input (float64)."""
        params: RobbingTheFedParams = self.params  # type: ignore[assignment]
        size = math.prod(data.shape)
        if params.measurement == "brightness":
            a = torch.ones(size, dtype=torch.float64)
        else:
            generator = torch.Generator().manual_seed(self.context.seed)
            a = torch.randn(size, generator=generator, dtype=torch.float64)
        return a / a.norm()

    def estimate_stats(self, data: DataSpec) -> tuple[float, float]:
        """``(mu, sigma)`` of the measurement: refit to earlier rounds' recoveries when there are
        enough of them, else the DataSpec formula (exact mean, independent-pixel std)."""
        if sum(len(s) for s in self._seen) >= 8:
            values = torch.cat(self._seen)
            return float(values.mean()), float(values.std())
        a = self.direction(data).view(data.shape)
        mean = torch.tensor(data.mean, dtype=torch.float64).view(-1, 1, 1)
        std = torch.tensor(data.std, dtype=torch.float64).view(-1, 1, 1)
        return float((a * mean).sum()), float(((a * std) ** 2).sum().sqrt())

    def plan_server(self, model: nn.Module, data: DataSpec) -> ServerPlan:
        params: RobbingTheFedParams = self.params  # type: ignore[assignment]
        self._stats = self.estimate_stats(data)
        block = ImprintBlock(data.shape, self.direction(data), *self._stats, params.num_bins,
                             gain=params.gain, out_scale=params.out_scale)
        self._block = block
        return ServerPlan(model=ImprintedModel(block, copy.deepcopy(model)))

    def observe_round(self, observation: Observation) -> None:
        images, _ = self._read(observation)
        if images is not None:
            self._seen.append(images.flatten(1) @ self.direction(observation.data))

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: RobbingTheFedParams = self.params  # type: ignore[assignment]
        images, details = self._read(observation)
        if images is None:  # every bin empty or filtered out (noise drowned it): nothing recovered
            images = torch.zeros(0, *observation.data.shape)
        _, source, count = attacked_update(observation)
        n = count or len(images)
        details |= {
            "expected_fraction": expected_single_fraction(n, params.num_bins),
            "measurement_mean": self._stats[0],
            "measurement_std": self._stats[1],
        }
        return Reconstruction(
            images=images.reshape(len(images), *observation.data.shape).float().clamp(0, 1),
            labels=None, source=source, details=details,
        )

    def _read(self, observation: Observation) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Eqs. 6-7 on the observed update: one estimate per non-empty bin, filtered by ``keep``."""
        params: RobbingTheFedParams = self.params  # type: ignore[assignment]
        model = observation.model
        if not isinstance(model, ImprintedModel):
            raise GialabError("robbing-the-fed: the observed model has no imprint block (was the plan sent?)")
        update, _, count = attacked_update(observation)
        block = model.block
        index = parameter_index(model, block.imprint.weight)
        grad_w, grad_b = update[index].double(), update[index + 1].double()
        dw, db = bin_differences(grad_w, grad_b)
        scale = db.abs().max()
        if scale == 0:
            return None, {"nonempty_bins": 0.0, "returned": 0.0}
        nonempty = torch.nonzero(db.abs() > params.min_bias_grad * scale).flatten()
        estimates = dw[nonempty] / db[nonempty, None]
        keep = torch.ones(len(nonempty), dtype=torch.bool)
        if params.keep == "plausible":
            slack = params.range_slack
            keep &= (estimates.min(dim=1).values >= -slack) & (estimates.max(dim=1).values <= 1 + slack)
            # The bin's interval in pre-activation units: unit l fires, unit l+1 does not.
            z = estimates @ block.imprint.weight.double().T + block.imprint.bias.double()
            lower = z.gather(1, nonempty[:, None]).squeeze(1)
            upper_index = (nonempty + 1).clamp(max=grad_b.shape[0] - 1)
            upper = z.gather(1, upper_index[:, None]).squeeze(1)
            last = nonempty == grad_b.shape[0] - 1
            tolerance = 1e-6 * block.imprint.bias.abs().max().double()
            keep &= (lower > -tolerance) & (last | (upper < tolerance))
        estimates = estimates[keep]
        wanted = count or params.max_images
        if len(estimates) > wanted:  # more candidates than samples: prefer the best-conditioned bins
            strength = db[nonempty][keep].abs()
            estimates = estimates[strength.argsort(descending=True)[:wanted]]
        details = {"nonempty_bins": float(len(nonempty)), "returned": float(len(estimates))}
        return (estimates if len(estimates) else None), details
