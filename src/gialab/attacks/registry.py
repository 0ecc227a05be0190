"""Every attack registers itself here, next to the survey's record of what it is.

The catalog (``gialab catalog``) is the survey's taxonomy made executable: each record says which
threat model, reconstruction family, paper, FL setups and target data an attack belongs to, and
whether gialab implements it yet. Implemented attacks are looked up by name, never by if/elif.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gialab.attacks.base import Attack
from gialab.errors import unknown_name


@dataclass(frozen=True)
class TaxonomyRecord:
    name: str
    title: str
    paper: str
    threat_model: str
    family: str
    fl_setups: tuple[str, ...]
    target_data: str
    architecture: str = "any"
    defense_broken: str = "none tested"
    figure1: bool = False  # one of the eight systems of the survey's Figure 1
    survey_section: str = ""


_ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack available by its ``name``; names must be in the catalog."""
    from gialab.attacks.taxonomy import RECORDS

    if cls.name not in RECORDS:
        raise ValueError(f"attack {cls.name!r} has no taxonomy record in gialab.attacks.taxonomy")
    if cls.name in _ATTACKS:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    _ATTACKS[cls.name] = cls
    return cls


def _load_implementations() -> None:
    import gialab.attacks.implemented  # noqa: F401  (registers every attack module)


def implemented() -> dict[str, type[Attack]]:
    _load_implementations()
    return dict(_ATTACKS)


def get_attack(name: str) -> type[Attack]:
    attacks = implemented()
    if name not in attacks:
        raise unknown_name("attack", name, attacks)
    return attacks[name]


def catalog() -> list[dict[str, object]]:
    """The taxonomy table: every record, with ``implemented`` filled in from the registry."""
    from gialab.attacks.taxonomy import RECORDS

    done = implemented()
    return [asdict(r) | {"implemented": r.name in done} for r in RECORDS.values()]
