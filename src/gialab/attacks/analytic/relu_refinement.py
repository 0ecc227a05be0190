"""Exact unmixing through the first ReLU layer: solve, verify, deflate, repeat.

gialab's extension of the Cocktail Party Attack (``cocktail_party.py``). ICA assumes independent
sources; crops of the same photographs are not, and FastICA stops at 12-19 dB on them. The
server knows more than the first layer's gradient, though: it knows the model, and the second
layer's gradient tells it which hidden activations the batch produced. For a network
``x -> z = W x + b -> h = relu(z) -> W2 h + b2 -> ...`` trained on loss ``l`` with batch weights
``s_n`` (1/B for a mean loss, times each client's aggregation weight):

* ``dL/dW = sum_n s_n delta_n x_n^T`` and ``dL/db = sum_n s_n delta_n``: the rows of the
  augmented gradient ``[dL/dW, dL/db]`` span exactly the augmented inputs ``[x_n, 1]`` (the span
  ``V``, B-dimensional, known);
* ``dL/dW2 = sum_n s_n delta2_n h_n^T``: its rows span exactly the hidden activations
  ``h_n = relu(W x_n + b)`` (the span ``S``, B-dimensional, known).

So every input satisfies ``relu(W x + b) in S`` with ``[x, 1] in V``: B equations per hidden unit
for B unknowns, which a generic point of ``V`` violates. For a fixed activation pattern ``D`` the
condition is linear, ``P_S^perp D (W x + b) = 0``; we alternate ``D <- [W x + b > 0]`` and the
least-squares solution under ``[x, 1]``'s last coordinate being 1 (a Gauss-Newton step on the
piecewise-linear residual). Patterns only go wrong where ``W x + b`` is near 0, where ``relu`` is
continuous, so an ICA estimate is a good enough start; a root makes the residual vanish to float
precision.

Two checks keep spurious roots out. (1) The residual must be at float precision (below 1e-5
relative; spurious roots sit near 1e-3). (2) The root
must be a sample: for each label ``y`` the server computes the sample's first-layer signal
``delta(x, y)``, which must lie in the column space of the rows' coordinates; only the true
label puts it there (measured offset ~1e-6 against 1e-1 for a spurious root). That label is the
sample's label, and the same projection gives its weight ``s_n`` in closed form: subtracting
``s u b^T`` from coordinates ``C`` drops their rank exactly when ``s = 1 / (b . C^+ u)``.

Verified samples are then deflated: the server subtracts their exact weighted gradients
``s_n grad l(x_n, y_n)`` from the whole update, which leaves the gradient of the remaining
samples, a smaller and better separated problem for the next ICA. This repeats until every
source is found or a stage finds none; what is left comes back as ICA estimates.

Where it applies: a first ``Linear`` whose output reaches another ``Linear`` through one ReLU
(``relu_successor`` checks it on a probe input), a cross-entropy loss, and an update that is one
gradient (FedSGD). A FedAvg update, noise (DP) or compression breaks the exact equalities; the
checks then reject every root and the attack returns plain ICA, so the extension never makes a
result worse than the paper's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gialab.fl.client import parameter_index

# Float-precision thresholds, measured on float32 gradients (fcnet, batches 8-256): true roots
# leave a relative residual of 1e-9 to a few 1e-6 (it grows with the batch) and a label offset
# ~1e-6; spurious ones 1e-3 and 1e-1. At 1e-6 a third of batch 128's true roots were turned away.
ROOT_RESIDUAL = 1e-5
LABEL_OFFSET = 1e-4
FIXED_POINT_STEPS = 30

# (rows, sources, seed) -> unmixing (sources x rows); the ICA of cocktail_party.py.
Unmixer = Callable[[np.ndarray, int, int], np.ndarray]


@dataclass(frozen=True)
class Refined:
    """Inputs as the model sees them (flattened), one label per input, and how many are exact."""

    inputs: np.ndarray
    labels: np.ndarray
    exact: int
    stages: int


def relu_successor(model: nn.Module, first: nn.Linear, shape: tuple[int, int, int]) -> nn.Linear | None:
    """The ``nn.Linear`` whose input is ``relu(first(x))``, or None when the model has none.

    Found on a probe input with hooks rather than from the module tree, so any model that
    computes ``Linear -> ReLU -> Linear`` qualifies, however its modules are nested.
    """
    captured: dict[str, torch.Tensor] = {}
    inputs: dict[nn.Linear, torch.Tensor] = {}
    hooks = [first.register_forward_hook(lambda _m, _i, out: captured.__setitem__("z", out.detach()))]
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not first:
            hooks.append(module.register_forward_hook(
                lambda m, args, _out: inputs.__setitem__(m, args[0].detach())))
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(2, *shape, generator=generator).to(first.weight)
    training = model.training
    model.eval()  # no running-statistics updates from the probe
    try:
        with torch.no_grad():
            model(probe)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    hidden = captured["z"].clamp_min(0)
    for module, value in inputs.items():
        if value.shape == hidden.shape and torch.equal(value, hidden):
            return module
    return None


class ReluRefinement:
    """One refinement of an observed update: fixed points in the current residual, verified and
    deflated stage by stage (see the module docstring)."""

    def __init__(
        self, model: nn.Module, first: nn.Linear, successor: nn.Linear, update: tuple[torch.Tensor, ...],
        shape: tuple[int, int, int], num_classes: int, unmix: Unmixer,
    ) -> None:
        # Double precision throughout: deflation subtracts exact gradients, and float32 rounding
        # would leave a residual of the removed samples above the thresholds.
        self.model = copy.deepcopy(model).cpu().double()
        params = list(self.model.parameters())
        self.w_index = parameter_index(model, first.weight)
        self.b_index = parameter_index(model, first.bias)
        self.s_index = parameter_index(model, successor.weight)
        self.first, self.first_bias = params[self.w_index], params[self.b_index]
        self.first_module = next(m for m in self.model.modules()
                                 if isinstance(m, nn.Linear) and m.weight is self.first)
        self.residual = [u.detach().double().cpu().clone() for u in update]
        self.shape = shape
        self.num_classes = num_classes
        self.unmix = unmix

    def run(self, sources: int, seed: int, max_stages: int,
            progress: Callable[[int, int], None] = lambda done, total: None) -> Refined:
        found: list[np.ndarray] = []
        labels: list[int] = []
        left, stages = sources, 0
        for stage in range(max_stages):
            if left == 0:
                break
            progress(stage, max_stages)
            stages = stage + 1
            roots, frame = self._stage(left, seed + stage)
            if not roots:
                break
            inputs, y, weights = (part[:left] for part in self._verify(roots, frame))
            if not inputs:
                break
            self._deflate(inputs, y, weights)
            found.extend(inputs)
            labels.extend(y)
            left -= len(inputs)
        exact = len(found)
        if left > 0:  # what no stage solved: the ICA estimates of the remaining sources
            rest, guesses = self._leftovers(left, seed + stages)
            found.extend(rest)
            labels.extend(guesses)
        return Refined(np.stack(found)[:sources], np.asarray(labels[:sources]), exact, stages)

    # -- one stage -------------------------------------------------------------------------

    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grad_w = self.residual[self.w_index].numpy()
        grad_b = self.residual[self.b_index].numpy()
        live = np.abs(grad_w).sum(1) > 0
        augmented = np.concatenate([grad_w[live], grad_b[live, None]], 1)
        return augmented, live, self.residual[self.s_index].numpy()[:, live]

    def _stage(self, left: int, seed: int) -> tuple[list[np.ndarray], _Frame]:
        augmented, live, successor_grad = self._rows()
        frame = _Frame.of(augmented, successor_grad, left, live, self.first.detach().numpy(),
                          self.first_bias.detach().numpy())
        roots: list[np.ndarray] = []
        for start in self._starts(augmented, left, seed, frame):
            coords, residual = frame.fixed_point(start)
            if residual < ROOT_RESIDUAL and all(
                    np.linalg.norm(coords - r) > 1e-6 * np.linalg.norm(coords) for r in roots):
                roots.append(coords)
        return roots, frame

    def _starts(self, augmented: np.ndarray, left: int, seed: int, frame: _Frame) -> np.ndarray:
        unmixing = self.unmix(augmented[:, :-1], left, seed)
        mixed = unmixing @ augmented
        safe = np.where(np.abs(mixed[:, -1:]) > 1e-300, mixed[:, -1:], 1e-300)
        return (mixed / safe) @ frame.basis.T

    # -- checks and deflation --------------------------------------------------------------

    def _verify(self, roots: list[np.ndarray], frame: _Frame) -> tuple[list[np.ndarray], list[int], list[float]]:
        inputs = np.stack([r @ frame.basis for r in roots])[:, :-1]
        deltas = self._first_signals(inputs)[:, :, frame.live]  # roots x labels x rows
        q, _ = np.linalg.qr(frame.coords)
        kept, labels, weights = [], [], []
        for i, root in enumerate(roots):
            u = deltas[i]
            offsets = _label_offsets(u, q)
            label = int(np.argmin(offsets))
            if offsets[label] >= LABEL_OFFSET:
                continue
            coefficients = np.linalg.lstsq(frame.coords, u[label], rcond=None)[0]
            kept.append(inputs[i])
            labels.append(label)
            weights.append(1.0 / float(root @ coefficients))
        return kept, labels, weights

    def _first_signals(self, inputs: np.ndarray) -> np.ndarray:
        """``d l(x, y) / d z`` at the first layer's output for every input and every label."""
        n, k = len(inputs), self.num_classes
        x = torch.from_numpy(np.repeat(inputs, k, 0))
        y = torch.arange(k).repeat(n)
        captured: dict[str, torch.Tensor] = {}
        hook = self.first_module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("z", out))
        try:
            logits = self.model(x.reshape(len(x), *self.shape))
        finally:
            hook.remove()
        (signal,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), captured["z"])
        return signal.detach().numpy().reshape(n, k, -1)

    def _deflate(self, inputs: list[np.ndarray], labels: list[int], weights: list[float]) -> None:
        x = torch.from_numpy(np.stack(inputs)).reshape(len(inputs), *self.shape)
        losses = F.cross_entropy(self.model(x), torch.tensor(labels), reduction="none")
        grads = torch.autograd.grad((losses * torch.tensor(weights, dtype=losses.dtype)).sum(),
                                    list(self.model.parameters()))
        self.residual = [r - g.detach() for r, g in zip(self.residual, grads)]

    def _leftovers(self, left: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
        """ICA's estimates of the sources no stage verified (sign and scale from the bias column),
        each with a guessed label: the one whose signal lies nearest the rows' span."""
        augmented, live, _ = self._rows()
        mixed = self.unmix(augmented[:, :-1], left, seed) @ augmented
        safe = np.where(np.abs(mixed[:, -1:]) > 1e-12 * np.abs(mixed).max(1, keepdims=True),
                        mixed[:, -1:], 1e-12)
        inputs = mixed[:, :-1] / safe
        q = np.linalg.svd(augmented, full_matrices=False)[0][:, :left]
        offsets = _label_offsets(self._first_signals(inputs)[:, :, live], q)
        return list(inputs), [int(i) for i in offsets.argmin(1)]


def _label_offsets(deltas: np.ndarray, q: np.ndarray) -> np.ndarray:
    """How far each signal (last axis) lies from the span of ``q``'s orthonormal columns, relative."""
    off = deltas - (deltas @ q) @ q.T
    return np.linalg.norm(off, axis=-1) / np.maximum(np.linalg.norm(deltas, axis=-1), 1e-300)


@dataclass(frozen=True)
class _Frame:
    """One stage's coordinates: ``basis`` (k x pixels+1) spans the augmented inputs, ``coords``
    (rows x k) are the gradient rows in it, ``hidden`` (rows x k) spans the hidden activations."""

    basis: np.ndarray
    coords: np.ndarray
    hidden: np.ndarray
    pre: np.ndarray
    live: np.ndarray

    @classmethod
    def of(cls, augmented: np.ndarray, successor_grad: np.ndarray, k: int, live: np.ndarray,
           weight: np.ndarray, bias: np.ndarray) -> _Frame:
        u, s, vt = np.linalg.svd(augmented, full_matrices=False)
        basis = vt[:k]
        _, _, hidden = np.linalg.svd(successor_grad, full_matrices=False)
        pre = np.concatenate([weight[live], bias[live, None]], 1) @ basis.T  # pre-activation per coordinate
        return cls(basis, u[:, :k] * s[:k], hidden[:k].T, pre, live)

    def fixed_point(self, coords: np.ndarray) -> tuple[np.ndarray, float]:
        """Alternate the activation pattern and the least-squares root under ``x``'s last
        coordinate being 1; returns the coordinates and the relative residual."""
        last = self.basis[:, -1]
        for _ in range(FIXED_POINT_STEPS):
            on = self.pre @ coords > 0
            active = self.pre[on]
            projected = self.hidden[on].T @ active
            normal = active.T @ active - projected.T @ projected
            # Near a root ``normal`` is nearly singular along it; solving then amplifies exactly
            # that direction (inverse iteration), which is the point.
            try:
                z = np.linalg.solve(normal, last)
            except np.linalg.LinAlgError:
                z = np.linalg.lstsq(normal, last, rcond=None)[0]
            step = z / (last @ z)
            converged = np.linalg.norm(step - coords) <= 1e-12 * np.linalg.norm(coords)
            coords = step
            if converged:
                break
        return coords, self.fixed_point_residual(coords)

    def fixed_point_residual(self, coords: np.ndarray) -> float:
        """How far ``relu(W x + b)`` is from the span of the hidden activations, relative."""
        h = np.maximum(self.pre @ coords, 0)
        off = h - self.hidden @ (self.hidden.T @ h)
        return float(np.linalg.norm(off) / max(np.linalg.norm(h), 1e-300))
