"""CGI (Wei et al. 2023): does the poisoned update survive each robust rule, and how well does the
poisoned aggregate give back the target class at batch 8?

Usage: PYTHONPATH=src .venv/bin/python bench/cgi.py [--rules none krum ...] [--stealth 1 30] [--seeds 2]
       [--rounds 10] [--byzantine F] [--set key=value ...]

Runs the ``cgi`` preset (digits, DLG's LeNet pretrained 1000 steps, 8 clients of batch 8, client
7 malicious, FedSGD at server step 1) under each aggregation rule, at each eq. (18) radius
``attack.stealth`` (how far, in honest-update spreads, the crafted update may sit from the
estimated aggregate), and once without poisoning (``attack.poison=false``, the control: the same
inversion of an unpoisoned aggregate). ``--byzantine F`` sets the f each selection rule tolerates
(the rules' default is 1; FLTrust has none; Bulyan gets the largest f <= F with n >= 4f + 3, shown
in its row). Columns, medians over seeds:

* ``survival``: the share of rounds with a crafted update (the inverted round aside) in which the
  rule accepted it (server's log; ``robust_rule`` says what "accepted" means per rule); ``-`` for
  the plain mean, which accepts everything;
* ``poisoned``: rounds the client sent a crafted update (it stops once the model it receives gives
  its own target examples < ``poison_until`` probability);
* ``p(target)``: that probability on the model of the inverted round (low: the poisoning took);
* ``target_cos``: cosine between the inverted aggregate and the batch gradient of the target-class
  images behind it (truth side; 1: the aggregate is theirs alone);
* ``n_target``: target-class images behind the accepted aggregate (what is scored); ``iip_pixel``,
  ``psnr``: of those images; seconds per run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

import gialab
from gialab.scenario import parse_assignment

RULES = ("none", "krum", "multikrum", "median", "trimmed_mean", "fltrust", "bulyan")


def _run(overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = gialab.run("cgi", out=out, set=overrides | {"seed": seed})
        seconds = time.perf_counter() - started
    m, d = result.metrics, result.reconstruction.details
    return {"survival": m.get("poison_survival"), "poisoned": m.get("poison_rounds", 0),
            "p(target)": d["target_confidence"], "target_cos": m["target_cosine"], "n_target": m["n_truth"],
            "iip_pixel": m["iip_pixel"], "psnr": m["psnr_mean"], "s": seconds}


def _rule(rule: str, byzantine: int | None, clients: int) -> tuple[list[Any], str]:
    """The ``defenses`` entry for a rule and its row label."""
    if rule == "none":
        return [], rule
    if byzantine is None or rule == "fltrust":
        return [rule], rule
    f = min(byzantine, (clients - 3) // 4) if rule == "bulyan" else byzantine
    return [{"name": rule, "byzantine": f}], f"{rule} (f={f})"


def _median(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r[key] is not None]
    if not values:
        return "-"
    value = statistics.median(values)
    return f"{value:.0f}" if key in ("poisoned", "n_target") else f"{value:.3g}" if key != "s" else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--stealth", nargs="+", type=float, default=[1.0, 30.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--byzantine", type=int, default=None, help="f of every selection rule (default: theirs)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = dict(parse_assignment(s) for s in args.sets) | {"fl.rounds": args.rounds}
    keys = ("survival", "poisoned", "p(target)", "target_cos", "n_target", "iip_pixel", "psnr", "s")
    print("| rule | attack | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 2))
    clients = gialab.load_scenario("cgi", base).clients
    for rule in args.rules:
        defenses, name = _rule(rule, args.byzantine, clients)
        rule_set = {"defenses": defenses}
        views = [(f"stealth {s:g}", {"attack.stealth": s}) for s in args.stealth]
        views.append(("no poisoning (control)", {"attack.poison": False}))
        for label, view in views:
            rows = [_run(base | rule_set | view, seed) for seed in range(args.seeds)]
            print(f"| {name} | {label} | " + " | ".join(_median(rows, k) for k in keys) + " |", flush=True)


if __name__ == "__main__":
    main()
