"""Scenario resolution: presets, YAML files, dotted overrides, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gialab.errors import GialabError
from gialab.scenario import load_scenario, parse_assignment, preset_names, presets


def test_presets_are_listed_with_descriptions() -> None:
    assert {"dlg", "fc-leakage"} <= set(preset_names())
    assert all(presets().values())


def test_overrides_are_typed_and_dotted() -> None:
    s = load_scenario("dlg", ["seed=4", "batch_size=1", "attack.iterations=7", "fl.algorithm=fedavg",
                              "clients=3", "model=convnet", "dataset=digits"])
    assert (s.seed, s.clients, s.model, s.dataset, s.fl.algorithm) == (4, 3, "convnet", "digits", "fedavg")
    assert s.attack.hyperparameters["iterations"] == 7
    assert s.name == "dlg"


def test_yaml_file_scenario(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("attack: fc-leakage\nmodel: fcnet\nbatch_size: 2\n")
    s = load_scenario(path)
    assert s.name == "mine" and s.attack.name == "fc-leakage" and s.batch_size == 2


def test_list_values_parse_as_yaml() -> None:
    assert parse_assignment("defenses=[dp,secure_aggregation]") == ("defenses", ["dp", "secure_aggregation"])


@pytest.mark.parametrize(
    ("source", "overrides", "message"),
    [
        ("nope", [], "unknown preset 'nope'; valid: "),
        ("dlg", ["bogus=1"], "unknown setting 'bogus'; valid: "),
        ("dlg", ["seed"], "--set expects key=value"),
        ("dlg", ["batch_size=-1"], "batch_size: Input should be greater than 0"),
        ("dlg", ["fl.algorithm=fedprox"], "fl.algorithm: Input should be 'fedsgd' or 'fedavg'"),
        ("dlg", ["seed.x=1"], "has no sub-keys"),
        ("missing.yaml", [], "scenario file not found"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(source: str, overrides: list[str], message: str) -> None:
    with pytest.raises(GialabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_scenario(source, overrides)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("attack: [unclosed\n")
    with pytest.raises(GialabError, match="is not valid YAML") as info:
        load_scenario(path)
    assert "\n" not in str(info.value)
