"""A sweep's cells: attack preset x defense list x batch size x seed, each a resolved scenario.

Every cell carries a key, the SHA-256 of its resolved scenario (everything that decides its
numbers, the preset's description excepted). The same command so finds its finished cells in the
results database again, and a changed setting (a budget, an override) makes new cells instead of
passing off old numbers as new ones.

Defense columns are written as ``none``, a name, names joined by ``+`` (client-side transforms
first, then at most one aggregator) or a YAML flow list or mapping for parameters, e.g.
``dp_local+secure_aggregation`` or ``"[{name: dp_local, noise_multiplier: 0.1}]"``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from gialab.attacks.registry import get_attack
from gialab.defenses import resolve_defenses
from gialab.errors import GialabError, unknown_name
from gialab.scenario import DefenseConfig, Scenario, load_scenario, preset_names

# Analytic attacks that finish in seconds at their preset budget: a default sweep stays small.
DEFAULT_ATTACKS = ("fc-leakage", "trap-weights")
# No defense, client-side noise, and an aggregator that withdraws observe_individual.
DEFAULT_DEFENSES = ("none", "dp_local", "secure_aggregation")
Profile = Literal["preset", "demo", "quick"]
PROFILES: tuple[str, ...] = ("preset", "demo", "quick")
AXIS_KEYS = {"seed": "--seeds", "batch_size": "--batch-sizes", "defenses": "--defenses"}


@dataclass(frozen=True)
class DefenseColumn:
    """One column of the matrix: a defense list as the scenario takes it, and how it is shown."""

    label: str
    defenses: tuple[str | dict[str, Any], ...]


@dataclass(frozen=True)
class Cell:
    attack: str  # the preset, named after its attack
    column: DefenseColumn
    seed: int
    scenario: Scenario
    key: str

    @property
    def batch_size(self) -> int:
        return self.scenario.batch_size

    @property
    def run_id(self) -> str:
        """The run folder's name: readable, and unique per cell so a re-run overwrites, never adds."""
        column = re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.column.label)[:48]
        return f"{self.attack}-{column}-b{self.batch_size}-seed{self.seed}-{self.key[:12]}"


@dataclass(frozen=True)
class SweepSpec:
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    defenses: tuple[DefenseColumn, ...] = ()
    batch_sizes: tuple[int, ...] = ()  # empty: each preset's own batch size
    seeds: int = 1
    profile: Profile = "preset"
    overrides: Mapping[str, Any] = field(default_factory=dict)


def split_list(values: Sequence[str]) -> list[str]:
    """Items of repeatable, comma-separated options; commas inside [] or {} do not split."""
    items: list[str] = []
    for value in values:
        depth, start = 0, 0
        for i, char in enumerate(value):
            depth += char in "[{"
            depth -= char in "]}"
            if char == "," and depth == 0:
                items.append(value[start:i])
                start = i + 1
        items.append(value[start:])
    return [item.strip() for item in items if item.strip()]


def _label(config: str | dict[str, Any]) -> str:
    if isinstance(config, str):
        return config
    params = ",".join(f"{k}={v}" for k, v in config.items() if k != "name")
    return f"{config['name']}({params})"


def column_label(configs: Sequence[str | dict[str, Any]]) -> str:
    """How a defense list is shown as a column: ``none``, or its defenses joined by ``+``."""
    return "+".join(map(_label, configs)) or "none"


def parse_defense_column(text: str) -> DefenseColumn:
    """``none``, ``a+b``, or a YAML flow list / mapping; the names and parameters are validated."""
    if text.lower() == "none":
        return DefenseColumn("none", ())
    if text.startswith(("[", "{")):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise GialabError(f"defense column {text!r} is not a valid YAML list or mapping") from None
        entries = value if isinstance(value, list) else [value]
    else:
        entries = [part.strip() for part in text.split("+")]
    try:
        configs = tuple(DefenseConfig.model_validate(e).compact() for e in entries)
    except ValidationError:
        raise GialabError(f"defense column {text!r}: each defense is a name or a mapping with a name") from None
    resolve_defenses(configs)  # unknown names, bad parameters, two aggregators: one line, now
    return DefenseColumn(column_label(configs), configs)


def parse_defense_columns(values: Sequence[str]) -> tuple[DefenseColumn, ...]:
    columns: dict[str, DefenseColumn] = {}
    for item in split_list(values) or list(DEFAULT_DEFENSES):
        column = parse_defense_column(item)
        columns.setdefault(column.label, column)
    return tuple(columns.values())


def cell_key(scenario: Scenario) -> str:
    config = scenario.model_dump(mode="json", exclude={"description"})
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def profile_overrides(preset: str, profile: Profile) -> dict[str, Any]:
    """The attack's own budget for ``gialab demo`` (``demo``) or its smoke test (``quick``)."""
    if profile == "preset":
        return {}
    attack = get_attack(load_scenario(preset).attack.name)
    budget = attack.demo_overrides if profile == "demo" else attack.smoke_overrides
    return {f"attack.{key}": value for key, value in budget.items()}


def build_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, in attack, batch size, defense column, seed order."""
    if spec.profile not in PROFILES:
        raise GialabError(f"unknown profile {spec.profile!r}; valid: {', '.join(PROFILES)}")
    for key, option in AXIS_KEYS.items():
        if key in spec.overrides:
            raise GialabError(f"{key} is a sweep axis; set it with {option}, not --set")
    if spec.seeds < 1:
        raise GialabError(f"--seeds must be at least 1, got {spec.seeds}")
    valid = preset_names()
    attacks = list(dict.fromkeys(spec.attacks))
    for name in attacks:
        if name not in valid:
            raise unknown_name("attack", name, valid)
    columns = spec.defenses or parse_defense_columns([])
    cells = []
    for attack in attacks:
        base = profile_overrides(attack, spec.profile) | dict(spec.overrides)
        for batch_size in spec.batch_sizes or (None,):
            for column in columns:
                for seed in range(spec.seeds):
                    axes = {"seed": seed, "defenses": list(column.defenses)}
                    if batch_size is not None:
                        axes["batch_size"] = batch_size
                    scenario = load_scenario(attack, base | axes)
                    cells.append(Cell(attack, column, seed, scenario, cell_key(scenario)))
    return cells
