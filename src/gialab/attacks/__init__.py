"""Attacks, by reconstruction family; each module names its paper and the equations it implements."""

from gialab.attacks.base import Attack, AttackContext, AttackParams, Reconstruction
from gialab.attacks.registry import TaxonomyRecord, catalog, get_attack, implemented, register

__all__ = [
    "Attack", "AttackContext", "AttackParams", "Reconstruction", "TaxonomyRecord",
    "catalog", "get_attack", "implemented", "register",
]
