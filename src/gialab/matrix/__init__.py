"""``gialab matrix``: attack x defense x batch size x seed sweeps that resume after a kill.

``cells`` turns the command line into cells with stable keys, ``sweep`` runs and stores them
(in-process or on Ray, ``integrations.ray_cluster``), ``table`` reads them back as a table.
"""

from gialab.matrix.cells import (
    DEFAULT_ATTACKS, DEFAULT_DEFENSES, Cell, DefenseColumn, SweepSpec, build_cells, parse_defense_columns, split_list,
)
from gialab.matrix.sweep import CellOutcome, MatrixResult, run_cell, run_matrix
from gialab.matrix.table import CellRecord, MatrixEntry, collect, entries, markdown

__all__ = [
    "DEFAULT_ATTACKS", "DEFAULT_DEFENSES", "Cell", "CellOutcome", "CellRecord", "DefenseColumn", "MatrixEntry",
    "MatrixResult", "SweepSpec", "build_cells", "collect", "entries", "markdown", "parse_defense_columns",
    "run_cell", "run_matrix", "split_list",
]
