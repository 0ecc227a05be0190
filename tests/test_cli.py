"""The command line and the Python API: outputs, run folders, database, determinism, bad input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gialab
from gialab.attacks import implemented
from gialab.models import build_model
from gialab.scenario import preset_names

SUMMARY_KEYS = {"scenario", "attack", "threat_model", "fl_setup", "defenses", "n_samples", "metrics",
                "runtime_s", "run_dir"}


def test_run_json_is_one_object_and_writes_a_run_folder(cli, out_dir: Path) -> None:
    result = cli("run", "fc-leakage", "--json", "--out", str(out_dir))
    assert result.code == 0, result.err
    summary = json.loads(result.out)  # exactly one JSON object, nothing else on stdout
    assert set(summary) == SUMMARY_KEYS
    for key in ("psnr_mean", "psnr_max", "ssim_mean", "fraction_recovered", "label_accuracy"):
        assert key in summary["metrics"]
    assert summary["metrics"]["lpips_mean"] is None  # no local weights: unavailable, not invented
    run_dir = Path(summary["run_dir"])
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.json", "grid.png", "report.html"}
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
    with sqlite3.connect(out_dir / "results.sqlite") as conn:
        rows = conn.execute("SELECT attack, run_dir, fraction_recovered FROM runs").fetchall()
    assert rows == [("fc-leakage", str(run_dir), 1.0)]


def test_run_table_output(cli, out_dir: Path) -> None:
    result = cli("run", "fc-leakage", "--out", str(out_dir), "--set", "seed=2")
    assert result.code == 0 and "psnr_mean" in result.out and "run folder:" in result.out


def test_same_seed_same_metrics(out_dir: Path) -> None:
    def metrics(seed: int) -> dict:
        return gialab.run("dlg", out=out_dir, seed=seed, attack__iterations=3).metrics
    first, again, other = metrics(5), metrics(5), metrics(6)
    assert first == again
    assert first != other


def test_python_api_mirrors_the_cli(out_dir: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = gialab.run("dlg", out=out_dir, set={"attack.iterations": 4},
                        progress=lambda done, total: seen.append((done, total)))
    assert result.reconstruction.images.shape == (1, 3, 32, 32)
    assert result.run_dir.is_dir() and result.metrics is result.summary["metrics"]
    assert seen[-1] == (4, 4)


def test_presets_and_catalog(cli) -> None:
    presets = cli("presets")
    assert presets.code == 0 and "dlg" in presets.out and "fc-leakage" in presets.out
    records = json.loads(cli("catalog", "--json").out)
    assert {r["name"] for r in records if r["implemented"]} == set(implemented()) >= {"dlg", "fc-leakage", "idlg"}
    assert sum(r["figure1"] for r in records) == 9  # eight systems; trap weights counted for images and text


def _weights(tmp_path: Path, *, nan: bool = False, wrong_shape: bool = False) -> Path:
    torch.manual_seed(0)
    state = build_model("lenet", (3, 32, 32), 10).state_dict()
    if nan:
        state["fc.weight"][0, 0] = float("nan")
    if wrong_shape:
        state["fc.weight"] = torch.zeros(10, 7)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    return path


# Defense settings no round of the scenario can satisfy: refused before the data is even loaded.
DEFENSE_SIZE_ERRORS = {
    "negative noise multiplier": (["idlg", "--set", "defenses=[{name: dp_local, noise_multiplier: -1}]"],
                                  "defense dp_local.noise_multiplier: Input should be greater than or equal to 0"),
    "secure aggregation threshold above the clients": (
        ["cocktail-party", "--set", "clients=4", "--set", "batch_size=1", "--set", "attack.batch_size=4",
         "--set", "defenses=[{name: secure_aggregation, threshold: 5}]"],
        "secure_aggregation threshold t=5 exceeds the n=4 clients of the round; use 3..4"),
    "secure aggregation with more dropouts than the threshold survives": (
        ["cocktail-party", "--set", "clients=4", "--set", "batch_size=1", "--set", "attack.batch_size=4",
         "--set", "defenses=[{name: secure_aggregation, threshold: 3, dropouts: 1, late_dropouts: 1}]"],
        "survives at most n - t = 1 dropouts of the n=4 clients, but dropouts + late_dropouts = 2"),
    "krum with more Byzantine clients than it tolerates": (
        ["fc-leakage", "--set", "clients=4", "--set", "defenses=[{name: krum, byzantine: 1}]"],
        "krum with byzantine f=1 needs n > 2f + 2, but the round has n=4 client updates; use at least 5"),
    "bulyan on a sampled round too small for f": (
        ["fc-leakage", "--set", "clients=8", "--set", "fl.clients_per_round=6",
         "--set", "defenses=[{name: bulyan, byzantine: 1}]"],
        "bulyan with byzantine f=1 needs n >= 4f + 3, but the round has n=6"),
    "trimmed mean trimming every update": (["fc-leakage", "--set", "clients=2",
                                            "--set", "defenses=[{name: trimmed_mean, byzantine: 1}]"],
                                           "trimmed_mean with byzantine f=1 needs n > 2f, but the round has n=2"),
    "distributed DP with one client per round": (["fc-leakage", "--set", "defenses=[dp_distributed]"],
                                                 "needs M >= 2 per round, got M=1"),
    "more clients per round than clients": (["fc-leakage", "--set", "fl.clients_per_round=3"],
                                            "fl.clients_per_round 3 exceeds the 1 clients; use at most 1"),
}

BAD_INPUTS = {
    "unknown preset": (["nope"], "unknown preset 'nope'; valid: "),
    "unknown attack": (["dlg", "--set", "attack.name=nope"], "unknown attack 'nope'; valid:"),
    "unknown model": (["dlg", "--set", "model=vgg"], "unknown model 'vgg'; valid:"),
    "unknown dataset": (["dlg", "--set", "dataset=mnist"], "unknown dataset 'mnist'; valid:"),
    "capability mismatch": (["dlg", "--set", "threat_model=malicious-client"], "needs capability observe_individual"),
    "model the attack cannot handle": (["fc-leakage", "--set", "model=lenet"], "first layer is fully connected"),
    "batch larger than client data": (["dlg", "--set", "batch_size=3", "--set", "examples_per_client=2"],
                                      "batch_size 3 is larger than each client's data (2 examples)"),
    "more clients than data": (["fc-leakage", "--set", "clients=5000"], "examples"),
    "rgap on a model with BatchNorm": (["rgap", "--set", "model=convnet"], "rgap cannot invert layer model.bn0"),
    "cocktail party without an FC first layer": (["cocktail-party", "--set", "model=convnet"],
                                                 "first layer is fully connected"),
    "gradinversion without BatchNorm": (["gradinversion", "--set", "model=lenet"], "needs BatchNorm layers"),
    "fedavg inversion without local hyperparameters": (["fedavg-inversion", "--set", "side_information=[labels]"],
                                                       "declare side_information: [local_hyperparameters]"),
    "gradient attack on FedAvg deltas": (["inverting-gradients", "--set", "fl.algorithm=fedavg"],
                                         "use fedavg-inversion for model deltas"),
    "unknown hyperparameter": (["dlg", "--set", "attack.steps=3"], "has no hyperparameter 'steps'"),
    "missing LPIPS weights": (["fc-leakage", "--set", "lpips_weights=/nope.pt"], "'/nope.pt' does not exist"),
    "missing dataset folder": (["dlg", "--set", "dataset=cifar10", "--set", "data_path=/nonexistent"], "/nonexistent"),
    **{f"defense: {case}": args_message for case, args_message in DEFENSE_SIZE_ERRORS.items()},
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, out_dir: Path, case: str) -> None:
    args, message = BAD_INPUTS[case]
    result = cli("run", *args, "--out", str(out_dir))
    assert result.code == 2
    assert result.err.count("\n") == 1 and message in result.err and "Traceback" not in result.err
    assert not out_dir.exists() or [p.name for p in out_dir.iterdir()] == []


@pytest.mark.parametrize("case", sorted(DEFENSE_SIZE_ERRORS))
def test_defense_settings_no_round_can_meet_are_refused_before_any_work(
    cli, out_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str,
) -> None:
    """Not after rounds of training: the runner refuses them before it loads the data."""
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the defense settings were checked")

    monkeypatch.setattr(gialab.runner, "load_dataset", no_data)
    args, message = DEFENSE_SIZE_ERRORS[case]
    result = cli("run", *args, "--out", str(out_dir))
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err
    assert not out_dir.exists()


def test_unreadable_dataset_folder(cli, tmp_path: Path) -> None:
    empty = tmp_path / "images"
    empty.mkdir()
    result = cli("run", "dlg", "--set", "dataset=image-folder", "--set", f"data_path={empty}",
                 "--out", str(tmp_path / "runs"))
    assert result.code == 2 and result.err.startswith("gialab: error:") and result.err.count("\n") == 1
    assert list((tmp_path / "runs").iterdir()) == []


def test_shape_mismatch_between_model_and_weights(cli, tmp_path: Path) -> None:
    path = _weights(tmp_path, wrong_shape=True)
    result = cli("run", "dlg", "--set", f"weights={path}", "--out", str(tmp_path / "runs"))
    assert result.code == 2 and "fc.weight" in result.err and "(10, 7)" in result.err


def test_nan_in_the_observation(cli, tmp_path: Path) -> None:
    path = _weights(tmp_path, nan=True)
    result = cli("run", "dlg", "--set", f"weights={path}", "--out", str(tmp_path / "runs"))
    assert result.code == 2 and "NaN or Inf" in result.err and result.err.count("\n") == 1
    assert list((tmp_path / "runs").iterdir()) == []


def test_unwritable_output_folder(cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("run", "fc-leakage", "--out", str(blocker / "runs"))
    assert result.code == 2 and "cannot write to output folder" in result.err


def test_failed_database_write_leaves_no_run_folder(out_dir: Path) -> None:
    out_dir.mkdir()
    (out_dir / "results.sqlite").write_text("this is not a database")
    with pytest.raises(gialab.GialabError, match="cannot write results database"):
        gialab.run("fc-leakage", out=out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.sqlite"]


def test_real_entry_point_exit_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "gialab.cli", "run", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"gialab: error: unknown preset 'nope'; valid: {', '.join(preset_names())}\n"
    assert proc.stdout == ""
