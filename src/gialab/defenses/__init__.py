"""Defenses: client-side update transforms and aggregators (survey section 2.2).

Each defense registers by name with its own parameters (``registry``) and takes one of the
shapes in ``base``; a scenario lists them in order (client-side transforms and model audits,
then at most one aggregator; without one the server takes the example-weighted mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gialab.defenses.base import Aggregator, ModelAudit, RoundSizeChecked, UpdateTransform
from gialab.defenses.mean import WeightedMean
from gialab.defenses.registry import DefenseParams, build_defense, defense_classes, register_defense
from gialab.errors import GialabError


@dataclass(frozen=True)
class DefenseStack:
    transforms: tuple[UpdateTransform, ...]
    aggregator: Aggregator
    audits: tuple[ModelAudit, ...] = ()  # client-side checks of the received model, before training

    @property
    def aggregate_only(self) -> bool:
        """True when the server never sees a single client's update (e.g. secure aggregation)."""
        return not self.aggregator.reveals_individual

    def check_round_size(self, participants: int) -> None:
        """Ask every defense that depends on the round size whether ``participants`` clients work."""
        for defense in (*self.transforms, self.aggregator):
            if isinstance(defense, RoundSizeChecked):
                defense.check_round_size(participants)


def resolve_defenses(configs: Sequence[str | Mapping[str, Any]]) -> DefenseStack:
    """Build the scenario's defenses in order: ``name`` or ``{name: ..., <parameter>: ...}``."""
    transforms: list[UpdateTransform] = []
    audits: list[ModelAudit] = []
    aggregator: Aggregator | None = None
    for config in configs:
        name, parameters = (config, {}) if isinstance(config, str) else (
            config["name"], {k: v for k, v in config.items() if k != "name"})
        defense = build_defense(name, parameters)
        if isinstance(defense, Aggregator):
            if aggregator is not None:
                raise GialabError(f"defenses {aggregator.name!r} and {name!r} are both aggregators; keep one")
            aggregator = defense
        elif isinstance(defense, (ModelAudit, UpdateTransform)):
            if aggregator is not None:
                raise GialabError(
                    f"client-side defense {name!r} is listed after the aggregator {aggregator.name!r}; "
                    "list client-side transforms first"
                )
            (audits if isinstance(defense, ModelAudit) else transforms).append(defense)  # type: ignore[arg-type]
        else:
            raise TypeError(f"defense {name!r} is neither an UpdateTransform, a ModelAudit nor an Aggregator")
    return DefenseStack(tuple(transforms), aggregator or WeightedMean(), tuple(audits))


__all__ = [
    "Aggregator", "DefenseParams", "DefenseStack", "ModelAudit", "UpdateTransform", "WeightedMean", "build_defense",
    "defense_classes", "register_defense", "resolve_defenses",
]
