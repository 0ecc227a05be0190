"""Run a sweep's cells and store each as it finishes, so a killed sweep resumes where it stopped.

The driver is the only writer of the output folder. A cell runs in a scratch folder (in this
process, or in a Ray worker, possibly on another machine) and comes back as its database row and
its run folder's files; the driver writes the folder atomically, then the row. A ``kill -9`` can so
leave at most a run folder without its row, or a ``.partial-*`` folder: the next start removes
both and runs that cell again. It never leaves a row without its folder, and never two rows for
one cell (the cell key's UNIQUE index; a cell stored twice keeps its first row).

Cells are refused before any work where the runner can tell from the scenario alone
(``runner.check``: an attack needing ``observe_individual`` behind secure aggregation; stage
``check``, shown as skipped). A ``GialabError`` while a cell runs is recorded too, with stage
``run`` (shown as no result): a refusal that needs the model or the data (DP-SGD and BatchNorm, a
batch larger than a client's data), or a protocol or attack that gave up. Either way the
runner's one-line reason is kept and shown, and the sweep goes on.
A cell that fails with a bug keeps its traceback, is not recorded, and runs again next time.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gialab.errors import GialabError
from gialab.matrix.cells import Cell, SweepSpec, build_cells
from gialab.report import atomic_folder, database_path, ensure_writable, insert_run, read_runs
from gialab.report.database import insert_skipped, stored_cell_keys
from gialab.runner import check, run
from gialab.scenario import Scenario

try:
    import fcntl
except ImportError:  # not POSIX: no lock, one sweep per folder is then the user's to keep
    fcntl = None  # type: ignore[assignment]

RUNS = "runs"
SCRATCH = ".scratch"
LOCK = ".matrix.lock"
CELL_FOLDER = re.compile(r"-seed\d+-[0-9a-f]{12}$")
ProgressSink = Callable[[int, int, int], None]  # (done, running, left)


@dataclass(frozen=True)
class CellOutcome:
    """What a finished cell hands the driver; exactly one of ``row``, ``skipped``, ``error`` is set."""

    key: str
    row: dict[str, Any] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    pid: int = 0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0


def run_cell(key: str, scenario: Scenario, scratch: Path | None = None) -> CellOutcome:
    """Run one cell in a scratch folder; a refusal (``GialabError``) becomes the cell's skip reason.

    One torch thread per cell, wherever it runs, so a sweep's numbers do not depend on
    ``--workers`` (float sums are ordered by the thread count); parallelism comes from cells.
    """
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def outcome(**kwargs: Any) -> CellOutcome:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return CellOutcome(key, pid=os.getpid(), peak_rss_mb=round(rss_mb, 1),
                           seconds=round(time.perf_counter() - started, 3), **kwargs)

    try:
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="cell-") as tmp:
            try:
                result = run(scenario, out=tmp)
            except GialabError as exc:
                return outcome(skipped=str(exc))
            except Exception:
                return outcome(error=traceback.format_exc())
            row = read_runs(database_path(Path(tmp)))[0]
            files = {p.relative_to(result.run_dir).as_posix(): p.read_bytes()
                     for p in sorted(result.run_dir.rglob("*")) if p.is_file()}
            return outcome(row=row, files=files)
    finally:
        torch.set_num_threads(threads)


class CellRunner(Protocol):
    """Where cells run: in this process, or as Ray tasks. Yields outcomes as cells finish."""

    def __enter__(self) -> CellRunner: ...

    def __exit__(self, *exc: object) -> None: ...

    def outcomes(self, cells: Sequence[Cell], running: Callable[[int], None]) -> Iterator[CellOutcome]:
        """Yield each cell's outcome as it finishes; ``running(n)`` whenever n cells are in flight."""
        ...


class InProcess:
    """One cell after another in this process (``--workers 1``); needs nothing beyond gialab."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def outcomes(self, cells: Sequence[Cell], running: Callable[[int], None]) -> Iterator[CellOutcome]:
        for cell in cells:
            running(1)
            result = run_cell(cell.key, cell.scenario, self.scratch)
            running(0)  # reported before the driver stores it, as a Ray runner does
            yield result


@dataclass(frozen=True)
class MatrixResult:
    cells: list[Cell]
    out: Path
    ran: int = 0  # cells this invocation ran and stored
    skipped: int = 0  # cells this invocation recorded as skipped
    failures: list[tuple[Cell, str]] = field(default_factory=list)  # (cell, traceback): not stored
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # worker pid -> its peak RSS
    seconds: float = 0.0  # the whole call
    startup_s: float = 0.0  # of which starting or joining Ray


def run_matrix(spec: SweepSpec, out: Path, *, workers: int | None = None, ray_address: str | None = None,
               progress: ProgressSink | None = None) -> MatrixResult:
    """Run every cell of ``spec`` not yet stored under ``out``; ``workers``/``ray_address`` pick Ray."""
    started = time.perf_counter()
    cells = build_cells(spec)
    _check_attacks(cells)
    if workers is not None and workers < 1:
        raise GialabError(f"--workers must be at least 1, got {workers}")
    runner = _cell_runner(workers, ray_address, Path(out) / SCRATCH)  # Ray missing: refused here
    out = ensure_writable(Path(out))
    sink = progress or (lambda done, running, left: None)
    entered = time.perf_counter()
    with runner, _sweep_lock(out):  # Ray first: an unreachable cluster is refused before anything is written
        startup = time.perf_counter() - entered
        db = database_path(out)
        _remove_leftovers(out, db)
        stored = stored_cell_keys(db)
        done = sum(c.key in stored for c in cells)
        sink(done, 0, len(cells) - done)
        skipped = 0
        runnable = []
        for cell in (c for c in cells if c.key not in stored):
            try:
                check(cell.scenario)
            except GialabError as exc:
                _store_skip(db, cell, "check", str(exc))
                skipped += 1
                done += 1
                sink(done, 0, len(cells) - done)
                continue
            runnable.append(cell)
        by_key = {c.key: c for c in runnable}
        ran, failures, rss = 0, [], {}
        in_flight = 0

        def running(count: int) -> None:
            """Show new starts now; a finished cell is shown once stored, so it never counts as left."""
            nonlocal in_flight
            rose, in_flight = count > in_flight, count
            if rose:
                sink(done, count, len(cells) - done - count)

        for outcome in runner.outcomes(runnable, running):
            cell = by_key[outcome.key]
            if outcome.pid:
                rss[outcome.pid] = max(rss.get(outcome.pid, 0.0), outcome.peak_rss_mb)
            if outcome.error is not None:
                failures.append((cell, outcome.error))
            elif outcome.skipped is not None:
                _store_skip(db, cell, "run", outcome.skipped)
                skipped += 1
            else:
                _store_run(out, db, cell, outcome)
                ran += 1
            done += 1
            sink(done, in_flight, len(cells) - done - in_flight)
    return MatrixResult(cells, out, ran, skipped, failures, rss, round(time.perf_counter() - started, 3),
                        round(startup, 3))


def _check_attacks(cells: Sequence[Cell]) -> None:
    """Refuse a sweep-wide mistake (an attack hyperparameter it lacks, an FL setup it cannot invert).

    Each attack is checked once without defenses: what fails there is the sweep's settings, not
    an attack x defense pair, so it is the user's one-line error rather than a column of skips.
    """
    seen: set[str] = set()
    for cell in cells:
        if cell.attack not in seen:
            seen.add(cell.attack)
            check(cell.scenario.model_copy(update={"defenses": ()}))


def _cell_runner(workers: int | None, ray_address: str | None, scratch: Path) -> CellRunner:
    if ray_address is None and (workers or 1) == 1:
        return InProcess(scratch)
    from gialab.integrations.ray_cluster import RayCells

    return RayCells(workers, ray_address)


@contextmanager
def _sweep_lock(out: Path) -> Iterator[None]:
    """One sweep per output folder at a time: its start removes what a killed sweep left behind."""
    with open(out / LOCK, "w") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GialabError(
                    f"another gialab matrix is writing to {out}; wait for it or use another --out") from None
        yield  # the lock goes with the process, kill -9 included


def _remove_leftovers(out: Path, db: Path) -> None:
    """Scratch folders, ``.partial-*`` folders and cell folders without a row: a killed sweep's garbage."""
    shutil.rmtree(out / SCRATCH, ignore_errors=True)
    runs = out / RUNS
    if not runs.is_dir():
        return
    referenced = {Path(r["run_dir"]).name for r in read_runs(db)}
    for entry in runs.iterdir():
        orphan = entry.is_dir() and CELL_FOLDER.search(entry.name) and entry.name not in referenced
        if entry.name.startswith(".partial-") or orphan:
            shutil.rmtree(entry, ignore_errors=True)


def _defenses(cell: Cell) -> list[Any]:
    return [d.compact() for d in cell.scenario.defenses]


def _store_skip(db: Path, cell: Cell, stage: str, reason: str) -> None:
    s = cell.scenario
    insert_skipped(db, {
        "cell_key": cell.key, "scenario": s.name, "attack": s.attack.name, "threat_model": s.threat_model,
        "batch_size": s.batch_size, "seed": s.seed, "defenses": _defenses(cell), "stage": stage, "reason": reason,
        "config": s.model_dump(mode="json"),
    })


def _store_run(out: Path, db: Path, cell: Cell, outcome: CellOutcome) -> None:
    """Folder first (atomically, under the cell's own name), then the row that points at it."""
    assert outcome.row is not None
    runs = out / RUNS
    runs.mkdir(exist_ok=True)
    final = runs / cell.run_id
    if final.exists():  # the same cell's folder from a sweep killed before its row: replace it
        shutil.rmtree(final)
    with atomic_folder(runs, cell.run_id) as folder:
        for name, data in outcome.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _point_metrics_at(folder / "metrics.json", final)
    row = outcome.row | {"run_id": cell.run_id, "run_dir": str(final.resolve()), "cell_key": cell.key}
    try:
        insert_run(db, row)
    except Exception as exc:
        shutil.rmtree(final, ignore_errors=True)
        raise GialabError(f"cannot write results database {db}: {exc}") from None


def _point_metrics_at(metrics: Path, final: Path) -> None:
    """The run's JSON named the worker's scratch folder; name the folder it now lives in."""
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        data["run_dir"] = str(final.resolve())
        metrics.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False))
