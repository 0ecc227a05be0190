"""Defenses are configured by name or by name plus parameters, in order, and refused with one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gialab.defenses import DefenseParams, WeightedMean, register_defense, resolve_defenses
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate
from gialab.scenario import load_scenario


class _ScaleParams(DefenseParams):
    factor: float = 2.0


@register_defense
class _Scale:
    """A client-side transform used only by these tests."""

    name = "test-scale"
    Params = _ScaleParams

    def __init__(self, params: _ScaleParams) -> None:
        self.params = params

    def __call__(self, update: ClientUpdate, generator: torch.Generator) -> ClientUpdate:
        return dataclasses.replace(update, tensors=tuple(t * self.params.factor for t in update.tensors))


def test_names_and_mappings_build_the_stack_in_order() -> None:
    stack = resolve_defenses([{"name": "test-scale", "factor": 3.0}, "mean"])
    assert [t.params.factor for t in stack.transforms] == [3.0]
    assert isinstance(stack.aggregator, WeightedMean) and not stack.aggregate_only


def test_no_aggregator_means_the_weighted_mean() -> None:
    assert isinstance(resolve_defenses([]).aggregator, WeightedMean)


@pytest.mark.parametrize(("configs", "message"), [
    (["no-such-defense"], "unknown defense 'no-such-defense'"),
    ([{"name": "test-scale", "factr": 1.0}], "has no parameter 'factr'; valid: factor"),
    ([{"name": "test-scale", "factor": "big"}], "defense test-scale.factor"),
    (["mean", "mean"], "both aggregators"),
    (["mean", "test-scale"], "list client-side transforms first"),
])
def test_bad_defense_configs_are_one_line_errors(configs: list, message: str) -> None:
    with pytest.raises(GialabError, match=message) as info:
        resolve_defenses(configs)
    assert "\n" not in str(info.value)


def test_scenario_accepts_both_forms_and_shows_them_compactly() -> None:
    scen = load_scenario("dlg", ["defenses=[mean, {name: test-scale, factor: 0.5}]"])
    assert [d.compact() for d in scen.defenses] == ["mean", {"name": "test-scale", "factor": 0.5}]


def test_the_cli_refuses_an_unknown_defense_with_exit_code_2(cli, out_dir) -> None:
    result = cli("run", "fc-leakage", "--set", "defenses=[nope]", "--out", str(out_dir))
    assert result.code == 2 and "unknown defense 'nope'" in result.err


def test_the_run_json_lists_the_defenses_with_their_parameters(cli, out_dir) -> None:
    import json

    result = cli("run", "fc-leakage", "--set", "defenses=[{name: test-scale, factor: 1.0}, mean]", "--json",
                 "--out", str(out_dir))
    assert result.code == 0, result.err
    assert json.loads(result.out)["defenses"] == [{"name": "test-scale", "factor": 1.0}, "mean"]
