"""Build a model by name for a data shape.

Models are initialized from torch's global RNG, so the caller controls reproducibility with
``torch.manual_seed`` before ``build_model`` (the same seed gives the same weights). Every
model takes images in [0, 1] as they are (no normalization layer) and returns logits.
Text models (``transformer3``, ``gpt2-small``) take token ids of shape ``(sequence_length,)``
and predict the next token, so their ``num_classes`` is the tokenizer's vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gialab.errors import GialabError, unknown_name
from gialab.models.cnn6 import CNN6
from gialab.models.convnet import ConvNet
from gialab.models.fcnet import FCNet
from gialab.models.lenet import LeNet
from gialab.models.resnet import ResNet18
from gialab.models.transformer import TransformerConfig, TransformerLM, gpt2_small_config, transformer3_config

MODELS: tuple[str, ...] = ("lenet", "convnet", "resnet18", "fcnet", "cnn6")  # image models
TEXT_MODELS: dict[str, Callable[[int], TransformerConfig]] = {  # name -> config for a vocabulary size
    "transformer3": transformer3_config,
    "gpt2-small": gpt2_small_config,
}

_BUILDERS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "lenet": lambda shape, k: LeNet(shape, k),
    "convnet": lambda shape, k: ConvNet(shape, k),
    "resnet18": lambda shape, k: ResNet18(shape[0], k),
    "fcnet": lambda shape, k: FCNet(shape, k),
    "cnn6": lambda shape, k: CNN6(shape, k),
}


def model_names() -> tuple[str, ...]:
    """The valid model names, in registry order."""
    return MODELS


def build_model(name: str, spec_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build model ``name`` for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs.

    Uses torch's global RNG for the init (seed it first for determinism). Raises
    :class:`GialabError` for an unknown name, a malformed shape or fewer than 2 classes.
    """
    if name not in _BUILDERS and name not in TEXT_MODELS:
        raise unknown_name("model", name, MODELS + tuple(TEXT_MODELS))
    shape = tuple(spec_shape)
    if (name in TEXT_MODELS) != (len(shape) == 1):
        kind = "token sequences" if name in TEXT_MODELS else "images"
        valid = ", ".join(TEXT_MODELS) if len(shape) == 1 else ", ".join(_BUILDERS)
        raise GialabError(f"model {name!r} takes {kind}, which this dataset does not hold; valid models: {valid}")
    if name in TEXT_MODELS:
        return _build_text(name, shape[0], num_classes)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise GialabError(
            f"model input shape must be three positive ints (C, H, W), got {tuple(spec_shape)!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise GialabError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return _BUILDERS[name](shape, num_classes)  # type: ignore[arg-type]


def _build_text(name: str, sequence_length: int, vocab_size: int) -> TransformerLM:
    config = TEXT_MODELS[name](vocab_size)
    if sequence_length > config.max_positions:
        raise GialabError(
            f"sequence_length {sequence_length} exceeds model {name!r}'s {config.max_positions} positions"
        )
    return TransformerLM(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter entries."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(model: nn.Module) -> str:
    """One line: class name and parameter count, e.g. ``'LeNet (15,826 parameters)'``."""
    return f"{type(model).__name__} ({count_parameters(model):,} parameters)"
