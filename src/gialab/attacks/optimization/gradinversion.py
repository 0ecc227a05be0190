"""GradInversion: batch recovery with BatchNorm statistics and group consistency.

Paper: Yin, Mallya, Vahdat, Alvarez, Kautz, Molchanov 2021, "See through Gradients: Image Batch
Recovery via GradInversion" (CVPR). Implements their eq. (2)-(9), the objective
``R_grad + R_aux``:

* labels first (sec. 3.1, eq. 5): read off the last layer's gradient (``label_inference``), so
  only images are optimized; a scenario that declares ``labels`` as side information uses those;
* ``R_grad`` (eq. 6): the distance between the dummy and the observed gradient (L2 as in the
  paper, or Geiping et al.'s cosine);
* ``R_fidelity`` (eq. 7-8): TV and L2 image priors (``objective.Regularizers``) plus BatchNorm
  statistics matching, ``sum_l ||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2``
  read by forward hooks, because a batch from the data distribution has per-channel feature
  statistics close to the running statistics the (trained) model carries;
* ``R_group`` (eq. 9): several restarts are optimized side by side and pulled, every
  ``group_every`` steps, towards their consensus ``lambda ||x - E(x_g)||^2``. The paper registers
  the restarts with RANSAC-flow before averaging; we align them by the cheapest correspondence a
  batch admits: a permutation among images that share a label (Hungarian on MSE) and an integer
  translation of each image (up to ``max_shift`` pixels), which is what differs most between
  restarts on small images.

Adam with cosine learning-rate decay, images kept in the box [0, 1] by projection after each step
(the paper's clip prior, enforced exactly). Defaults differ from the paper where our setting does:
pixels are in [0, 1] rather than normalized (hence ``lr`` 0.01 and ``tv`` 0.1 for the mean TV),
and the cosine distance is the default because the L2 distance of an untrained ResNet's gradient
is in the hundreds and would drown every prior weight.

Two honest limits. gialab's protocol aggregates parameters only, not BN buffers, so unless a
scenario loads trained ``weights`` the running statistics the server holds are PyTorch's initial
0/1 whatever ``fl.rounds`` is; the prior then only asks for normalized features, which is why its
default weight is small (``bn=0`` switches it off). And on an untrained ResNet-18 the paper's
setting needs thousands of steps (Geiping et al. run 24k); the CPU preset runs 50 and barely
leaves the starting noise: it lowers the gradient distance, not yet the image error.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.optimization.label_inference import batch_labels
from gialab.attacks.optimization.objective import Distance, Regularizers, gradient_distance, regularized
from gialab.attacks.registry import register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.threats import Capability, Observation

_BN = nn.modules.batchnorm._BatchNorm


class GradInversionParams(AttackParams):
    iterations: int = Field(200, ge=1, description="Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam learning rate on [0, 1] pixels (cosine decay to 0)")
    distance: Distance = Field("cosine", description="gradient distance: cosine (scale-free) or l2 (paper)")
    bn: float = Field(1e-3, ge=0, description="weight of BatchNorm statistics matching")
    tv: float = Field(0.1, ge=0, description="weight of total variation (mean TV of [0, 1] pixels)")
    l2: float = Field(1e-6, ge=0, description="weight of the mean squared pixel value")
    restarts: int = Field(2, ge=1, description="restarts optimized side by side (group consistency)")
    group: float = Field(0.1, ge=0, description="weight of the pull towards the restarts' consensus")
    group_every: int = Field(20, ge=1, description="steps between consensus updates")
    max_shift: int = Field(2, ge=0, description="largest translation (pixels) tried when aligning restarts")
    output: Literal["best", "consensus"] = Field(
        "best", description="the restart with the smallest gradient distance, or the aligned consensus")
    label_strategy: Literal["counts", "yin"] = Field("counts", description="batch label inference")
    batch_size: int | None = Field(None, ge=1, description="images to recover; default: the observed count")


class _BNStats:
    """Forward hooks collecting ``||mu - running_mean|| + ||var - running_var||`` over BN layers."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, _BN)]
        self.targets = [(m.running_mean.detach().clone(), m.running_var.detach().clone()) for m in self.layers]
        self.terms: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            dims = [0, *range(2, x.dim())]
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            rm, rv = self.targets[i]
            self.terms.append((mean - rm).norm() + (var - rv).norm())
        return hook

    def take(self) -> Tensor:
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def _align(x: Tensor, ref: Tensor, labels: Tensor, max_shift: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """Indices ``perm`` and shifts so that ``shift(x[perm[i]])`` best matches ``ref[i]`` (same label)."""
    n = x.shape[0]
    shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    cost = torch.full((n, n), float("inf"))
    best_shift: dict[tuple[int, int], tuple[int, int]] = {}
    for i in range(n):
        for j in range(n):
            if labels[i] != labels[j]:
                continue
            errors = [float((_shift(x[j], dy, dx) - ref[i]).pow(2).mean()) for dy, dx in shifts]
            k = min(range(len(shifts)), key=errors.__getitem__)
            cost[i, j], best_shift[(i, j)] = errors[k], shifts[k]
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = torch.empty(n, dtype=torch.long)
    moves: list[tuple[int, int]] = [(0, 0)] * n
    for i, j in zip(rows.tolist(), cols.tolist()):
        perm[i], moves[i] = j, best_shift[(i, j)]
    return perm, moves


def _consensus(xs: list[Tensor], ref_index: int, labels: Tensor, max_shift: int) -> tuple[Tensor, list[Tensor]]:
    """The aligned mean in the reference restart's frame, and each restart's target in its own frame."""
    ref = xs[ref_index]
    alignments = [_align(x, ref, labels, max_shift) for x in xs]
    aligned = [torch.stack([_shift(x[perm[i]], *moves[i]) for i in range(len(perm))])
               for x, (perm, moves) in zip(xs, alignments)]
    mean = torch.stack(aligned).mean(dim=0)
    targets = []
    for x, (perm, moves) in zip(xs, alignments):
        target = torch.empty_like(x)
        for i in range(len(perm)):
            target[perm[i]] = _shift(mean[i], -moves[i][0], -moves[i][1])
        targets.append(target)
    return mean, targets


@register
class GradInversion(Attack):
    name = "gradinversion"
    demo_overrides = {"iterations": 10}
    smoke_overrides = {"iterations": 1, "restarts": 1}
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = GradInversionParams
    update_kinds = frozenset({"gradient"})

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        if not any(isinstance(m, _BN) for m in model.modules()):
            raise GialabError(
                f"gradinversion needs BatchNorm layers for its statistics prior; {type(model).__name__} has none"
            )

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: GradInversionParams = self.params  # type: ignore[assignment]
        self.check_update_kind(observation.update_kind)
        self.check_model(observation.model, observation.data)
        device = self.context.device
        observed = tuple(t.to(device) for t in observation.target_update())
        model = copy.deepcopy(observation.model).to(device).train()
        params = list(model.parameters())
        counts = observation.example_counts or {}
        n = p.batch_size or counts.get(observation.target, 1)
        if observation.labels is not None and observation.target in observation.labels:
            labels = observation.labels[observation.target].sort().values.to(device)
            n = labels.numel()
        else:
            labels = batch_labels(model, observed, n, p.label_strategy).to(device)

        gen = torch.Generator().manual_seed(self.context.seed)
        starts = [torch.rand((n, *observation.data.shape), generator=gen) for _ in range(p.restarts)]
        xs = [s.clone().to(device).requires_grad_(True) for s in starts]
        optimizer = torch.optim.Adam(xs, lr=p.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.iterations)
        priors = Regularizers(tv=p.tv, l2=p.l2)
        stats = _BNStats(model)
        targets: list[Tensor] | None = None
        last_distance = [float("inf")] * p.restarts
        last_bn = [0.0] * p.restarts
        try:
            for step in range(1, p.iterations + 1):
                optimizer.zero_grad()
                for r, x in enumerate(xs):
                    loss = F.cross_entropy(model(x), labels)
                    dummy = torch.autograd.grad(loss, params, create_graph=True)
                    bn_term = stats.take()
                    distance = gradient_distance(observed, dummy, p.distance)
                    total = regularized(distance, x, priors) + p.bn * bn_term
                    if targets is not None and p.group:
                        total = total + p.group * (x - targets[r]).pow(2).mean()
                    total.backward()
                    last_distance[r], last_bn[r] = float(distance.detach()), float(bn_term.detach())
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    for x in xs:
                        x.clamp_(0, 1)
                if p.restarts > 1 and p.group and step % p.group_every == 0 and step < p.iterations:
                    ref = min(range(p.restarts), key=last_distance.__getitem__)
                    _, targets = _consensus([x.detach().cpu() for x in xs], ref, labels.cpu(), p.max_shift)
                    targets = [t.to(device) for t in targets]
                self.context.progress(step, p.iterations)
        finally:
            stats.remove()

        best = min(range(p.restarts), key=last_distance.__getitem__)
        finals = [x.detach().cpu() for x in xs]
        if p.output == "consensus" and p.restarts > 1:
            images, _ = _consensus(finals, best, labels.cpu(), p.max_shift)
        else:
            images = finals[best]
        return Reconstruction(
            images=images.clamp(0, 1),
            labels=labels.cpu(),
            source=observation.target,
            reference=starts[best].clamp(0, 1),
            details={
                "gradient_distance": last_distance[best],
                "bn_statistics_distance": last_bn[best],
                "iterations": float(p.iterations),
                "restarts": float(p.restarts),
            },
        )
