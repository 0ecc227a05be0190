"""Load saved weights into a model, safely.

Only ``torch.load(..., weights_only=True)`` is used: a weights file from an untrusted source
cannot run code (arbitrary pickles are refused). Attacks are often evaluated on trained models
(gradients of a trained model leak differently from those at init), so this is how a user
brings their own checkpoint. Every problem is a one-line :class:`GialabError`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gialab.errors import GialabError

_MAX_KEYS_NAMED = 3


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _few(keys: list[str]) -> str:
    named = ", ".join(keys[:_MAX_KEYS_NAMED])
    more = len(keys) - _MAX_KEYS_NAMED
    return named + (f" (+{more} more)" if more > 0 else "")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict (or ``{"state_dict": ...}``) from ``path`` into ``model`` in place.

    Keys and shapes must match the model exactly; otherwise, and for a missing or unreadable
    file, raises :class:`GialabError` naming the problem (the first mismatched key with both
    shapes, or a few missing/unexpected keys).
    """
    path = Path(path)
    if not path.exists():
        raise GialabError(f"weights file not found: {path}")
    if not path.is_file():
        raise GialabError(f"weights path is not a file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GialabError(
            f"refusing weights file {path}: it holds objects other than tensors, and only "
            "weights_only loading (plain state_dicts of tensors) is allowed"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-facing file problem
        raise GialabError(
            f"cannot read weights file {path} (need a torch-saved state_dict of tensors; "
            f"{_first_line(exc)})"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise GialabError(
            f"weights file {path} does not hold a state_dict (a mapping of names to tensors, "
            f"or {{'state_dict': ...}}); got {type(obj).__name__}"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in obj]
    unexpected = [k for k in obj if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
        raise GialabError(
            f"weights in {path} do not match {type(model).__name__}: {'; '.join(parts)}"
        )
    for key, tensor in own.items():
        if obj[key].shape != tensor.shape:
            raise GialabError(
                f"weights in {path} do not match {type(model).__name__}: {key!r} has shape "
                f"{tuple(obj[key].shape)} in the file but {tuple(tensor.shape)} in the model"
            )
    model.load_state_dict(dict(obj), strict=True)
