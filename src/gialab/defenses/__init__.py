"""Defenses: client-side update transforms and aggregators (survey section 2.2).

This version ships the undefended baseline (the example-weighted mean). Secure aggregation, DP,
compression and robust rules plug in through the two protocols in ``base`` and register by name
in ``DEFENSES``; a scenario lists them in order (client-side transforms, then one aggregator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gialab.defenses.base import Aggregator, UpdateTransform
from gialab.defenses.mean import WeightedMean
from gialab.errors import GialabError, unknown_name

DEFENSES: dict[str, Callable[[], UpdateTransform | Aggregator]] = {}


@dataclass(frozen=True)
class DefenseStack:
    transforms: tuple[UpdateTransform, ...]
    aggregator: Aggregator

    @property
    def aggregate_only(self) -> bool:
        """True when the server never sees a single client's update (e.g. secure aggregation)."""
        return not self.aggregator.reveals_individual


def resolve_defenses(names: Sequence[str]) -> DefenseStack:
    transforms: list[UpdateTransform] = []
    aggregator: Aggregator | None = None
    for name in names:
        if name not in DEFENSES:
            raise unknown_name("defense", name, DEFENSES) if DEFENSES else GialabError(
                f"unknown defense {name!r}; no defenses are implemented in this version yet"
            )
        defense = DEFENSES[name]()
        if isinstance(defense, Aggregator):
            if aggregator is not None:
                raise GialabError(f"defenses {aggregator.name!r} and {name!r} are both aggregators; keep one")
            aggregator = defense
        else:
            transforms.append(defense)
    return DefenseStack(tuple(transforms), aggregator or WeightedMean())


__all__ = ["DEFENSES", "Aggregator", "DefenseStack", "UpdateTransform", "WeightedMean", "resolve_defenses"]
