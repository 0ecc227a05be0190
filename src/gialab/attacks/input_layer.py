"""The fully connected layer that sees the raw input: where linear-layer leakage happens.

Natural leakage, the Cocktail Party Attack, and the imprint/trap-weight attacks all read the
weight gradient of a first layer ``z = W x + b`` on the flattened input, whose rows are (mixtures
of) the inputs themselves. One check for all of them, so each refuses other models the same way.
"""

from __future__ import annotations

from torch import nn

from gialab.data.dataset import DataSpec
from gialab.errors import GialabError
from gialab.fl.client import parameter_index


def input_linear(model: nn.Module, data: DataSpec, attack: str, *, bias: bool = True) -> tuple[nn.Linear, int]:
    """The first parameterized layer, which must be ``nn.Linear`` on C*H*W inputs (with a bias if
    ``bias``), and the index of its weight in ``model.parameters()`` (its bias follows it)."""
    first = next((m for m in model.modules() if list(m.parameters(recurse=False))), None)
    if first is None:
        raise GialabError(f"{attack} needs a model with parameters; this model has none")
    if not isinstance(first, nn.Linear) or (bias and first.bias is None):
        wanted = "fully connected with a bias" if bias else "fully connected"
        raise GialabError(
            f"{attack} needs a model whose first layer is {wanted} (e.g. fcnet); "
            f"this model starts with {type(first).__name__}"
        )
    c, h, w = data.shape
    if first.in_features != c * h * w:
        raise GialabError(
            f"{attack}: the first layer takes {first.in_features} inputs but the data has {c}x{h}x{w} = {c * h * w}"
        )
    return first, parameter_index(model, first.weight)
