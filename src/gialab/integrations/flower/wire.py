"""How a gialab model and update travel in Flower's messages.

A model goes out as Flower ``FitIns``: its state (parameters and buffers, in ``state_dict``
order) as the NumPy arrays of ``FitIns.parameters``, the channel every Flower strategy uses, and
a config naming the round. The architecture travels only when the server changed it (Robbing
the Fed's imprint block, a malicious server's ``modify_architecture``): then as the pickled
module, the stand-in for the app code a Flower server ships to its SuperNodes. Otherwise the
client builds the scenario's model itself, as an honest ClientApp does, and loads the arrays.

An update comes back as ``FitRes.parameters`` aligned with ``model.parameters()`` (gialab's
convention, ``fl.protocol``), with the batch size as ``num_examples``: FedAvg's weight, and
SecAgg+'s, which masks both.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gialab.models import build_model

ROUND = "gialab.round"
ARCHITECTURE = "gialab.architecture"
COMMITMENT = "gialab.commitment"
CLIENT_ID = "gialab.client"  # the property a client answers the server's who-are-you query with


def architecture_of(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Module names, classes and parameter shapes: equal for two models a client builds alike."""
    return [(name, type(m).__name__, tuple(p.shape))
            for name, m in model.named_modules() for p in m.parameters(recurse=False)]


def model_arrays(model: nn.Module) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def model_config(model: nn.Module, honest: nn.Module, round_index: int, commitment: str | None) -> dict:
    """The FitIns config: the round, the round's commitment, and the architecture if not the honest one."""
    config: dict = {ROUND: round_index}
    if commitment is not None:
        config[COMMITMENT] = commitment
    if architecture_of(model) != architecture_of(honest) or type(model) is not type(honest):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        config[ARCHITECTURE] = buffer.getvalue()
    return config


def decode_model(
    arrays: Sequence[np.ndarray], config: Mapping, *, model_name: str, shape: tuple[int, ...], num_classes: int,
) -> nn.Module:
    """The model a client received: its own build of the scenario's model, or the shipped module."""
    if ARCHITECTURE in config:
        model = torch.load(io.BytesIO(bytes(config[ARCHITECTURE])), weights_only=False)  # type: ignore[arg-type]
    else:
        model = build_model(model_name, shape, num_classes)  # type: ignore[arg-type]
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"received {len(arrays)} arrays for a model with {len(state)} state tensors")
    model.load_state_dict({k: torch.as_tensor(np.asarray(a)).to(v.dtype).reshape(v.shape)
                           for (k, v), a in zip(state.items(), arrays, strict=True)})
    return model


def update_arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in tensors]


def update_tensors(arrays: Sequence[np.ndarray], model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Arrays back to tensors shaped and typed like ``model.parameters()`` (SecAgg+ returns float64)."""
    params = list(model.parameters())
    if len(arrays) != len(params):
        raise ValueError(f"an update of {len(arrays)} arrays for a model with {len(params)} parameters")
    return tuple(torch.as_tensor(np.asarray(a)).to(p.dtype).reshape(p.shape)
                 for a, p in zip(arrays, params, strict=True))
