"""Label inference from the last layer's gradient: one sample (iDLG) and batches (Yin et al. 2021).

Papers: Zhao, Mopuri, Bilen 2020, "iDLG: Improved Deep Leakage from Gradients", section 3.
With cross-entropy and one sample, ``dL/dz_c = softmax(z)_c - 1[c = y]`` is negative only at the
true class. The last fully connected layer's bias gradient equals ``dL/dz``; without a bias, its
weight-gradient row ``c`` is ``dL/dz_c * h`` and with non-negative features ``h`` (after sigmoid or
ReLU) the row sum has the same sign. Either way the true label is the index of the negative entry.

For batches see ``batch_labels``: Yin et al. 2021 (GradInversion), section 3.1, for which classes
are present, and Wainakh et al. 2022 (LLG) for how often; the conditions for exactness are below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from gialab.errors import GialabError
from gialab.fl.client import parameter_index


def last_linear_index(model: nn.Module) -> tuple[nn.Linear, int]:
    """The model's last ``nn.Linear`` and the index of its weight among ``model.parameters()``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GialabError("label inference needs a fully connected classification layer; this model has none")
    last = linears[-1]
    return last, parameter_index(model, last.weight)


def idlg_label(model: nn.Module, update: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The single sample's label, shape (1,), from the sign pattern of the last layer's gradient."""
    layer, index = last_linear_index(model)
    signal = update[index + 1] if layer.bias is not None else update[index].sum(dim=1)
    return signal.argmin().reshape(1)


# --- Batches: which classes are present, and how often -------------------------------------------
#
# Yin et al. 2021 ("See through Gradients", CVPR), section 3.1: the last layer's weight gradient is
# ``dL/dW_c = (1/B) sum_n (p_nc - y_nc) h_n``. With non-negative penultimate features ``h_n`` (ReLU,
# sigmoid, pooling of either) and ``p_nc > 0``, row ``c`` can only have a negative entry when some
# sample has label ``c``; for a batch with distinct labels, the ``B`` rows with the most negative
# minimum are the labels (their eq. 5). The same holds for the bias gradient
# ``dL/db_c = (1/B) sum_n (p_nc - y_nc) = pbar_c - count_c / B``: a negative entry proves the class.
#
# Counts (repeated labels) follow the bias equation solved for ``count_c = B (pbar_c - dL/db_c)``,
# with the unknown mean softmax ``pbar_c`` replaced by ``1/K`` (a model whose softmax is near
# uniform, as at initialization). This is Wainakh et al. 2022's LLG reasoning ("User-Level Label
# Leakage from Gradients in Federated Learning", PETS), made exact for the bias: the estimate is
# exact whenever ``B |pbar_c - 1/K| < 1/2`` for every class, because rounding then lands on the
# true integer; totals are forced to ``B`` by largest remainders, and every class with a negative
# signal keeps at least one label (that sign is proof, whatever the softmax). Without a bias the
# row sums ``s_c = (1/B) sum_n (p_nc - y_nc) |h_n|_1`` play the same role scaled by the unknown
# feature mass ``m`` (LLG's "impact"), which we estimate from the present classes
# (``sum_{c present} s_c = m (|P|/K - 1)`` when all ``|h_n|_1 = m``); that case is approximate.

LabelStrategy = Literal["counts", "yin"]


def _last_layer_signal(model: nn.Module, update: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Per-class signal ``pbar_c - count_c/B`` (bias: exact, scale 1) or the weight-row sums."""
    layer, index = last_linear_index(model)
    if layer.bias is not None:
        return update[index + 1].detach().double().flatten(), True
    return update[index].detach().double().sum(dim=1), False


def present_classes(model: nn.Module, update: Sequence[torch.Tensor]) -> torch.Tensor:
    """Classes proven present by a negative last-layer signal (Yin et al. 2021, sec. 3.1), sorted."""
    signal, _ = _last_layer_signal(model, update)
    return (signal < 0).nonzero().flatten()


def _round_to_total(real: torch.Tensor, floor_at: torch.Tensor, n: int) -> torch.Tensor:
    """Integer counts near ``real`` that sum to ``n``, at least 1 where ``floor_at`` (largest remainders)."""
    counts = real.clamp(min=0).floor().long()
    counts = torch.maximum(counts, floor_at.long())
    remainder = real - counts.double()
    while int(counts.sum()) < n:
        c = int(remainder.argmax())
        counts[c] += 1
        remainder[c] -= 1.0
    while int(counts.sum()) > n:
        removable = counts > floor_at.long()
        if not bool(removable.any()):  # more proven classes than samples: drop the weakest proofs
            removable = counts > 0
        score = torch.where(removable, remainder, torch.full_like(remainder, float("inf")))
        c = int(score.argmin())
        counts[c] -= 1
        remainder[c] += 1.0
    return counts


def label_counts(model: nn.Module, update: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """How many of the ``n`` samples carry each class, shape (K,), summing to ``n``.

    Exact with a biased last layer when ``n |pbar_c - 1/K| < 1/2`` for all classes (near-uniform
    softmax, e.g. an untrained model); see the comment above for the bias-free estimate.
    """
    if n < 1:
        raise GialabError(f"label inference needs at least one sample, got n={n}")
    signal, exact = _last_layer_signal(model, update)
    k = signal.numel()
    present = signal < 0
    if exact:
        real = n * (1.0 / k - signal)
    else:
        # s_c = m (1/K - count_c/n); the present classes' sum gives m (LLG's impact).
        p = int(present.sum())
        if 0 < p < k:
            m = float(signal[present].sum()) / (p / k - 1.0)
        elif p == k and n > k:  # everyone present: take the least negative class as a single
            m = float(signal.max()) / (1.0 / k - 1.0 / n)
        else:
            m = float(signal.abs().max()) or 1.0
        real = n * (1.0 / k - signal / m)
    return _round_to_total(real, present, n)


def batch_labels(
    model: nn.Module, update: Sequence[torch.Tensor], n: int, strategy: LabelStrategy = "counts"
) -> torch.Tensor:
    """The batch's ``n`` labels as a sorted multiset, shape (n,), from the last layer's gradient.

    ``counts``: :func:`label_counts` (repeated labels allowed). ``yin``: Yin et al.'s rule for
    distinct labels, the ``n`` classes whose weight-gradient rows have the most negative minimum.
    A FedAvg model delta of one local step is ``lr`` times a gradient, so the signs (and, for
    ``yin``, the ranking) carry over; counts from several local steps are approximate.
    """
    if strategy == "yin":
        layer, index = last_linear_index(model)
        rows = update[index].detach().double()
        k = rows.shape[0]
        if not 1 <= n <= k:
            raise GialabError(f"yin label inference assumes {n} distinct labels among {k} classes; use strategy counts")
        return rows.min(dim=1).values.argsort()[:n].sort().values
    if strategy != "counts":
        raise GialabError(f"unknown label strategy {strategy!r}; valid: counts, yin")
    counts = label_counts(model, update, n)
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)
