"""Deep Leakage from Gradients, with iDLG label inference.

Papers: Zhu, Liu, Han 2019, "Deep Leakage from Gradients" (NeurIPS), Algorithm 1; Zhao, Mopuri,
Bilen 2020, "iDLG: Improved Deep Leakage from Gradients".

Implements the survey's eqs. (1)-(2): dummy data ``x'`` and dummy label logits ``y'`` start from
Gaussian noise and are moved by L-BFGS to minimize the squared L2 distance between the dummy
gradient ``grad_W L(f(x'; W), softmax(y'))`` and the observed gradient ``G``. With ``labels=idlg``
the label is read off the last layer's gradient first (``label_inference.idlg_label``), so only
``x'`` is optimized: this is what makes DLG converge reliably at batch 1.

L-BFGS can blow up on this non-convex objective; we keep the best iterate seen and stop on NaN,
so a bad step never ruins the result. Reconstructions are clipped to [0, 1] only at the end,
as in the paper (DLG has no box constraint during optimization).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.optimization.label_inference import idlg_label
from gialab.attacks.optimization.objective import gradient_distance
from gialab.attacks.registry import register
from gialab.errors import GialabError
from gialab.threats import Capability, Observation


class DLGParams(AttackParams):
    iterations: int = Field(300, ge=1, description="L-BFGS steps (each up to max_evals gradient evaluations)")
    max_evals: int = Field(20, ge=1, description="function evaluations per L-BFGS step (torch's max_iter)")
    lr: float = Field(1.0, gt=0, description="L-BFGS learning rate, 1 in the paper's code")
    labels: Literal["joint", "idlg"] = Field("joint", description="optimize labels (DLG) or infer them (iDLG)")
    batch_size: int | None = Field(None, ge=1, description="images to recover; default: the observed example count")
    tol: float = Field(1e-12, ge=0, description="stop once the gradient distance falls below this")
    line_search: Literal["none", "strong_wolfe"] = Field(
        "strong_wolfe", description="L-BFGS line search; 'none' is the paper's code (fixed step lr)")


@register
class DLG(Attack):
    name = "dlg"
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = DLGParams
    update_kinds = frozenset({"gradient"})
    smoke_overrides = {"iterations": 3}

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: DLGParams = self.params  # type: ignore[assignment]
        self.check_update_kind(observation.update_kind)
        device = self.context.device
        observed = tuple(t.to(device) for t in observation.target_update())
        model = copy.deepcopy(observation.model).to(device).train()
        params = [q for q in model.parameters()]
        counts = observation.example_counts or {}
        n = p.batch_size or counts.get(observation.target, 1)
        if p.labels == "idlg" and n != 1:
            raise GialabError(f"iDLG label inference works for one sample; the batch has {n} (use labels=joint)")

        gen = torch.Generator().manual_seed(self.context.seed)
        x = torch.randn((n, *observation.data.shape), generator=gen).to(device).requires_grad_(True)
        reference = x.detach().clamp(0, 1).cpu()
        if p.labels == "idlg":
            label = idlg_label(model, observed).to(device)
            target = F.one_hot(label, observation.data.num_classes).float()
            variables = [x]
        else:
            label_logits = torch.randn((n, observation.data.num_classes), generator=gen).to(device)
            label_logits.requires_grad_(True)
            variables = [x, label_logits]
        optimizer = torch.optim.LBFGS(
            variables, lr=p.lr, max_iter=p.max_evals, history_size=100,
            line_search_fn=None if p.line_search == "none" else p.line_search,
        )

        def objective() -> torch.Tensor:
            soft = target if p.labels == "idlg" else F.softmax(label_logits, dim=-1)
            loss = F.cross_entropy(model(x), soft)
            dummy = torch.autograd.grad(loss, params, create_graph=True)
            return gradient_distance(observed, dummy)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            distance = objective()
            distance.backward()
            return distance

        best = (float("inf"), x.detach().clone(), None if p.labels == "idlg" else label_logits.detach().clone())
        steps = 0
        for steps in range(1, p.iterations + 1):
            distance = float(optimizer.step(closure).detach())
            if not torch.isfinite(x).all() or distance != distance:
                break
            if distance < best[0]:
                best = (distance, x.detach().clone(), None if p.labels == "idlg" else label_logits.detach().clone())
            self.context.progress(steps, p.iterations)
            if best[0] <= p.tol:
                break
        distance_best, images, logits = best
        labels = label.cpu() if p.labels == "idlg" else logits.argmax(dim=-1).cpu()  # type: ignore[union-attr]
        return Reconstruction(
            images=images.clamp(0, 1).cpu(),
            labels=labels,
            source=observation.target,
            reference=reference,
            details={"gradient_distance": distance_best, "iterations": float(steps)},
        )


class IDLGParams(DLGParams):
    labels: Literal["idlg"] = Field("idlg", description="iDLG always infers the label analytically")


@register
class IDLG(DLG):
    """iDLG (Zhao et al. 2020): DLG with the label read off the last layer, for one sample."""

    name = "idlg"
    Params = IDLGParams
