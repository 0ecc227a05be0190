"""Robust aggregation rules: exact on constructed cases, blind to Byzantine outliers, and refusing
rounds too small for the assumed number of Byzantine clients."""

from __future__ import annotations

import pytest
import torch

from gialab.defenses import build_defense
from gialab.defenses.robust_bulyan import bulyan_selection, closest_to_median_mean
from gialab.defenses.robust_coordinate import coordinate_median, trimmed_mean
from gialab.defenses.robust_fltrust import FLTrust, fltrust
from gialab.defenses.robust_krum import krum_scores, krum_select
from gialab.defenses.robust_norm import clip_rows
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate

SHAPES = ((3, 4), (4,))  # two tensors per update, as a Linear layer's weight and bias
MU = torch.linspace(-1.0, 1.0, 16)


def _updates(rows: torch.Tensor) -> list[ClientUpdate]:
    """One ClientUpdate per row, cut into SHAPES; example counts differ to show they are ignored."""
    out = []
    for i, row in enumerate(rows):
        weight, bias = row[:12].reshape(3, 4), row[12:]
        out.append(ClientUpdate(client_id=i, round=0, tensors=(weight, bias), num_examples=1 + 100 * i))
    return out


def _flat(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    assert tuple(t.shape for t in tensors) == SHAPES
    return torch.cat([t.reshape(-1) for t in tensors])


def _honest(n: int, noise: float, seed: int = 0) -> torch.Tensor:
    return MU + noise * torch.randn(n, MU.numel(), generator=torch.Generator().manual_seed(seed))


RULES = [  # name, parameters, n honest, f Byzantine (the smallest round each rule accepts)
    ("krum", {"byzantine": 2}, 5, 2),
    ("multikrum", {"byzantine": 2}, 5, 2),
    ("median", {"byzantine": 2}, 3, 2),
    ("trimmed_mean", {"byzantine": 2}, 3, 2),
    ("bulyan", {"byzantine": 2}, 9, 2),
]


@pytest.mark.parametrize(("name", "parameters", "honest", "f"), RULES)
def test_byzantine_outliers_do_not_move_the_aggregate(name: str, parameters: dict, honest: int, f: int) -> None:
    rows = torch.cat([_honest(honest, 0.01), torch.full((f, MU.numel()), 1e6), ])
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))]  # outliers anywhere
    result = _flat(build_defense(name, parameters)(_updates(rows), torch.Generator()))
    assert (result - MU).abs().max() < 0.05  # an outlier that got in would add >= 1e6 / n


@pytest.mark.parametrize(("name", "parameters", "honest", "f"), RULES)
def test_honest_rounds_give_the_mean(name: str, parameters: dict, honest: int, f: int) -> None:
    rows = _honest(honest + f, 1e-3, seed=2)
    result = _flat(build_defense(name, parameters)(_updates(rows), torch.Generator()))
    assert (result - rows.mean(0)).abs().max() < 5e-3  # honest spread is 1e-3 per coordinate


def test_krum_scores_and_selection_on_a_constructed_case() -> None:
    rows = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05], [100.0, 100.0]])
    # f = 1: each score sums the n - f - 2 = 3 smallest squared distances to other rows
    scores = krum_scores(rows, 1)
    assert scores[4] == pytest.approx(3 * 0.005)
    assert scores[0] == pytest.approx(0.005 + 0.01 + 0.01)
    assert krum_select(rows, 1) == 4
    multikrum = build_defense("multikrum", {"byzantine": 1, "select": 2})
    chosen = multikrum([ClientUpdate(i, 0, (r,), 1) for i, r in enumerate(rows)], torch.Generator())[0]
    assert torch.allclose(chosen, (rows[4] + rows[0]) / 2)  # rows 0..3 tie; the first wins


def test_coordinate_median_and_trimmed_mean_are_exact() -> None:
    rows = torch.tensor([[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 7.0], [-50.0, 1.0]])
    assert coordinate_median(rows).tolist() == [2.0, 1.0]
    assert torch.allclose(trimmed_mean(rows, 1), torch.tensor([2.0, 8.0 / 3]))
    assert torch.equal(trimmed_mean(rows, 0), rows.mean(0))
    assert coordinate_median(torch.tensor([[1.0], [4.0], [2.0], [3.0]])).tolist() == [2.5]  # even n: middle two


def test_bulyan_selects_by_repeated_krum_and_averages_around_the_median() -> None:
    rows = torch.cat([_honest(7, 0.01, seed=3), torch.full((1, MU.numel()), -1e6)])
    rows = torch.cat([rows, rows[:1] + 5.0])  # n = 9, f = 2: two outliers, the second subtle
    chosen = bulyan_selection(rows, 2)
    assert len(chosen) == 5 and 7 not in chosen and 8 not in chosen
    column = torch.tensor([[1.0], [2.0], [3.0], [10.0], [11.0]])
    assert closest_to_median_mean(column, 3).tolist() == [2.0]  # median 3; nearest 3, 2, 1


def test_norm_bound_clips_each_update_then_takes_the_unweighted_mean() -> None:
    rows = torch.stack([torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.tensor([0.0, -1e6])])
    assert torch.allclose(clip_rows(rows, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, -1.0]]))
    norm_bound = build_defense("norm_bound", {"bound": 1.0})
    result = norm_bound([ClientUpdate(i, 0, (r,), 10 ** i) for i, r in enumerate(rows)], torch.Generator())[0]
    assert torch.allclose(result, torch.tensor([0.9, 0.2]) / 3)


def test_norm_bound_limits_byzantine_influence_to_f_times_bound_over_n() -> None:
    honest = _honest(6, 0.01)
    bound = float(honest.norm(dim=1).max()) * 1.01  # honest updates pass unchanged
    rows = torch.cat([honest, torch.full((2, MU.numel()), 1e6)])
    result = _flat(build_defense("norm_bound", {"bound": bound})(_updates(rows), torch.Generator()))
    honest_part = honest.sum(0) / 8
    assert float((result - honest_part).norm()) <= 2 * bound / 8 + 1e-4
    assert float((result - honest_part).norm()) == pytest.approx(2 * bound / 8, rel=1e-4)


def test_fltrust_ignores_updates_that_oppose_the_root_and_equalizes_norms() -> None:
    root = torch.tensor([1.0, 0.0])
    rows = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1e6, 0.0], [1.0, 1.0]])
    # trust: 1, 0, 0, 1/sqrt(2); rescaled to norm 1: [1, 0], -, -, [1, 1]/sqrt(2)
    w = 2 ** -0.5
    expected = (torch.tensor([1.0, 0.0]) + w * torch.tensor([w, w])) / (1 + w)
    assert torch.allclose(fltrust(rows, root), expected)
    assert torch.equal(fltrust(rows[1:3], root), torch.zeros(2))  # no trusted update: the model stays


def test_fltrust_uses_the_root_client_or_a_root_hook_and_rejects_opposed_outliers() -> None:
    honest = _honest(5, 0.01)
    rows = torch.cat([MU.unsqueeze(0), honest, -1e6 * MU.unsqueeze(0).expand(2, -1)])  # client 0 is the root
    result = _flat(build_defense("fltrust", {})(_updates(rows), torch.Generator()))
    assert (result - MU).abs().max() < 0.05
    hooked = FLTrust(FLTrust.Params(), root_update=lambda updates: (MU[:12].reshape(3, 4), MU[12:]))
    assert torch.allclose(_flat(hooked(_updates(rows[1:]), torch.Generator())), result, atol=1e-6)
    with pytest.raises(GialabError, match="root_client 9 did not take part"):
        build_defense("fltrust", {"root_client": 9})(_updates(rows), torch.Generator())


@pytest.mark.parametrize(("name", "f", "n", "condition"), [
    ("krum", 1, 4, "n > 2f + 2"),
    ("multikrum", 2, 6, "n > 2f + 2"),
    ("median", 2, 4, "n > 2f"),
    ("trimmed_mean", 1, 2, "n > 2f"),
    ("bulyan", 1, 6, "n >= 4f + 3"),
])
def test_rounds_too_small_for_f_are_one_line_errors(name: str, f: int, n: int, condition: str) -> None:
    rule = build_defense(name, {"byzantine": f})
    with pytest.raises(GialabError) as info:
        rule(_updates(_honest(n, 0.01)), torch.Generator())
    message = str(info.value)
    assert f"byzantine f={f}" in message and f"n={n}" in message and condition in message and "\n" not in message
    rule(_updates(_honest(n + 1, 0.01)), torch.Generator())  # one more client is enough
    with pytest.raises(GialabError) as early:  # what the runner asks before the first round
        rule.check_round_size(n)
    assert str(early.value) == message
    rule.check_round_size(n + 1)


def test_the_cli_refuses_krum_with_too_many_byzantine_clients(cli, out_dir) -> None:
    result = cli("run", "fc-leakage", "--set", "clients=5", "--set", "defenses=[{name: krum, byzantine: 3}]",
                 "--out", str(out_dir))
    assert result.code == 2
    assert result.err.strip().count("\n") == 0
    assert "krum with byzantine f=3 needs n > 2f + 2, but the round has n=5" in result.err
    assert not out_dir.exists() or not any(out_dir.iterdir())
