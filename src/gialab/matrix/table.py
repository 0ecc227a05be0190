"""The matrix as a table: attacks (with their threat model and batch size) down, defenses across.

Each table cell summarises one attack x batch size x defense list over the sweep's seeds: the
median fraction of samples recovered and the median PSNR for image attacks, the median token
accuracy for text attacks. Medians, because a seed where an optimization attack diverges should
not move the figure the way a mean would. Skipped cells show a numbered reason under the table.
``entries`` is the data side, kept apart from rendering so other reports (HTML) can reuse it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gialab.matrix.cells import Cell, DefenseColumn, column_label
from gialab.report.database import read_runs, read_skipped
from gialab.scenario import Scenario

MISSING = "-"


@dataclass(frozen=True)
class CellRecord:
    """A requested cell and what the database holds for it: a run row, a reason it has none, or neither.

    ``status``: ``done``; ``skipped`` (refused before any work, e.g. a capability a defense
    withdraws); ``stopped`` (the run ended with a one-line reason: a refusal that needed the model
    or data, or a protocol or attack that gave up); ``missing`` (not run yet, or failed with a bug).
    """

    cell: Cell
    row: dict[str, Any] | None = None
    reason: str | None = None
    stage: str | None = None  # the database's skipped.stage: check or run

    @property
    def status(self) -> str:
        if self.row is not None:
            return "done"
        if self.reason is None:
            return "missing"
        return "skipped" if self.stage == "check" else "stopped"


@dataclass(frozen=True)
class MatrixEntry:
    """One table cell: an attack at one batch size under one defense column, over the seeds."""

    attack: str
    threat_model: str
    batch_size: int
    column: str
    seeds: int  # seeds the sweep asked for
    runs: tuple[dict[str, Any], ...]  # database rows, one per finished seed
    reasons: tuple[tuple[str, str], ...]  # distinct (status, reason) of the seeds without a result

    def median(self, metric: str) -> float | None:
        values = [r["metrics"].get(metric) for r in self.runs]
        present = [float(v) for v in values if v is not None]
        return statistics.median(present) if present else None

    @property
    def text(self) -> bool:
        return any(r["metrics"].get("token_accuracy") is not None for r in self.runs)


def collect(cells: Sequence[Cell], db: Path) -> list[CellRecord]:
    """Each cell with its stored row or skip reason, read from the results database."""
    if not db.exists():
        return [CellRecord(c) for c in cells]
    rows = {r["cell_key"]: r for r in read_runs(db) if r.get("cell_key")}
    skipped = {r["cell_key"]: r for r in read_skipped(db)}
    records = []
    for c in cells:
        skip = skipped.get(c.key, {})
        records.append(CellRecord(c, rows.get(c.key), skip.get("reason"), skip.get("stage")))
    return records


def stored_records(db: Path) -> list[CellRecord]:
    """Every sweep cell the database holds, run or skipped, rebuilt from its stored scenario.

    For a report of a whole sweep folder (``gialab report``), whichever invocations filled it; cells
    come in attack, batch size, defense column (``none`` first, then by name), seed order.
    """
    if not db.exists():
        return []
    records = []
    for row in read_runs(db):
        if row.get("cell_key"):
            records.append(CellRecord(_cell(row["scenario"], row["config"], row["cell_key"]), row))
    for skip in read_skipped(db):
        cell = _cell(skip["scenario"], skip["config"], skip["cell_key"])
        records.append(CellRecord(cell, None, skip["reason"], skip["stage"]))
    return sorted(records, key=lambda r: (r.cell.attack, r.cell.batch_size, r.cell.column.label != "none",
                                          r.cell.column.label, r.cell.seed))


def _cell(preset: str, config: dict[str, Any], key: str) -> Cell:
    scenario = Scenario.model_validate(config)
    defenses = tuple(d.compact() for d in scenario.defenses)
    return Cell(preset, DefenseColumn(column_label(defenses), defenses), scenario.seed, scenario, key)


def entries(records: Sequence[CellRecord]) -> list[MatrixEntry]:
    """Group the records by (attack, batch size, defense column), in the sweep's order."""
    groups: dict[tuple[str, int, str], list[CellRecord]] = {}
    for record in records:
        c = record.cell
        groups.setdefault((c.attack, c.batch_size, c.column.label), []).append(record)
    result = []
    for (attack, batch_size, column), group in groups.items():
        result.append(MatrixEntry(
            attack=attack, threat_model=group[0].cell.scenario.threat_model, batch_size=batch_size,
            column=column, seeds=len(group),
            runs=tuple(r.row for r in group if r.row is not None),
            reasons=tuple(dict.fromkeys((r.status, r.reason) for r in group if r.reason is not None and r.row is None)),
        ))
    return result


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _figure(entry: MatrixEntry, footnotes: dict[str, int]) -> str:
    notes = " ".join(f"{status} [{footnotes.setdefault(reason, len(footnotes) + 1)}]"
                     for status, reason in entry.reasons)
    if not entry.runs:
        return notes or MISSING
    if entry.text:
        figure = f"tok {_number(entry.median('token_accuracy'), 2)}"
    else:
        figure = f"{_number(entry.median('fraction_recovered'), 2)} / {_number(entry.median('psnr_mean'), 1)} dB"
    partial = f" ({len(entry.runs)}/{entry.seeds})" if len(entry.runs) < entry.seeds else ""
    return " ".join(part for part in (figure + partial, notes) if part)


@dataclass(frozen=True)
class Grid:
    """The table laid out: header, rows of strings, the footnoted reasons and a legend."""

    header: list[str]
    rows: list[list[str]]
    footnotes: dict[str, int]
    legend: str


def grid(matrix: Sequence[MatrixEntry]) -> Grid:
    columns = list(dict.fromkeys(e.column for e in matrix))
    by_row: dict[tuple[str, str, int], dict[str, MatrixEntry]] = {}
    for e in matrix:
        by_row.setdefault((e.attack, e.threat_model, e.batch_size), {})[e.column] = e
    footnotes: dict[str, int] = {}
    rows = [[attack, threat, str(batch)] + [_figure(cells[c], footnotes) if c in cells else MISSING for c in columns]
            for (attack, threat, batch), cells in by_row.items()]
    seeds = max((e.seeds for e in matrix), default=0)
    legend = (f"Cells: median fraction of samples recovered / median PSNR over {seeds} seed(s); text attacks: "
              f"median token accuracy (tok). (k/n): k of n seeds ran. skipped: refused before any work; "
              f"stopped: the run ended early; [n]: the reason below. {MISSING}: not run yet.")
    return Grid(["attack", "threat model", "batch", *columns], rows, footnotes, legend)


def markdown(matrix: Sequence[MatrixEntry]) -> str:
    """A GitHub-flavoured markdown table, for papers and READMEs."""
    g = grid(matrix)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---", "---", "---:", *([":---:"] * (len(g.header) - 3))]
    lines = [line(g.header), line(align), *(line(r) for r in g.rows), "", g.legend]
    if g.footnotes:
        lines.append("")
        lines += [f"- [{n}] {reason}" for reason, n in g.footnotes.items()]
    return "\n".join(lines) + "\n"


def as_json(records: Sequence[CellRecord]) -> list[dict[str, Any]]:
    """One object per cell: what it is, its status, and its metrics or reason."""
    result = []
    for r in records:
        c = r.cell
        result.append({
            "attack": c.attack, "threat_model": c.scenario.threat_model, "batch_size": c.batch_size,
            "defenses": list(c.column.defenses), "column": c.column.label, "seed": c.seed, "cell_key": c.key,
            "status": r.status,
            "metrics": r.row["metrics"] if r.row else None, "run_dir": r.row["run_dir"] if r.row else None,
            "reason": r.reason,
        })
    return result
