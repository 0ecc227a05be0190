"""R-GAP: the recursive closed-form inversion of one example's gradient.

Paper: Zhu and Blaschko 2021, "R-GAP: Recursive Gradient Attack on Privacy" (ICLR), section 3
(the recursion) and section 4 (rank analysis); public code ``JunyiZhu-AI/R-GAP``.

Why it works: for a layer ``z = W x + b`` followed by an invertible activation ``h = s(z)``, the
weight gradient is ``dL/dW = k x^T`` (``k = dL/dz``, for a convolution summed over positions), which
is *linear* in the layer's input ``x`` once ``k`` is known, and so is the forward constraint
``W x = s^-1(h) - b`` once the layer's output ``h`` is known. The last layer starts the recursion:
with cross-entropy its bias gradient is ``k = dL/dlogits`` itself, and its rank-one weight gradient
``k h^T`` gives its input ``h = dW^T k / |k|^2``. Going down, ``h`` gives ``z = s^-1(h)`` and
``k_l = s'(z_l) * W_{l+1}^T k_{l+1}``, and each layer's input is the least-squares solution of
the stacked system [forward rows; gradient rows] (the paper's combined coefficient matrix; a
convolution is its unrolled Toeplitz matrix, padding entries are simply not unknowns). The paper's
own code stacks the rows and calls ``lstsq``; we form the normal equations from the convolution's
index structure instead (never building the tall matrix) and weight both blocks to unit trace, which
is the same solution for a consistent system and keeps the solve at seconds on a CPU.

Rank analysis (section 4): a layer is recovered uniquely only if the combined matrix has full
column rank. We measure its numerical rank (pivoted Cholesky of the normal matrix, LAPACK's
default tolerance) and report ``rank_deficiency.<layer>`` (unknowns minus rank) in ``details``;
a deficient layer is still solved (ridge, the minimum-norm direction) and the error propagates.

Why some models are refused: the recursion needs each activation to be a bijection (ReLU and
pooling discard inputs, BatchNorm in train mode mixes batch statistics) and the model to be a
plain chain of Conv2d/Linear layers ending in a Linear with a bias. All solves run in float64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import scipy.linalg
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gialab.attacks.base import Attack, AttackParams, Reconstruction
from gialab.attacks.optimization.label_inference import idlg_label
from gialab.attacks.registry import register
from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index
from gialab.threats import Capability, Observation

_ACTIVATIONS = (nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity)
_PASS_THROUGH = (nn.Flatten,)
_WHY_NOT = {
    nn.ReLU: "ReLU is not invertible (every negative input maps to 0)",
    nn.ReLU6: "ReLU6 is not invertible",
    nn.GELU: "GELU has no closed-form inverse",
    nn.MaxPool2d: "max-pooling discards all but one input per window",
    nn.AvgPool2d: "pooling is not a layer R-GAP inverts",
    nn.AdaptiveMaxPool2d: "max-pooling discards all but one input per window",
    nn.AdaptiveAvgPool2d: "pooling is not a layer R-GAP inverts",
    nn.BatchNorm1d: "BatchNorm in train mode normalizes with the batch's own statistics",
    nn.BatchNorm2d: "BatchNorm in train mode normalizes with the batch's own statistics",
    nn.Dropout: "dropout in train mode zeroes random inputs",
}


class RGAPParams(AttackParams):
    max_unknowns: int = Field(
        8192, ge=1, description="refuse layers whose input has more entries (each needs a dense n x n solve)")
    ridge: float = Field(1e-12, ge=0, description="Tikhonov weight (relative to the mean diagonal) in each solve")


@dataclass(frozen=True)
class Step:
    """One linear layer of the chain and the activation after it (``None`` for the logits)."""

    name: str
    layer: nn.Conv2d | nn.Linear
    act: nn.Module | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight_index: int


def layer_chain(model: nn.Module, shape: tuple[int, int, int]) -> list[Step]:
    """Parse ``model`` into R-GAP's steps, or raise ``GialabError`` naming the layer it cannot invert."""
    pending: list[tuple[str, nn.Module, nn.Module | None]] = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        label = f"{name} ({type(module).__name__})"
        if isinstance(module, nn.Dropout) and module.p == 0:
            continue
        if type(module) in _WHY_NOT:
            raise GialabError(f"rgap cannot invert layer {label}: {_WHY_NOT[type(module)]}")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros":
                raise GialabError(
                    f"rgap handles plain convolutions only; layer {label} is grouped, dilated or not zero-padded"
                )
            pending.append((name, module, None))
        elif isinstance(module, nn.Linear):
            pending.append((name, module, None))
        elif isinstance(module, _ACTIVATIONS):
            if isinstance(module, nn.LeakyReLU) and module.negative_slope <= 0:
                raise GialabError(f"rgap cannot invert layer {label}: a non-positive slope is not invertible")
            if not pending or pending[-1][2] is not None:
                raise GialabError(f"rgap needs each activation right after a Conv2d or Linear; layer {label} is not")
            pending[-1] = (pending[-1][0], pending[-1][1], module)
        elif not isinstance(module, _PASS_THROUGH):
            raise GialabError(
                f"rgap cannot invert layer {label}: R-GAP only inverts Conv2d/Linear with invertible activations"
            )
    if not pending or not isinstance(pending[-1][1], nn.Linear) or pending[-1][2] is not None:
        raise GialabError("rgap starts from a final Linear classifier producing the logits; this model ends otherwise")
    if pending[-1][1].bias is None:
        raise GialabError(
            f"rgap reads dL/dlogits off the last layer's bias gradient; layer {pending[-1][0]} has no bias"
        )
    first = pending[0][1].weight
    steps, x = [], torch.zeros(1, *shape, dtype=first.dtype, device=first.device)  # shapes only
    with torch.no_grad():
        for name, layer, act in pending:
            if isinstance(layer, nn.Linear):
                x = x.flatten(1)
            out = layer(x)
            steps.append(Step(name, layer, act, tuple(x.shape[1:]), tuple(out.shape[1:]), parameter_index(model, layer.weight)))
            x = act(out) if act is not None else out
    return steps


def _chain_forward(steps: list[Step], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step.layer(x.flatten(1) if isinstance(step.layer, nn.Linear) else x)
        x = step.act(x) if step.act is not None else x
    return x


def _inverse(act: nn.Module | None, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-activation ``z = s^-1(h)`` and the derivative ``s'(z)``, both from the output ``h``."""
    if act is None or isinstance(act, nn.Identity):
        return h, torch.ones_like(h)
    if isinstance(act, nn.LeakyReLU):
        slope = torch.where(h > 0, 1.0, act.negative_slope).to(h)
        return h / slope, slope
    if isinstance(act, nn.Sigmoid):
        h = h.clamp(1e-12, 1 - 1e-12)
        return torch.log(h / (1 - h)), h * (1 - h)
    h = h.clamp(-1 + 1e-12, 1 - 1e-12)  # Tanh
    return torch.atanh(h), 1 - h**2


ConvView = tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int], dict[str, tuple[int, int]]]


def _conv_view(step: Step) -> ConvView:
    """The layer as a convolution: a Linear is a 1x1 convolution on an (n, 1, 1) input."""
    layer = step.layer
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Linear):
        one = {"stride": (1, 1), "padding": (0, 0)}
        return layer.weight.detach()[:, :, None, None], bias, (layer.in_features, 1, 1), one
    conv = {"stride": layer.stride, "padding": layer.padding}
    return layer.weight.detach(), bias, step.in_shape, conv  # type: ignore[return-value]


def _scatter_gram(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int, chunk: int = 1 << 22
) -> torch.Tensor:
    """Sum ``values`` into an (n+1)^2 matrix at (rows, cols) and drop the padding index ``n``."""
    flat = (rows * (n + 1) + cols).reshape(-1)
    values = values.reshape(-1)
    out = torch.zeros((n + 1) ** 2, dtype=values.dtype, device=values.device)
    for start in range(0, flat.numel(), chunk):
        out.index_add_(0, flat[start:start + chunk], values[start:start + chunk])
    return out.reshape(n + 1, n + 1)[:n, :n]


def _scatter_vector(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n + 1, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index.reshape(-1), values.reshape(-1))[:n]


def solve_layer(
    step: Step, z: torch.Tensor, k: torch.Tensor, grad_w: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Least-squares input of one layer from its pre-activation ``z``, ``k = dL/dz`` and ``dL/dW``."""
    weight, bias, (c, h, w), conv = _conv_view(step)
    out_ch, n = weight.shape[0], c * h * w
    kernel = tuple(weight.shape[2:])
    dev, dt = weight.device, weight.dtype
    # idx[r, p]: which input entry sits at kernel offset r of output position p (n marks padding).
    positions = torch.arange(1, n + 1, dtype=dt, device=dev).reshape(1, c, h, w)
    idx = F.unfold(positions, kernel, padding=conv["padding"], stride=conv["stride"])[0].round().long() - 1
    idx[idx < 0] = n
    w_mat, g_mat = weight.reshape(out_ch, -1), grad_w.reshape(out_ch, -1).to(dt)
    k_mat = k.reshape(out_ch, -1)
    target = z.reshape(out_ch, -1) - (0 if bias is None else bias[:, None])
    # Forward rows (W x = z - b) and gradient rows (sum_p k[o, p] x[idx[r, p]] = dW[o, r]), as normal equations.
    ww, kk = w_mat.T @ w_mat, k_mat.T @ k_mat
    idx_t = idx.T
    gram_f = _scatter_gram(idx_t[:, :, None], idx_t[:, None, :], ww.expand(idx.shape[1], -1, -1), n)
    gram_g = _scatter_gram(idx[:, :, None], idx[:, None, :], kk.expand(idx.shape[0], -1, -1), n)
    rhs_f = _scatter_vector(idx, w_mat.T @ target, n)
    rhs_g = _scatter_vector(idx, g_mat.T @ k_mat, n)
    scale_f, scale_g = gram_f.trace().clamp_min(1e-300), gram_g.trace().clamp_min(1e-300)
    normal = gram_f / scale_f + gram_g / scale_g
    rhs = rhs_f / scale_f + rhs_g / scale_g
    rank = int(scipy.linalg.lapack.dpstrf(normal.cpu().numpy(), tol=-1)[2])
    eye = torch.eye(n, dtype=dt, device=dev)
    mean_diag = float(normal.trace()) / n
    factor, info = torch.linalg.cholesky_ex(normal + ridge * mean_diag * eye)
    boost = max(ridge, 1e-14)
    while int(info) != 0:  # numerically indefinite: grow the ridge until the factorization exists
        boost *= 100
        if boost > 1 or not torch.isfinite(normal).all():
            raise GialabError(f"rgap: the system for layer {step.name} is not solvable (non-finite or degenerate)")
        factor, info = torch.linalg.cholesky_ex(normal + boost * mean_diag * eye)
    x = torch.cholesky_solve(rhs[:, None], factor)[:, 0]
    x_img = x.reshape(1, c, h, w)
    fwd = F.conv2d(x_img, weight, **conv).reshape(out_ch, -1)
    grad = torch.nn.grad.conv2d_weight(x_img, weight.shape, k.reshape(1, out_ch, *_out_hw(step)), **conv)
    info_out = {
        f"unknowns.{step.name}": float(n),
        f"rank.{step.name}": float(rank),
        f"rank_deficiency.{step.name}": float(n - rank),
        f"forward_residual.{step.name}": float((fwd - target).norm() / target.norm().clamp_min(1e-300)),
        f"gradient_residual.{step.name}": float(
            (grad.reshape(out_ch, -1) - g_mat).norm() / g_mat.norm().clamp_min(1e-300)
        ),
    }
    return x.reshape(step.in_shape), info_out


def _out_hw(step: Step) -> tuple[int, int]:
    return (1, 1) if isinstance(step.layer, nn.Linear) else tuple(step.out_shape[1:])  # type: ignore[return-value]


@register
class RGAP(Attack):
    name = "rgap"
    requires = frozenset({Capability.OBSERVE_INDIVIDUAL})
    Params = RGAPParams
    update_kinds = frozenset({"gradient"})

    def check_model(self, model: nn.Module, data: DataSpec) -> None:
        params: RGAPParams = self.params  # type: ignore[assignment]
        probe = copy.deepcopy(model).double().eval()
        steps = layer_chain(probe, data.shape)
        x = torch.rand(2, *data.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            if not torch.allclose(_chain_forward(steps, x), probe(x), rtol=1e-9, atol=1e-9):
                raise GialabError(
                    "rgap needs a plain chain of layers; this model's forward pass is not its modules in order"
                )
        for step in steps[:-1]:  # the last layer is closed form; the others need a dense n x n solve
            n = int(torch.tensor(step.in_shape).prod())
            if n > params.max_unknowns:
                raise GialabError(
                    f"rgap: layer {step.name} has {n} input entries, above max_unknowns={params.max_unknowns}"
                )

    def reconstruct(self, observation: Observation) -> Reconstruction:
        params: RGAPParams = self.params  # type: ignore[assignment]
        self.check_update_kind(observation.update_kind)
        counts = observation.example_counts or {}
        if counts.get(observation.target, 1) != 1:
            raise GialabError(
                f"rgap inverts one example's gradient; the victim's update covers {counts[observation.target]}"
            )
        self.check_model(observation.model, observation.data)
        device = self.context.device
        model = copy.deepcopy(observation.model).to(device=device, dtype=torch.float64)
        update = tuple(t.to(device=device, dtype=torch.float64) for t in observation.target_update())
        steps = layer_chain(model, observation.data.shape)
        details: dict[str, float] = {}

        last = steps[-1]
        k = update[last.weight_index + 1]  # dL/dlogits is the last bias gradient
        grad_w = update[last.weight_index]
        h = grad_w.T @ k / (k @ k).clamp_min(1e-300)  # rank-one dW = k h^T
        details[f"gradient_residual.{last.name}"] = float((torch.outer(k, h) - grad_w).norm() / grad_w.norm())
        total = len(steps)
        self.context.progress(1, total)
        for i in range(total - 2, -1, -1):
            step, after = steps[i], steps[i + 1]
            h = h.reshape(step.out_shape)
            z, slope = _inverse(step.act, h)
            k = slope * _transpose(after, k).reshape(step.out_shape)
            h, info = solve_layer(step, z, k, update[step.weight_index], params.ridge)
            details |= info
            self.context.progress(total - i, total)
        image = h.reshape(1, *observation.data.shape).float().cpu()
        details["rank_deficiency.total"] = sum(v for key, v in details.items() if key.startswith("rank_deficiency."))
        return Reconstruction(
            images=image.clamp(0, 1),
            labels=idlg_label(observation.model, observation.target_update()).cpu(),
            source=observation.target,
            details=details,
        )


def _transpose(step: Step, k: torch.Tensor) -> torch.Tensor:
    """``W^T k``: the gradient w.r.t. the layer's input given ``k = dL/dz`` (linear, so at input 0)."""
    x = torch.zeros((1, *step.in_shape), dtype=k.dtype, device=k.device, requires_grad=True)
    with torch.enable_grad():
        out = step.layer(x)
        (grad,) = torch.autograd.grad(out, x, k.reshape(out.shape))
    return grad[0]
