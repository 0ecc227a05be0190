"""Label inference from the last layer's gradient.

Paper: Zhao, Mopuri, Bilen 2020, "iDLG: Improved Deep Leakage from Gradients", section 3.
With cross-entropy and one sample, ``dL/dz_c = softmax(z)_c - 1[c = y]`` is negative only at the
true class. The last fully connected layer's bias gradient equals ``dL/dz``; without a bias, its
weight-gradient row ``c`` is ``dL/dz_c * h`` and with non-negative features ``h`` (after sigmoid or
ReLU) the row sum has the same sign. Either way the true label is the index of the negative entry.
"""

from __future__ import annotations

import torch
from torch import nn

from gialab.errors import GialabError


def last_linear_index(model: nn.Module) -> tuple[nn.Linear, int]:
    """The model's last ``nn.Linear`` and the index of its weight among ``model.parameters()``."""
    index_of = {id(p): i for i, p in enumerate(model.parameters())}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GialabError("label inference needs a fully connected classification layer; this model has none")
    last = linears[-1]
    return last, index_of[id(last.weight)]


def idlg_label(model: nn.Module, update: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The single sample's label, shape (1,), from the sign pattern of the last layer's gradient."""
    layer, index = last_linear_index(model)
    signal = update[index + 1] if layer.bias is not None else update[index].sum(dim=1)
    return signal.argmin().reshape(1)
