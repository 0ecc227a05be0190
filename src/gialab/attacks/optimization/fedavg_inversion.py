"""Inverting FedAvg updates by unrolling the client's local steps.

Paper: Geiping, Bauermeister, Droege, Moeller 2020, "Inverting Gradients: How easy is it to break
privacy in federated learning?" (NeurIPS), section 5 ("Inverting multiple local updates"), the
objective of their eq. (4) applied to a simulated update.

Under FedAvg a client sends ``w_start - w_end`` after E epochs of local SGD, not a gradient, so
the one-gradient objective of Inverting Gradients does not apply. Geiping et al. instead make the
local training itself differentiable: dummy data ``x`` is pushed through the same E epochs of
mini-batch SGD (same local batch size, learning rate and mini-batch order, here the order the data
is held, as ``fl/training.py`` visits it) with ``create_graph``, and the simulated delta is matched
to the observed one by cosine distance plus total variation (eq. 4). The cosine distance is what
makes this work: the delta's magnitude depends on ``lr`` and the number of steps, its direction on
the data. This needs the local hyperparameters (side information ``local_hyperparameters``).

Optimization as in their code: Adam on the signed gradient of ``x`` (their ``signed`` option),
step decay by 10x at 3/8, 5/8 and 7/8 of the iterations, projection onto the box [0, 1]. Our
pixels are in [0, 1] rather than normalized, so the rate is 0.03 (their 0.1 on a ~4x wider range)
and the TV weight 0.1 for the mean TV (tuned on the preset; their 1e-4 barely smooths here).
Labels come from the scenario's side information when declared, else from the last layer
(``label_inference.batch_labels`` on the delta, which is a sum of ``lr``-scaled gradients: exact
for the classes present, approximate for their counts when there are several local steps).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.optimization.label_inference import batch_labels
from gialab.attacks.optimization.objective import Distance, Regularizers, gradient_distance, regularized
from gialab.attacks.registry import register
from gialab.errors import GialabError
from gialab.fl.setup import FLSetup
from gialab.threats import Capability, Observation


class FedAvgInversionParams(AttackParams):
    iterations: int = Field(300, ge=1, description="Adam steps")
    lr: float = Field(0.03, gt=0, description="Adam learning rate on [0, 1] pixels (decayed 10x at 3/8, 5/8, 7/8)")
    distance: Distance = Field("cosine", description="update distance: cosine (paper) or l2")
    tv: float = Field(0.1, ge=0, description="weight of total variation (mean TV of [0, 1] pixels; tuned on the preset)")
    signed: bool = Field(True, description="step on the sign of the image gradient, as in their code")
    label_strategy: Literal["counts", "yin"] = Field("counts", description="label inference without side info")
    batch_size: int | None = Field(None, ge=1, description="images to recover; default: the observed count")


def simulate_update(
    model: nn.Module, x: Tensor, y: Tensor, setup: FLSetup, *, create_graph: bool = True
) -> tuple[Tensor, ...]:
    """``w_start - w_end`` after ``setup``'s local epochs on ``(x, y)``, differentiable in ``x``.

    Mirrors ``fl.training.fedavg_update`` (train mode, cross-entropy, mini-batches in order) with
    ``torch.func.functional_call`` so every step stays in the autograd graph.
    """
    names = [n for n, _ in model.named_parameters()]
    start = [q.detach() for q in model.parameters()]
    weights = [s.clone().requires_grad_(True) for s in start]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    step = setup.local_batch_size or len(x)
    for _ in range(setup.local_epochs):
        for i in range(0, len(x), step):
            state = dict(zip(names, weights)) | buffers
            loss = F.cross_entropy(functional_call(model, state, (x[i : i + step],)), y[i : i + step])
            grads = torch.autograd.grad(loss, weights, create_graph=create_graph, allow_unused=True)
            weights = [w - setup.learning_rate * (g if g is not None else torch.zeros_like(w))
                       for w, g in zip(weights, grads, strict=True)]
    return tuple(s - w for s, w in zip(start, weights, strict=True))


@register
class FedAvgInversion(Attack):
    name = "fedavg-inversion"
    demo_overrides = {"iterations": 300}
    smoke_overrides = {"iterations": 2}
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = FedAvgInversionParams
    update_kinds = frozenset({"model_delta"})

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: FedAvgInversionParams = self.params  # type: ignore[assignment]
        setup = observation.fl_setup
        if setup is None:
            raise GialabError("fedavg-inversion unrolls the clients' local training and needs its epochs, "
                              "local batch size and rate: declare side_information: [local_hyperparameters]")
        self.check_update_kind(observation.update_kind)
        device = self.context.device
        observed = tuple(t.to(device) for t in observation.target_update())
        model = copy.deepcopy(observation.model).to(device).train()
        for q in model.parameters():
            q.requires_grad_(True)
        counts = observation.example_counts or {}
        n = p.batch_size or counts.get(observation.target, 1)
        if observation.labels is not None and observation.target in observation.labels:
            labels = observation.labels[observation.target].to(device)
            n = labels.numel()
            label_source = 1.0
        else:
            steps = setup.local_epochs * -(-n // (setup.local_batch_size or n))
            mean_gradient = tuple(t / (setup.learning_rate * steps) for t in observed)
            labels = batch_labels(model, mean_gradient, n, p.label_strategy).to(device)
            label_source = 0.0

        gen = torch.Generator().manual_seed(self.context.seed)
        start = torch.rand((n, *observation.data.shape), generator=gen)
        x = start.clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        milestones = [int(p.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        priors = Regularizers(tv=p.tv)
        best = (float("inf"), x.detach().clone())
        for step in range(1, p.iterations + 1):
            optimizer.zero_grad()
            simulated = simulate_update(model, x, labels, setup)
            distance = gradient_distance(observed, simulated, p.distance)
            regularized(distance, x, priors).backward()
            if p.signed:
                x.grad.sign_()  # type: ignore[union-attr]
            value = float(distance.detach())
            if value < best[0]:
                best = (value, x.detach().clone())
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            self.context.progress(step, p.iterations)
        return Reconstruction(
            images=best[1].clamp(0, 1).cpu(),
            labels=labels.cpu(),
            source=observation.target,
            reference=start,
            details={"update_distance": best[0], "iterations": float(p.iterations),
                     "labels_from_side_information": label_source},
        )
