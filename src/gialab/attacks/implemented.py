"""Imports every attack module so that each registers itself; add new attacks here."""

from gialab.attacks.analytic import fc_leakage  # noqa: F401
from gialab.attacks.optimization import dlg  # noqa: F401
