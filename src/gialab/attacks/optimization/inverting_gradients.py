"""Inverting Gradients: cosine gradient matching with a total-variation prior.

Paper: Geiping, Bauermeister, Droege, Moeller 2020, "Inverting Gradients - How easy is it to break
privacy in federated learning?" (NeurIPS); public code ``inversefed/reconstruction_algorithms.py``.

Implements the paper's eq. (4) (survey eq. 19 with the cosine first term and TV as the prior):
``argmin_{x in [0,1]^n} 1 - <grad L(x, y), G> / (|grad L(x, y)| |G|) + alpha * TV(x)``.
The cosine distance matters because it ignores the gradient's magnitude, which on a trained
network carries little about the image and dominates an L2 distance; TV is the image prior that
makes ReLU/BatchNorm networks invertible in practice. As in their code, the optimizer is Adam fed
the *sign* of the objective's gradient (a scale-free step, robust to the tiny gradients deep
networks give), with the step decayed 10x at 3/8, 5/8 and 7/8 of the iterations, and the images
are projected back into the box after every step. Several random restarts run and the one with
the smallest final gradient distance wins (their ``scoring_choice='loss'``). Their code works on
normalized images, so we optimize ``(x - mean) / std`` and start from Gaussian noise there (a grey,
low-contrast start): ``lr`` and the starting point then mean what they mean in their code.

Budget: their CIFAR runs take 24,000 steps; on a CPU the width-64 ConvNet costs ~0.35 s per step
at batch 1 on one thread (~0.19 s on two), so the default of 300 steps is about one to two minutes.

gialab's one change to the optimizer, off by default (``pyramid=1``): ``pyramid=L`` steps in L
levels of the image at full, 1/2, ..., 1/2^(L-1) resolution whose upsampled sum is the image
(``image_pyramid.py``). The objective and every other choice stay the paper's; coarse levels move
whole blocks per signed step, so the smooth structure that carries most of the PSNR arrives within
a CPU budget (the ``inverting-gradients`` preset uses 5 levels; figures in BENCHMARKS.md). What no
optimizer can fix: with train-mode BatchNorm right after the first convolution (this ConvNet,
batch 1) the gradient is exactly invariant to scaling the image, ``x -> a x``, so its brightness
and contrast together are a guess (the start's), and a structurally exact reconstruction at the
wrong ``a`` scores low PSNR.

Speed: restarts are independent problems, so they run as ONE vmapped double-backward pass
(``torch.func.vmap`` over ``grad`` of a function that itself calls ``grad``). Each restart is its
own batch of ``n`` images, so train-mode BatchNorm statistics stay per restart, exactly as the
client computed them. Running-statistics buffers are dropped for the attack's copy of the model
(they do not affect train-mode outputs, and updating them in place cannot be vmapped). One
restart (or ``batched=False``) skips vmap and uses plain autograd: the same numbers, less dispatch.

A float32 step costs what a step of breaching costs (BENCHMARKS.md): both compute the same double
backward through the network, and that is nearly all of the time; Python adds only the optimizer
step. ``precision="bfloat16"`` runs that double backward under ``torch.autocast`` (convolutions in
bfloat16, which oneDNN runs natively on CPUs with AVX512-BF16) for about 0.65x the time per step;
the dummy gradient's direction then deviates a little from float32's (cosine ~0.94 on a random
image), which costs some PSNR per step and buys 1.5x the steps per second. Breaching's
``mixed_precision`` switch does the same, so like for like the per-step cost is still breaching's.

Labels: declared side information if the scenario grants it, else iDLG for one image
(``label_inference.idlg_label``); larger batches need declared labels (see ``pick_labels``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.optimization.image_pyramid import ImagePyramid
from gialab.attacks.optimization.label_inference import batch_labels, idlg_label
from gialab.attacks.optimization.objective import Distance, Regularizers, gradient_distance, regularized
from gialab.attacks.registry import register
from gialab.errors import GialabError
from gialab.threats import Capability, Observation

_CHECK_EVERY = 25  # iterations between early-stop checks (the only host syncs in the loop)

Precision = Literal["float32", "bfloat16"]


class InvertingGradientsParams(AttackParams):
    iterations: int = Field(300, ge=1, description="Adam steps per restart (the paper's CIFAR runs use 24000)")
    lr: float = Field(0.1, gt=0, description=(
        "signed-Adam step in normalized units (pixels move ~lr*std per step), decayed 10x at 3/8, 5/8, 7/8"))
    tv: float = Field(0.8, ge=0, description=(
        "weight of total variation of the [0,1] images (breaching's 0.2 on normalized images at std 0.25)"))
    restarts: int = Field(1, ge=1, description="random restarts; the smallest final gradient distance wins")
    pyramid: int = Field(1, ge=1, le=8, description=(
        "levels the image is optimized in: 1 = its pixels (the paper); L = a sum of copies at full, 1/2, ..., "
        "1/2^(L-1) resolution, which settles smooth structure in fewer steps (gialab's change, image_pyramid.py)"))
    distance: Distance = Field("cosine", description="gradient distance: cosine (the paper) or l2 (DLG)")
    precision: Precision = Field("float32", description=(
        "arithmetic of the network's double backward: float32, or bfloat16 (torch.autocast), ~0.65x the "
        "time per step on a CPU with AVX512-BF16, at some quality per step (BENCHMARKS.md)"))
    early_stop_patience: int = Field(
        0, ge=0, description="stop once the best distance has not improved by 1e-4 (relative) in this many steps; 0: off")
    batch_size: int | None = Field(None, ge=1, description="images to recover; default: the observed example count")
    batched: bool = Field(True, description=(
        "run all restarts in one vmapped pass (False: one by one, same numbers); float32 only"))


def pick_labels(observation: Observation, model: nn.Module, observed: tuple[Tensor, ...], n: int) -> Tensor:
    """The labels to match with: declared side information, else iDLG at batch 1, else the
    batch's label multiset read off the last layer (``label_inference.batch_labels``)."""
    if observation.labels is not None and observation.target in observation.labels:
        labels = observation.labels[observation.target].reshape(-1).long()
        if len(labels) != n:
            raise GialabError(f"the declared labels cover {len(labels)} examples but {n} are to be recovered")
        return labels
    if n == 1:
        return idlg_label(model, observed)
    return batch_labels(model, observed, n)


def restart_init(seed: int, restarts: int, shape: tuple[int, ...], mean: Tensor, std: Tensor) -> Tensor:
    """Gaussian starting images, restart ``r`` drawn from its own generator, so batching changes nothing.

    Their ``init='randn'`` draws in the normalized space, i.e. ``mean + std * N(0, 1)`` in pixels:
    a grey, low-contrast start rather than saturated noise, which matters at short budgets.
    """
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 7919 + r))
                         for r in range(restarts)])
    return mean.view(-1, 1, 1) + std.view(-1, 1, 1) * noise


def make_objective(
    model: nn.Module, observed: tuple[Tensor, ...], labels: Tensor, kind: Distance, reg: Regularizers,
    restarts: int, precision: Precision = "float32",
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``x -> (grad_x objective, gradient distance)`` for all restarts ``x: (R, n, C, H, W)`` at once.

    Several restarts run as one vmapped double-backward pass. A single restart takes plain autograd
    instead: the same numbers, without vmap's per-operator dispatch, which costs about 15% per step
    on a CPU at batch 1. ``precision="bfloat16"`` runs the network's convolutions and matrix
    products, forward and both backward passes, in bfloat16 under ``torch.autocast``; the weights,
    the dummy gradient, the distance and the image stay float32.
    """
    if precision != "float32" and restarts > 1:
        raise ValueError("bfloat16 runs one restart per objective: autocast does not compose with torch.func's "
                         "grad of grad")
    step = (_single_objective(model, observed, labels, kind, reg) if restarts == 1
            else _vmapped_objective(model, observed, labels, kind, reg))
    if precision == "float32":
        return step
    device_type = observed[0].device.type

    def reduced(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            g, distance = step(x)
        return g.to(x.dtype), distance.float()

    return reduced


def _vmapped_objective(
    model: nn.Module, observed: tuple[Tensor, ...], labels: Tensor, kind: Distance, reg: Regularizers
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The objective of every restart ``x: (R, n, C, H, W)`` in one vmapped double backward."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def client_loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (x,)), labels)

    def objective(x: Tensor) -> tuple[Tensor, Tensor]:
        dummy = grad(client_loss)(params, x)
        distance = gradient_distance(observed, tuple(dummy.values()), kind)
        return regularized(distance, x, reg), distance

    return vmap(grad(objective, has_aux=True))


def _single_objective(
    model: nn.Module, observed: tuple[Tensor, ...], labels: Tensor, kind: Distance, reg: Regularizers
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The objective of one restart ``x: (1, n, C, H, W)`` by autograd's double backward."""
    params = [p.detach().requires_grad_(True) for p in model.parameters()]
    weights = dict(zip((k for k, _ in model.named_parameters()), params, strict=True))
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def step(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(functional_call(model, (weights, buffers), (x[0],)), labels)
        dummy = torch.autograd.grad(loss, params, create_graph=True)
        distance = gradient_distance(observed, dummy, kind)
        (g,) = torch.autograd.grad(regularized(distance, x[0], reg), x)
        return g, distance.detach().reshape(1)

    return step


@register
class InvertingGradients(Attack):
    name = "inverting-gradients"
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = InvertingGradientsParams
    update_kinds = frozenset({"gradient"})
    demo_overrides = {"iterations": 150}
    smoke_overrides = {"iterations": 2}

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: InvertingGradientsParams = self.params  # type: ignore[assignment]
        self.check_update_kind(observation.update_kind)
        device = self.context.device
        observed = tuple(t.detach().to(device) for t in observation.target_update())
        model = copy.deepcopy(observation.model).to(device).train()
        replace_all_batch_norm_modules_(model)
        counts = observation.example_counts or {}
        n = p.batch_size or counts.get(observation.target, 1)
        labels = pick_labels(observation, model, observed, n).to(device)
        step = make_objective(model, observed, labels, p.distance, Regularizers(tv=p.tv),
                              p.restarts if self._one_pass() else 1, p.precision)

        start = time.perf_counter()
        spec = observation.data
        x0 = restart_init(self.context.seed, p.restarts, (n, *spec.shape),
                           torch.tensor(spec.mean), torch.tensor(spec.std)).to(device)
        chunks = [x0] if self._one_pass() else list(x0.split(1))
        mean = torch.tensor(spec.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(spec.std, device=device).view(-1, 1, 1)
        results = [self._optimize(step, x, mean, std, p) for x in chunks]
        images = torch.cat([r[0] for r in results])
        distances = torch.cat([r[1] for r in results])
        iterations = max(r[2] for r in results)
        distances = torch.where(torch.isfinite(distances), distances, torch.inf)
        best = int(distances.argmin())
        seconds = time.perf_counter() - start
        return Reconstruction(
            images=images[best].clamp(0, 1).cpu(),
            labels=labels.cpu(),
            source=observation.target,
            reference=x0[best].clamp(0, 1).cpu(),
            details={"gradient_distance": float(distances[best]), "iterations": float(iterations),
                     "restarts": float(p.restarts), "best_restart": float(best), "seconds": seconds},
        )

    def _one_pass(self) -> bool:
        """Whether the restarts run as one vmapped pass. Not in bfloat16: autocast does not compose
        with torch.func's grad of grad (a dtype mismatch in the double backward), and on a CPU one
        pass saves no time per restart anyway (BENCHMARKS.md)."""
        p: InvertingGradientsParams = self.params  # type: ignore[assignment]
        return p.batched and p.precision == "float32"

    def _optimize(
        self, step: Callable[[Tensor], tuple[Tensor, Tensor]], x0: Tensor, mean: Tensor, std: Tensor,
        p: InvertingGradientsParams,
    ) -> tuple[Tensor, Tensor, int]:
        return signed_adam(step, x0, mean, std, lr=p.lr, iterations=p.iterations, progress=self.context.progress,
                           early_stop_patience=p.early_stop_patience, levels=p.pyramid)


def signed_adam(
    step: Callable[[Tensor], tuple[Tensor, Tensor]], x0: Tensor, mean: Tensor, std: Tensor, *, lr: float,
    iterations: int, progress: Callable[[int, int], None], early_stop_patience: int = 0, levels: int = 1,
) -> tuple[Tensor, Tensor, int]:
    """Signed Adam with step decay and box projection; returns final images, distances, steps.

    Like their code, it moves the normalized image ``z = (x - mean) / std`` (so ``lr`` means what
    it means there); the sign of the gradient is the same in both spaces. ``levels > 1`` steps in
    a pyramid of coarser copies of ``z`` instead of its pixels (``image_pyramid``; 1 is the
    paper's). Shared with the attacks that reuse Geiping et al.'s optimizer on their own
    objective (CGI's eq. 19).
    """
    low, high = -mean / std, (1 - mean) / std
    z = ImagePyramid((x0 - mean) / std, levels)
    optimizer = torch.optim.Adam(z.levels, lr=lr)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    best = torch.full((), torch.inf, device=x0.device)
    best_seen, last_improved = float("inf"), 0
    done = 0
    check_every = min(_CHECK_EVERY, early_stop_patience or _CHECK_EVERY)
    for it in range(1, iterations + 1):
        g, distance = step(mean + std * z.image())
        z.set_signed_gradient(g)
        optimizer.step()
        scheduler.step()
        z.project(low, high)
        best = torch.minimum(best, distance.min().detach())
        done = it
        if it % check_every == 0 or it == iterations:
            progress(it, iterations)
            if early_stop_patience:
                value = float(best)
                if value < best_seen * (1 - 1e-4):
                    best_seen, last_improved = value, it
                elif it - last_improved >= early_stop_patience:
                    break
    images = mean + std * z.image()
    _, final = step(images)  # score the images actually returned
    return images, final.detach(), done
