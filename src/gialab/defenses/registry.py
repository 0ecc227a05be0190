"""Defenses by name, each with its own validated parameters.

A scenario lists defenses in order, as names or as mappings with parameters
(``defenses: [{name: dp, noise_multiplier: 1.0}, secure_aggregation]``). A defense module declares a
class with ``name``, a ``Params`` model (a :class:`DefenseParams`) and a constructor taking those
params, decorates it with :func:`register_defense`, and is found by importing every module of this
package, so adding a defense is adding its file (as for attacks).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from gialab.errors import GialabError, unknown_name


class DefenseParams(BaseModel):
    """Base of every defense's parameters: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DefenseClass(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[DefenseParams]]

    def __init__(self, params: DefenseParams) -> None: ...


_DEFENSES: dict[str, type] = {}


def register_defense(cls: type) -> type:
    """Class decorator: make a defense available by its ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not isinstance(getattr(cls, "Params", None), type):
        raise ValueError(f"defense {cls.__qualname__} needs a str `name` and a `Params` model")
    if name in _DEFENSES and _DEFENSES[name] is not cls:
        raise ValueError(f"defense {name!r} is registered twice")
    _DEFENSES[name] = cls
    return cls


def defense_classes() -> dict[str, type]:
    """Every registered defense, after importing each module of :mod:`gialab.defenses`."""
    import gialab.defenses as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(sorted(_DEFENSES.items()))


def build_defense(name: str, parameters: dict[str, Any]) -> Any:
    """The defense ``name`` built from ``parameters``; one-line errors name what is valid."""
    classes = defense_classes()
    if name not in classes:
        raise unknown_name("defense", name, classes)
    cls = classes[name]
    try:
        params = cls.Params(**parameters)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(sorted(cls.Params.model_fields)) or "none"
            raise GialabError(f"defense {name!r} has no parameter {key!r}; valid: {valid}") from None
        raise GialabError(f"defense {name}.{key}: {err['msg']} (got {err.get('input')!r})") from None
    return cls(params)
