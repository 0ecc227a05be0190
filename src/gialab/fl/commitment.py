"""A server's public commitment to the model it sends: SHA-256 over its architecture and state.

Model inconsistency attacks (Pasquini et al. 2022, "Eluding secure aggregation in federated
learning via model inconsistency", CCS) send one client a model unlike everyone else's, so that
client's contribution stands alone in the aggregate. If the server must publish one digest of
"the" model of the round where every client sees the same value (a public bulletin board, or
clients comparing notes), a client can check that what it received hashes to that digest: the
server can still send everyone a malicious model, but no longer a different one to each.

The digest covers what determines the function a client computes: every module's name and class
(the architecture; a forward pass is defined by the classes) and every state tensor's name,
dtype, shape and bytes (parameters and buffers, e.g. BatchNorm statistics).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def model_commitment(model: nn.Module) -> str:
    """Hex SHA-256 of ``model``'s module tree and state dict; equal models give equal digests."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"module {name} {type(module).__module__}.{type(module).__qualname__}\n".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"tensor {name} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
