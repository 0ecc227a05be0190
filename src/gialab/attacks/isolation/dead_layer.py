"""The model a model-inconsistency server sends everyone but the victim: a dead ReLU layer.

Paper: Pasquini, Francati, Ateniese 2022, "Eluding Secure Aggregation in Federated Learning via
Model Inconsistency" (ACM CCS); survey section 3.1, gradient isolation: "set W = [0] and
b = [R<=0] for non-target users ... For networks not using ReLU, the malicious server can insert
a ReLU layer."

Why one layer silences a client. A layer ``z = W a + b`` followed by a ReLU, with ``W = 0`` and
``b < 0``, outputs 0 for every input and passes nothing back (``ReLU'(z) = 0`` for ``z <= 0``):

* its own parameters get ``dL/dW = (dL/dz) a^T = 0`` and ``dL/db = dL/dz = 0``;
* every parameter before it gets 0, since no gradient flows back through it;
* every layer after it sees the same input, 0, whatever the client's data.

What the single layer leaves. A later layer still learns from the labels: its activations are
constants ``c_j`` (set by later biases) and ``dL/dW_j = delta_j c_{j-1}^T`` with ``delta_j`` pushed
back from ``softmax - onehot(y)``. So the server also zeroes every parameter after the dead ReLU
(weights, biases, BatchNorm scale and shift). Every later activation is then 0 (``ReLU(0) = 0``,
pooling and flattening keep 0, BatchNorm of a constant is its shift, 0), so every later weight's
gradient is 0, and every later ``delta`` is 0 because the weight it came through is 0. All but one
tensor: the last layer's bias gets ``dL/db = mean_n(softmax(b) - onehot(y_n))`` (uniform softmax,
as ``b = 0``), which no finite parameter makes 0 for every label. Each non-victim so adds
``1/K - (its label share)`` there. That residual is label information only, the attacker knows
where it lies, and it does not claim it (``inconsistency.py``). An activation that is not 0 at 0
after the dead layer (``sigmoid(0) = 1/2``) leaves more: the last layer's weight gets
``(softmax - onehot) / 2`` in every column, and under FedAvg each local step lets the residual
reach one layer further back.

Which layer. The candidates are the runs ``Linear/Conv [, BatchNorm], ReLU`` in the order a
forward pass calls them (hooks on a probe input). Each is killed, everything after it zeroed, and
the result probed: random inputs of the data's shape and random labels through the protocol's
cross entropy (one gradient for FedSGD; several local SGD steps for FedAvg); the parameters that
move are the residual. Candidates are tried from the last one back (a later one changes fewer
parameters); the first whose residual is no more than the last layer's bias (the floor cross
entropy sets) wins, else the one with the smallest residual. Probing, not reading the module list, because shortcuts route
around a ReLU (ResNet's identity shortcuts, Robbing the Fed's imprint block ``x + ...``): killing
a ReLU inside a residual block silences nothing, and only a forward pass shows it. A model with
no candidate (LeNet's sigmoids, CNN6's leaky ReLUs) is refused: inserting a ReLU, the paper's
remedy, would change the victim's architecture too and is not done here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from gialab.errors import GialabError

PROBE_BATCH = 2  # BatchNorm1d needs two samples in train mode
FEDAVG_PROBE_STEPS = 5
FEDAVG_PROBE_LR = 0.1


@dataclass(frozen=True)
class Candidate:
    """A ``layer [, norm], relu`` run, by module name, and the position of the ReLU's call."""

    layer: str
    norm: str | None
    relu: str
    call: int


@dataclass(frozen=True)
class DeadModel:
    """The non-victims' model, the layer killed in it, and the parameters still moving (by name)."""

    model: nn.Module
    candidate: Candidate
    zeroed: tuple[str, ...]  # modules after the dead ReLU whose parameters were set to 0
    residual: tuple[str, ...]


def _probe_input(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand((PROBE_BATCH, *shape), generator=generator)


def forward_calls(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """Names of the modules holding parameters or having no children, in the order they run."""
    calls: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and (not any(True for _ in module.children()) or any(True for _ in module.parameters(False))):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: calls.append(name)))
    probe = copy.deepcopy(model).train()  # the caller's BatchNorm statistics stay as they are
    try:
        with torch.no_grad():
            probe(_probe_input(shape, torch.Generator().manual_seed(0)))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def relu_candidates(model: nn.Module, calls: list[str]) -> list[Candidate]:
    """Every ``Linear/Conv [, BatchNorm], ReLU`` run of the forward pass, in call order."""
    modules = dict(model.named_modules())
    found = []
    for i, name in enumerate(calls):
        if not isinstance(modules[name], nn.ReLU) or i == 0:
            continue
        norm = calls[i - 1] if isinstance(modules[calls[i - 1]], _BatchNorm) else None
        j = i - 2 if norm is not None else i - 1
        if j >= 0 and isinstance(modules[calls[j]], (nn.Linear, _ConvNd)):
            found.append(Candidate(calls[j], norm, name, i))
    return found


def kill(model: nn.Module, candidate: Candidate, calls: list[str], margin: float) -> tuple[nn.Module, tuple[str, ...]]:
    """A copy with the candidate's ReLU dead (zero weight, bias ``-margin``) and every parameter of
    a module first called after it set to 0; returns the copy and those modules' names."""
    dead = copy.deepcopy(model)
    modules = dict(dead.named_modules())
    layer, norm = modules[candidate.layer], modules[candidate.norm] if candidate.norm else None
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.fill_(0.0 if norm is not None else -margin)
        if norm is not None:  # a constant input normalizes to 0 in train mode, so the shift decides
            if norm.weight is not None:
                norm.weight.zero_()
            if norm.bias is not None:
                norm.bias.fill_(-margin)
        first_call = {}
        for i, name in enumerate(calls):
            first_call.setdefault(name, i)
        zeroed = tuple(n for n, i in first_call.items()
                       if i > candidate.call and any(True for _ in modules[n].parameters(False)))
        for name in zeroed:
            for p in modules[name].parameters(False):
                p.zero_()
    return dead, zeroed


def residual_parameters(
    model: nn.Module, shape: tuple[int, ...], num_classes: int, *, kind: str = "gradient", seed: int = 0,
    steps: int = FEDAVG_PROBE_STEPS, lr: float = FEDAVG_PROBE_LR,
) -> tuple[str, ...]:
    """Names of the parameters a client's update can carry through ``model``, found on probes.

    Two probes of random inputs and labels; FedSGD: a parameter whose gradient is not exactly 0;
    FedAvg (``kind="model_delta"``): one that moves in ``steps`` local SGD steps of rate ``lr``.
    """
    generator = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.named_parameters()]
    moving: set[str] = set()
    probe = copy.deepcopy(model).train()  # train-mode BatchNorm updates statistics; keep the caller's
    for _ in range(2):
        if kind == "model_delta":
            probe = copy.deepcopy(model).train()
        params = list(probe.parameters())
        start = [p.detach().clone() for p in params] if kind == "model_delta" else []
        x = _probe_input(shape, generator)
        y = torch.randint(0, num_classes, (PROBE_BATCH,), generator=generator)
        for _ in range(steps if kind == "model_delta" else 1):
            grads = torch.autograd.grad(F.cross_entropy(probe(x), y), params, allow_unused=True,
                                        materialize_grads=True)
            moving |= {n for n, g in zip(names, grads, strict=True) if bool(g.ne(0).any())}
            if kind == "model_delta":
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p.sub_(lr * g)
        moving |= {n for n, p, s in zip(names, params, start, strict=False) if not torch.equal(p.detach(), s)}
    return tuple(n for n in names if n in moving)


def dead_model(
    model: nn.Module, shape: tuple[int, ...], num_classes: int, *, kind: str = "gradient", margin: float = 1.0,
    seed: int = 0, what: str = "the model",
) -> DeadModel:
    """The non-victims' model for ``model``: the candidate whose killing leaves the least residual.

    Candidates are tried from the last one back; a residual within the last layer's bias cannot be
    beaten (cross entropy always reaches it), so the search stops at the first that achieves it.
    """
    calls = forward_calls(model, shape)
    candidates = relu_candidates(model, calls)
    if not candidates:
        raise GialabError(
            f"inconsistency needs a Linear or Conv layer followed by a ReLU to kill, and {what} "
            f"({type(model).__name__}) has none; use a ReLU model (fcnet, convnet, resnet18) or an inner "
            "attack that adds one (robbing-the-fed)")
    modules = dict(model.named_modules())
    last = next(n for n in reversed(calls) if any(True for _ in modules[n].parameters(False)))
    floor = {f"{last}.bias"}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    best: DeadModel | None = None
    best_size = 0
    for candidate in reversed(candidates):
        dead, zeroed = kill(model, candidate, calls, margin)
        residual = residual_parameters(dead, shape, num_classes, kind=kind, seed=seed)
        size = sum(sizes[n] for n in residual)
        if best is None or size < best_size:  # strictly: the latest of equals changes the fewest parameters
            best, best_size = DeadModel(dead, candidate, zeroed, residual), size
        if set(residual) <= floor:
            break
    assert best is not None
    return best
