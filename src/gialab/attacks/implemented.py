"""Imports every attack module under the family packages, so each registers itself.

Discovery instead of a hand-kept import list: adding an attack is adding its file.
"""

from __future__ import annotations

import importlib
import pkgutil

import gialab.attacks as _attacks

FAMILIES = ("optimization", "analytic", "sparsification", "isolation", "decomposition", "client")

for _family in FAMILIES:
    try:
        _package = importlib.import_module(f"{_attacks.__name__}.{_family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{_attacks.__name__}.{_family}":
            raise
        continue
    for _module in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{_module.name}")
