"""An update (tensors aligned with ``model.parameters()``) as one flat vector, and back.

Robust aggregation rules, CGI's eq. (17)-(18) blend and the truth-side cosines all treat a whole
update as one vector; they share these two functions so the order and shapes always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def flatten(tensors: Iterable[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """The tensors' entries in parameter order, detached (optionally cast, e.g. to float64)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    return flat if dtype is None else flat.to(dtype)


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Cut ``vector`` back into tensors shaped (and typed) like ``like``."""
    parts = vector.split([t.numel() for t in like])
    return tuple(p.reshape(t.shape).to(t.dtype) for p, t in zip(parts, like, strict=True))
