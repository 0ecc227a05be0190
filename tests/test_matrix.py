"""`gialab matrix`: every cell once, incompatible pairs skipped with their reason, resume after a kill.

The sweep is tiny (two analytic attacks that take a second each) so the file tests the sweep's
bookkeeping; each attack's quality has its own end-to-end test. Ray tests run where Ray is
installed (`pip install 'gialab[ray]'`) and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gialab.errors import GialabError
from gialab.matrix import SweepSpec, build_cells, collect, entries, markdown, parse_defense_columns, run_matrix
from gialab.report.database import insert_run, read_runs, read_skipped

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'gialab[ray]')")

# 2 attacks x 2 defense columns x 1 batch size x 2 seeds = 8 cells; fc-leakage needs observe_individual,
# which secure aggregation withdraws, so 2 cells are skipped and 6 run. Two clients, so the secure
# aggregation cells of trap-weights (an attack on the aggregate) have a round to run.
SPEC = SweepSpec(attacks=("fc-leakage", "trap-weights"), defenses=parse_defense_columns(["none,secure_aggregation"]),
                 batch_sizes=(4,), seeds=2, overrides={"clients": 2})
CLI_ARGS = ["--attacks", "fc-leakage,trap-weights", "--defenses", "none,secure_aggregation", "--batch-sizes", "4",
            "--seeds", "2", "--set", "clients=2"]


def _rows(out: Path) -> list[dict]:
    return read_runs(out / "results.sqlite")


def _folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").iterdir())


def _assert_one_row_per_cell(out: Path, expected_keys: set[str]) -> None:
    rows = _rows(out)
    keys = [r["cell_key"] for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == expected_keys
    assert _folders(out) == sorted(Path(r["run_dir"]).name for r in rows)  # no orphan, no .partial-*
    assert not (out / ".scratch").exists() or not any((out / ".scratch").iterdir())
    for r in rows:
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["run_dir"] == r["run_dir"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("matrix") / "sweep"
    result = run_matrix(SPEC, out)
    assert (result.ran, result.skipped, result.failures) == (6, 2, [])
    return out


def _runnable_keys() -> set[str]:
    return {c.key for c in build_cells(SPEC) if not (c.attack == "fc-leakage" and c.column.label != "none")}


def test_sweep_writes_one_row_per_runnable_cell(swept: Path) -> None:
    _assert_one_row_per_cell(swept, _runnable_keys())
    by_cell = {(r["attack"], tuple(map(str, r["defenses"])), r["seed"]): r for r in _rows(swept)}
    assert len(by_cell) == 6 and {r["batch_size"] for r in by_cell.values()} == {4}
    for seed in (0, 1):  # fc-leakage is exact on its first layer: a broken sweep (wrong scenario) fails this
        assert by_cell[("fc-leakage", (), seed)]["fraction_recovered"] == 1.0
        assert by_cell[("trap-weights", ("secure_aggregation",), seed)]["clients"] == 2


def test_incompatible_pair_is_skipped_with_its_reason(swept: Path) -> None:
    skipped = read_skipped(swept / "results.sqlite")
    assert [(s["attack"], s["defenses"], s["stage"]) for s in skipped] == [
        ("fc-leakage", ["secure_aggregation"], "check")] * 2
    assert all("needs capability observe_individual" in s["reason"] for s in skipped)


def test_markdown_table_has_medians_and_footnoted_reasons(cli, swept: Path) -> None:
    result = cli("matrix", *CLI_ARGS, "--out", str(swept), "--format", "md")  # nothing left: prints the table
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "| attack | threat model | batch | none | secure_aggregation |"
    fc = next(line for line in lines if line.startswith("| fc-leakage |"))
    assert fc == "| fc-leakage | honest-but-curious-server | 4 | 1.00 / 100.0 dB | skipped [1] |"
    trap = next(line for line in lines if line.startswith("| trap-weights |")).split(" | ")
    assert trap[1:3] == ["malicious-server", "4"] and all(" dB" in cell for cell in trap[3:])
    assert any(line.startswith("- [1] attack 'fc-leakage' needs capability observe_individual") for line in lines)
    medians = entries(collect(build_cells(SPEC), swept / "results.sqlite"))
    assert markdown(medians) == result.out


def test_json_lists_every_cell_and_reruns_nothing(cli, swept: Path) -> None:
    result = cli("matrix", *CLI_ARGS, "--out", str(swept), "--format", "json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["ran"], data["skipped"], data["failed"]) == (0, 0, 0)
    assert sorted(c["status"] for c in data["cells"]) == ["done"] * 6 + ["skipped"] * 2


def test_resume_runs_only_the_missing_cell(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(swept, out)
    db = out / "results.sqlite"
    victim = next(r for r in _rows(out) if r["attack"] == "trap-weights" and r["seed"] == 1)
    with sqlite3.connect(db) as conn:  # the row goes, its folder stays: what a kill between them leaves
        conn.execute("DELETE FROM runs WHERE cell_key = ?", (victim["cell_key"],))
    conn.close()
    (out / "runs" / ".partial-leftover-x").mkdir()  # a kill inside the atomic folder write
    result = run_matrix(SPEC, out)
    assert (result.ran, result.skipped, result.failures) == (1, 0, [])
    _assert_one_row_per_cell(out, _runnable_keys())
    again = next(r for r in _rows(out) if r["cell_key"] == victim["cell_key"])
    assert again["metrics"] == victim["metrics"]  # same seed, same numbers


def test_a_cell_stored_twice_keeps_one_row(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as conn:  # a database from before sweeps: no cell_key column
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, created TEXT NOT NULL, scenario TEXT NOT NULL, "
                     "attack TEXT NOT NULL, threat_model TEXT NOT NULL, dataset TEXT NOT NULL, model TEXT NOT NULL, "
                     "batch_size INTEGER NOT NULL, clients INTEGER NOT NULL, seed INTEGER NOT NULL, defenses TEXT "
                     "NOT NULL, psnr_mean REAL, ssim_mean REAL, fraction_recovered REAL, label_accuracy REAL, "
                     "runtime_s REAL NOT NULL, metrics TEXT NOT NULL, config TEXT NOT NULL, run_dir TEXT NOT NULL)")
        conn.execute("INSERT INTO runs VALUES ('old', 't', 's', 'dlg', 'hbc', 'natural', 'lenet', 1, 1, 0, '[]', "
                     "NULL, NULL, NULL, NULL, 1.0, '{}', '{}', '/x')")
    conn.close()
    row = {"run_id": "a", "created": "t", "scenario": "s", "attack": "dlg", "threat_model": "hbc", "dataset": "natural",
           "model": "lenet", "batch_size": 1, "clients": 1, "seed": 0, "defenses": [], "runtime_s": 1.0,
           "metrics": {}, "config": {}, "run_dir": "/a", "cell_key": "k1"}
    assert insert_run(db, row) is True
    assert insert_run(db, row | {"run_id": "b", "run_dir": "/b"}) is False  # a retried task: still one row
    assert insert_run(db, row | {"run_id": "c", "cell_key": None}) is True  # plain `gialab run` rows: no key
    assert [(r["run_id"], r["cell_key"]) for r in read_runs(db)] == [("old", None), ("a", "k1"), ("c", None)]
    with pytest.raises(sqlite3.IntegrityError):  # a run id clash is still an error, not silently dropped
        insert_run(db, row | {"cell_key": "k2"})


def test_kill_9_mid_sweep_then_rerun_finishes_with_one_row_per_cell(cli, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["matrix", "--attacks", "fc-leakage", "--defenses", "none", "--seeds", "3", "--out", str(out),
            "--format", "json"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "gialab.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db, deadline = out / "results.sqlite", time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if db.exists() and _count(db) >= 1:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed mid-way"
    assert 1 <= _count(db) < 3
    result = cli(*args)
    assert result.code == 0, result.err
    assert [c["status"] for c in json.loads(result.out)["cells"]] == ["done"] * 3
    spec = SweepSpec(attacks=("fc-leakage",), defenses=parse_defense_columns(["none"]), seeds=3)
    _assert_one_row_per_cell(out, {c.key for c in build_cells(spec)})


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0


@pytest.mark.parametrize(("args", "message"), [
    (["--attacks", "fc-leakage,nope"], "unknown attack 'nope'; valid: "),
    (["--defenses", "none,nodefense"], "unknown defense 'nodefense'; valid: "),
    (["--defenses", "secure_aggregation+median"], "are both aggregators"),
    (["--set", "seed=3"], "seed is a sweep axis; set it with --seeds"),
    (["--batch-sizes", "two"], "--batch-sizes takes whole numbers"),
    (["--profile", "slow"], "unknown profile 'slow'; valid: preset, demo, quick"),
    (["--set", "attack.iterations=3"], "attack 'fc-leakage' has no hyperparameter 'iterations'"),
    (["--format", "csv"], "unknown format 'csv'"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("matrix", "--out", str(tmp_path / "m"), *args)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("gialab: error: ") and message in result.err
    assert result.err.count("\n") == 1
    assert not (tmp_path / "m" / "results.sqlite").exists()  # refused before any cell ran


@pytest.mark.parametrize("args", [["--workers", "2"], ["--ray-address", "127.0.0.1:1"]])
def test_ray_options_without_ray_name_the_extra(
    cli, tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    result = cli("matrix", "--out", str(tmp_path / "m"), *args)
    assert result.code == 2 and result.err.count("\n") == 1
    assert "pip install 'gialab[ray]'" in result.err


def test_workers_below_one_are_refused() -> None:
    with pytest.raises(GialabError, match="--workers must be at least 1"):
        run_matrix(SPEC, Path("unused"), workers=0)


@needs_ray
def test_two_ray_workers_give_the_same_rows_as_one(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    result = run_matrix(SPEC, out, workers=2)
    assert (result.ran, result.skipped, result.failures) == (6, 2, [])
    assert len(result.peak_rss_mb) >= 2  # the cells ran in two worker processes, not here
    _assert_one_row_per_cell(out, _runnable_keys())
    local = {r["cell_key"]: r["metrics"] for r in _rows(swept)}
    assert {r["cell_key"]: r["metrics"] for r in _rows(out)} == local
    assert ([s["cell_key"] for s in read_skipped(out / "results.sqlite")]
            == [s["cell_key"] for s in read_skipped(swept / "results.sqlite")])


@needs_ray
def test_unreachable_ray_address_is_one_line(cli, tmp_path: Path) -> None:
    started = time.monotonic()
    result = cli("matrix", "--out", str(tmp_path / "m"), "--ray-address", "127.0.0.1:1")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in result.err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "m" / "results.sqlite").exists()  # refused before anything was written


def test_runner_check_refuses_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gialab.runner import check

    monkeypatch.chdir(tmp_path)
    assert check("fc-leakage", seed=3).seed == 3
    with pytest.raises(GialabError, match="needs capability observe_individual"):
        check("fc-leakage", defenses=["secure_aggregation"])
    assert list(tmp_path.iterdir()) == []  # no run folder, no database: nothing ran


def test_a_second_sweep_on_the_same_folder_is_refused(cli, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".matrix.lock", "w") as held:  # another sweep holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli("matrix", "--attacks", "fc-leakage", "--defenses", "none", "--out", str(out))
    assert result.code == 2 and result.err.count("\n") == 1
    assert "another gialab matrix is writing to" in result.err
    assert not (out / "results.sqlite").exists()


def test_a_cell_failing_with_a_bug_keeps_its_traceback_and_runs_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import gialab.matrix.sweep as sweep

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in an attack")

    spec = SweepSpec(attacks=("fc-leakage",), defenses=parse_defense_columns(["none"]))
    monkeypatch.setattr(sweep, "run", broken)
    result = run_matrix(spec, tmp_path / "m")
    assert result.ran == result.skipped == 0 and len(result.failures) == 1
    assert "RuntimeError: a bug in an attack" in result.failures[0][1]  # the traceback, for the user
    assert _rows(tmp_path / "m") == [] and read_skipped(tmp_path / "m" / "results.sqlite") == []
    monkeypatch.undo()
    again = run_matrix(spec, tmp_path / "m")  # not recorded, so the next run tries it again
    assert (again.ran, again.failures) == (1, [])
