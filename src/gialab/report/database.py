"""The SQLite results database: one row per completed run, for sweeps and later comparison."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
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
    run_dir TEXT NOT NULL
)
"""


def database_path(out: Path) -> Path:
    return out / "results.sqlite"


def insert_run(db: Path, row: Mapping[str, Any]) -> None:
    """Insert in one transaction; the caller removes the run folder if this raises."""
    record = dict(row)
    for key in ("metrics", "config"):
        record[key] = json.dumps(record[key], sort_keys=True)
    record["defenses"] = json.dumps(list(record["defenses"]))
    with sqlite3.connect(db) as conn:
        conn.execute(SCHEMA)
        columns = ", ".join(record)
        marks = ", ".join(f":{k}" for k in record)
        conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", record)
    conn.close()


def read_runs(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY created")]
    conn.close()
    for r in rows:
        r["metrics"], r["config"] = json.loads(r["metrics"]), json.loads(r["config"])
        r["defenses"] = json.loads(r["defenses"])
    return rows
