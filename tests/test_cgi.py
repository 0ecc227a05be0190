"""CGI (Wei et al. 2023): the eq. (17)-(18) blend, the malicious client end to end (poisoning makes
the target class the aggregate, which then inverts; the crafted update's survival under robust
rules, read from the server's log), and the refusals it owes the user."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gialab
from gialab.attacks.client.stealthy_update import blend

# --- Eqs. (17)-(18): exact in closed form ----------------------------------------------------------


def _vectors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(50, generator=g, dtype=torch.float64)
    return u / u.norm(), torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radius_zero_is_the_eq18_minimizer(seed: int) -> None:
    u, b, a = _vectors(seed)
    mix = blend(u, b, a, 0.0)
    coef = torch.linalg.lstsq(torch.stack([u, b], dim=1), a.unsqueeze(1)).solution.flatten()
    assert mix.rho == pytest.approx(float(coef[0]), abs=1e-9)
    assert mix.beta == pytest.approx(float(coef[1]), abs=1e-9)
    assert mix.distance == pytest.approx(float((coef[0] * u + coef[1] * b - a).norm()), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_blend_pushes_furthest_along_the_poison_within_the_radius(seed: int) -> None:
    u, b, a = _vectors(seed)
    floor = blend(u, b, a, 0.0).distance
    radius = floor * 1.5
    mix = blend(u, b, a, radius)
    assert mix.distance == pytest.approx(radius, rel=1e-9)  # on the disk's rim
    best = mix.rho + mix.beta * float(b @ u)  # reach along u
    for rho, beta in torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9)):
        r, s = mix.rho + 0.5 * float(rho), mix.beta + 0.05 * float(beta)
        if float((r * u + s * b - a).norm()) <= radius:
            assert r + s * float(b @ u) <= best + 1e-9
    same = blend(u, a, a, 0.25)  # benign estimate = aggregate estimate: the benign update plus poison
    assert same.beta == pytest.approx(1.0) and same.rho == pytest.approx(0.25)


# --- End to end: the preset (digits, LeNet, 8 clients of batch 8, client 7 malicious) --------------


def test_poisoning_makes_the_target_class_the_aggregate_and_it_comes_back(out_dir: Path) -> None:
    result = gialab.run("cgi", out=out_dir)
    m, d = result.metrics, result.reconstruction.details
    assert d["target_confidence"] < 0.01  # measured 3e-5: the model gets the 0s wrong
    assert m["target_cosine"] >= 0.9  # measured 0.976: the aggregate is the 0s' batch gradient
    assert d["recovered_count"] == m["n_truth"]  # the count read off the bias gradient
    assert m["label_accuracy"] == 1.0
    assert m["iip_pixel"] >= 0.5  # measured 0.667 of 6 zeros among the round's 56 images
    # The control: the same inversion of the same round, without poisoning.
    control = gialab.run("cgi", out=out_dir, attack__poison=False)
    assert control.reconstruction.details["target_confidence"] > 0.5  # measured 0.965
    assert control.metrics["target_cosine"] < 0.5  # measured 0.133
    assert control.metrics["iip_pixel"] < m["iip_pixel"] and control.metrics["psnr_mean"] < m["psnr_mean"] - 3


QUICK = {"attack.iterations": 2}


def test_a_stealthy_update_survives_multikrum_and_a_blatant_one_does_not(out_dir: Path) -> None:
    stealthy = gialab.run("cgi", out=out_dir, set=QUICK | {"defenses": ["multikrum"], "attack.stealth": 1.0})
    assert stealthy.metrics["poison_rounds"] >= 5
    assert stealthy.metrics["poison_survival"] >= 0.9  # measured 1.0
    blatant = gialab.run("cgi", out=out_dir, set=QUICK | {"defenses": ["multikrum"], "attack.stealth": 30.0})
    assert blatant.metrics["poison_rounds"] >= 5
    assert blatant.metrics["poison_survival"] <= 0.1  # measured 0: the update furthest from the others
    plain = gialab.run("cgi", out=out_dir, set=QUICK)
    assert plain.metrics["poison_survival"] is None  # the mean says nothing about acceptance


# --- Refusals: one line, exit code 2, before the first round ---------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["attack.target_class=10"], "attack.target_class 10 is not a class of dataset 'digits'; valid: 0..9"),
    (["dataset=faces", "attack.target_class=2"], "attack.target_class 2 is not a class of dataset 'faces'; valid: 0..1"),
    (["malicious_clients=null"], "acts as a malicious client; set malicious_clients"),
    (["malicious_clients=8"], "malicious client 8 is not a client; valid ids: 0..7"),
    (["malicious_clients=[6,6]"], "malicious_clients lists a client twice"),
    (["threat_model=honest-but-curious-server"], "needs capability poison_own_update"),
    (["attack.stealth=-1"], "attack.stealth"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, out_dir: Path, overrides: list[str], message: str) -> None:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = cli("run", "cgi", *sets, "--out", str(out_dir))
    assert result.code == 2, result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_malicious_clients_on_a_server_side_attack_are_refused(cli, out_dir: Path) -> None:
    result = cli("run", "idlg", "--set", "malicious_clients=0", "--out", str(out_dir))
    assert result.code == 2 and "not a client-side attack" in result.err
    assert len(result.err.strip().splitlines()) == 1
