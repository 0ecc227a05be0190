"""The SQLite results database: one row per completed run, for sweeps and later comparison.

A sweep (``gialab matrix``) marks each row with its cell's key, a hash of the cell's resolved
scenario, under a UNIQUE index: a cell stored twice (a retried task, a resumed sweep) stays one
row. Cells without a result go to ``skipped`` with the runner's one-line reason and the ``stage`` that
gave it: ``check`` when the scenario alone was refused before any work (an attack whose
capability a defense withdraws), ``run`` when the run stopped (a refusal that needed the model or
data, a protocol or an attack giving up). A resumed sweep does not try them again and the report
can say why. ``utility`` holds what each defense column costs a reference FL training
(``gialab matrix --utility-rounds``), the other side of the privacy-utility curves.
Databases written before these existed gain them on first open; their rows stay as they were.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    scenario TEXT NOT NULL,
    attack TEXT NOT NULL,
    threat_model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    clients INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    defenses TEXT NOT NULL,
    psnr_mean REAL,
    ssim_mean REAL,
    fraction_recovered REAL,
    label_accuracy REAL,
    runtime_s REAL NOT NULL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    cell_key TEXT
)
"""

SKIPPED_SCHEMA = """
CREATE TABLE IF NOT EXISTS skipped (
    cell_key TEXT PRIMARY KEY,
    scenario TEXT NOT NULL,
    attack TEXT NOT NULL,
    threat_model TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    defenses TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    config TEXT NOT NULL
)
"""


UTILITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS utility (
    key TEXT PRIMARY KEY,
    column_label TEXT NOT NULL,
    defenses TEXT NOT NULL,
    accuracy REAL,
    initial_accuracy REAL,
    reason TEXT,
    seconds REAL NOT NULL,
    description TEXT NOT NULL,
    config TEXT NOT NULL
)
"""


def database_path(out: Path) -> Path:
    return out / "results.sqlite"


@contextmanager
def _open(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection whose tables are current; commits on success, rolls back on error, always closes."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            conn.execute(SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            if "cell_key" not in columns:  # a database from before sweeps: add the column, keep the rows
                conn.execute("ALTER TABLE runs ADD COLUMN cell_key TEXT")
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS runs_cell_key ON runs (cell_key)")
            conn.execute(SKIPPED_SCHEMA)
            conn.execute(UTILITY_SCHEMA)
        with conn:
            yield conn
    finally:
        conn.close()


def _encode(row: Mapping[str, Any]) -> dict[str, Any]:
    record = dict(row)
    for key in ("metrics", "config"):
        if key in record:
            record[key] = json.dumps(record[key], sort_keys=True)
    record["defenses"] = json.dumps(list(record["defenses"]))
    return record


def insert_run(db: Path, row: Mapping[str, Any]) -> bool:
    """Insert in one transaction; the caller removes the run folder if this raises.

    A row whose ``cell_key`` is already stored is not inserted again: returns False then.
    """
    record = _encode(row)
    columns = ", ".join(record)
    marks = ", ".join(f":{k}" for k in record)
    with _open(db) as conn:
        cursor = conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks}) ON CONFLICT (cell_key) DO NOTHING",
                              record)
        return cursor.rowcount == 1


def _insert_once(db: Path, table: str, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless its unique key is already stored; True when it was inserted."""
    record = _encode(row)
    columns = ", ".join(record)
    marks = ", ".join(f":{k}" for k in record)
    with _open(db) as conn:
        cursor = conn.execute(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", record)
        return cursor.rowcount == 1


def _read(db: Path, query: str, json_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every row ``query`` selects, as a dict, with ``json_columns`` decoded."""
    with _open(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(query)]
    for r in rows:
        r.update({c: json.loads(r[c]) for c in json_columns})
    return rows


def insert_skipped(db: Path, row: Mapping[str, Any]) -> bool:
    """Record a sweep cell that cannot run, with its reason; False when its key is already stored."""
    return _insert_once(db, "skipped", row)


def stored_cell_keys(db: Path) -> set[str]:
    """Keys of the sweep cells already finished: run, or skipped with a reason."""
    with _open(db) as conn:
        ran = conn.execute("SELECT cell_key FROM runs WHERE cell_key IS NOT NULL").fetchall()
        skipped = conn.execute("SELECT cell_key FROM skipped").fetchall()
    return {key for (key,) in ran + skipped}


def read_runs(db: Path) -> list[dict[str, Any]]:
    return _read(db, "SELECT * FROM runs ORDER BY created", ("metrics", "config", "defenses"))


def read_skipped(db: Path) -> list[dict[str, Any]]:
    return _read(db, "SELECT * FROM skipped ORDER BY cell_key", ("config", "defenses"))


def insert_utility(db: Path, row: Mapping[str, Any]) -> bool:
    """Record one defense column's reference-training accuracy (or why it has none); False if stored."""
    return _insert_once(db, "utility", row)


def read_utility(db: Path) -> list[dict[str, Any]]:
    return _read(db, "SELECT * FROM utility ORDER BY rowid", ("config", "defenses"))
