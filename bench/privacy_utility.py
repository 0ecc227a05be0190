"""Privacy-utility sweep (issue 5, point 8): each defense's strength against attack quality and FL accuracy.

For every defense family and strength, one Markdown table row and one point of a plot:

* privacy: an honest-but-curious attack (``--preset``, default iDLG on the DLG LeNet, batch 1,
  one client, FedSGD) run through ``gialab.run`` with the defense, over ``--seeds`` seeds: PSNR
  (median, range) and the fraction of images recovered (PSNR >= the scenario's 30 dB);
* utility: ``gialab.fl.utility.federated_accuracy``: the same model trained from scratch by FedAvg
  (``--clients`` clients holding the training part of the same data set, ``--rounds`` rounds) with
  the defense in place, scored on a held-out quarter no client holds, over ``--utility-seeds``;
* epsilon: for the DP rows, the (epsilon, 1e-5) the RDP accountant gives for the whole training
  (one participation per round), else for the attacked round alone.

The plot (``--plot``, PNG) puts attack PSNR against test accuracy, one curve per family from the
undefended point through increasing strength. Both sides use the same model, data set and
defense parameters; the attack sees a batch-1 FedSGD gradient (the leakiest honest setting), the
training sees FedAvg updates, so the plot is a worst case for privacy at an ordinary training.

Usage: .venv/bin/python bench/privacy_utility.py [--preset idlg] [--dataset digits] [--seeds 2]
       [--utility-seeds 2] [--only none,dp_local,...] [--clip 10] [--sigmas ...] [--ratios ...]
       [--levels ...] [--shares ...] [--rounds 20] [--no-utility] [--plot docs/privacy_utility.png]
Run folders go to a temporary directory. ``bench/defense_strength.py`` and ``bench/dp_strength.py``
call :func:`sweep` with their own grids (attack side only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import gialab
from gialab.attacks.registry import get_attack
from gialab.data import load_dataset
from gialab.fl.setup import FLSetup
from gialab.fl.utility import federated_accuracy
from gialab.scenario import load_scenario, parse_assignment

Setting = dict[str, Any] | None  # one defense as a scenario lists it; None: no defense
FAMILIES = ("none", "dp_local", "dp_sgd", "dp_distributed", "topk", "randomk", "qsgd", "sign", "prune")
DEFAULT_ONLY = ("none", "dp_local", "dp_sgd", "topk", "qsgd", "sign", "prune")
SHORT = {"noise_multiplier": "σ", "ratio": "k", "levels": "s", "share": "p"}  # plot labels


@dataclass(frozen=True)
class UtilityConfig:
    """The FL training whose held-out accuracy is the utility (same model and data as the attack)."""

    setup: FLSetup
    clients: int
    seeds: int
    test_fraction: float = 0.25


@dataclass
class Row:
    family: str
    setting: Setting
    psnr: list[float] = field(default_factory=list)
    recovered: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    epsilon: float | None = None
    attack_s: list[float] = field(default_factory=list)
    utility_s: list[float] = field(default_factory=list)

    @property
    def shown(self) -> str:
        if self.setting is None:
            return "-"
        return ", ".join(f"{k}={v}" for k, v in self.setting.items() if k != "name") or "default"


def grid(args: argparse.Namespace) -> dict[str, list[Setting]]:
    """Every family's settings, weakest first, from the command line's strength lists."""
    dp = {"clip": args.clip}
    return {
        "none": [None],
        "dp_local": [{"name": "dp_local", **dp, "noise_multiplier": s} for s in args.sigmas],
        "dp_sgd": [{"name": "dp_sgd", **dp, "noise_multiplier": s} for s in args.sgd_sigmas],
        "dp_distributed": [{"name": "dp_distributed", **dp, "noise_multiplier": s} for s in args.sigmas],
        "topk": [{"name": "topk", "ratio": r} for r in args.ratios],
        "randomk": [{"name": "randomk", "ratio": r} for r in args.ratios],
        "qsgd": [{"name": "qsgd", "levels": s} for s in args.levels],
        "sign": [{"name": "sign", "scaled": True}],
        "prune": [{"name": "prune", "share": p} for p in args.shares],
    }


def _first_epsilon(report: Mapping[str, Mapping[str, float | None]]) -> float | None:
    return next((r["epsilon"] for r in report.values()), None)


def measure(
    family: str, setting: Setting, preset: str, overrides: Mapping[str, Any], seeds: int, out: str,
    utility: UtilityConfig | None,
) -> Row:
    """One row: the attack over ``seeds`` seeds, then (unless ``utility`` is None) the FL accuracy."""
    row = Row(family, setting)
    defenses = [] if setting is None else [setting]
    for seed in range(seeds):
        started = time.perf_counter()
        result = gialab.run(preset, out=out, set=dict(overrides) | {"seed": seed, "defenses": defenses})
        row.attack_s.append(time.perf_counter() - started)
        row.psnr.append(result.metrics["psnr_mean"])
        row.recovered.append(result.metrics["fraction_recovered"])
        row.epsilon = _first_epsilon(result.summary.get("defense_report", {}))
    if utility is not None:
        scenario = load_scenario(preset, dict(overrides))
        for seed in range(utility.seeds):
            measured = federated_accuracy(
                scenario.model, scenario.dataset, defenses=defenses, setup=utility.setup, clients=utility.clients,
                test_fraction=utility.test_fraction, seed=seed,
            )
            row.accuracy.append(measured.accuracy)
            row.utility_s.append(measured.seconds)
            row.epsilon = _first_epsilon(measured.privacy)
    return row


def table_header(utility: UtilityConfig | None) -> str:
    epsilon = f"epsilon ({utility.setup.rounds} rounds)" if utility else "epsilon (1 round)"
    accuracy = "| test accuracy mean (min..max) " if utility else ""
    rule = "|---" * (8 if utility else 7) + "|"
    return (f"| defense | setting | {epsilon} | attack PSNR median (dB) | PSNR min..max | fraction recovered (mean) "
            f"{accuracy}| s per row |\n{rule}")


def table_row(row: Row, utility: UtilityConfig | None) -> str:
    dp = row.family.startswith("dp_")
    epsilon = "-" if not dp else ("inf" if row.epsilon is None else f"{row.epsilon:.3g}")
    accuracy = ""
    if utility is not None:
        accuracy = f"| {statistics.mean(row.accuracy):.3f} ({min(row.accuracy):.3f}..{max(row.accuracy):.3f}) "
    seconds = sum(row.attack_s) + sum(row.utility_s)
    return (f"| {row.family} | {row.shown} | {epsilon} | {statistics.median(row.psnr):.1f} | "
            f"{min(row.psnr):.1f}..{max(row.psnr):.1f} | {statistics.mean(row.recovered):.2f} {accuracy}| "
            f"{seconds:.0f} |")


def sweep(
    families: Mapping[str, Sequence[Setting]], *, preset: str, overrides: Mapping[str, Any], seeds: int,
    utility: UtilityConfig | None = None,
) -> list[Row]:
    """Measure every setting of every family, printing each table row as soon as it is done."""
    torch.set_num_threads(1)
    print(table_header(utility), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for family, settings in families.items():
            for setting in settings:
                rows.append(measure(family, setting, preset, overrides, seeds, out, utility))
                print(table_row(rows[-1], utility), flush=True)
    return rows


def _label(setting: Setting) -> str:
    if setting is None:
        return ""
    return ", ".join(f"{SHORT.get(k, k)}={v}" for k, v in setting.items()
                     if k not in ("name", "clip") and not isinstance(v, bool))


def plot(rows: Sequence[Row], path: Path, title: str, recovered_psnr: float, chance: float) -> None:
    """Attack PSNR against test accuracy; each family's curve starts at the undefended point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = next((r for r in rows if r.setting is None), None)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for index, family in enumerate(dict.fromkeys(r.family for r in rows if r.setting is not None)):
        points = ([baseline] if baseline else []) + [r for r in rows if r.family == family]
        xs = [statistics.mean(r.accuracy) for r in points]
        ys = [statistics.median(r.psnr) for r in points]
        (line,) = ax.plot(xs, ys, marker="o", label=family)
        for r, x, y in zip(points, xs, ys, strict=True):
            if r.setting is not None:
                ax.annotate(_label(r.setting), (x, y), textcoords="offset points", fontsize=7,
                            xytext=(4, 3 + 8 * (index % 4)), color=line.get_color())  # families apart
    if baseline:
        ax.plot([statistics.mean(baseline.accuracy)], [statistics.median(baseline.psnr)], marker="*",
                markersize=14, color="black", linestyle="none", label="no defense")
    ax.axhline(recovered_psnr, color="grey", linestyle="--", linewidth=0.8)
    ax.text(0.01, recovered_psnr + 1, f"recovered (PSNR >= {recovered_psnr:g} dB)", fontsize=7, color="grey",
            transform=ax.get_yaxis_transform())
    ax.axvline(chance, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("FL test accuracy (held out)  [utility: right is better]")
    ax.set_ylabel("attack PSNR, median over seeds (dB)  [privacy: lower is better]")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="idlg", help="honest-but-curious attack preset (batch 1)")
    parser.add_argument("--dataset", default="digits", help="data set of both the attack and the FL training")
    parser.add_argument("--seeds", type=int, default=2, help="attack seeds per setting")
    parser.add_argument("--iterations", type=int, default=50,
                        help="attack.iterations for attacks that iterate (iDLG converges in ~30 on digits)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="attack scenario override")
    parser.add_argument("--only", default=",".join(DEFAULT_ONLY), help=f"families, from {', '.join(FAMILIES)}")
    parser.add_argument("--clip", type=float, default=10.0, help="DP clipping norm C (noise std sigma*C)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0001, 0.001, 0.01, 0.1],
                        help="dp_local / dp_distributed noise multipliers")
    parser.add_argument("--sgd-sigmas", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0],
                        help="dp_sgd noise multipliers")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.01, 0.001], help="topk/randomk kept share")
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 4, 1], help="qsgd levels s (log2(s)+1 bits)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.5],
                        help="prune share (share p prunes what topk ratio 1 - p keeps)")
    parser.add_argument("--no-utility", action="store_true", help="attack side only")
    parser.add_argument("--utility-seeds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1.0, help="FedAvg local learning rate")
    parser.add_argument("--local-batch", type=int, default=16, help="FedAvg local mini-batch (1 epoch per round)")
    parser.add_argument("--plot", type=Path, default=Path("docs/privacy_utility.png"))
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {"dataset": args.dataset}
    scenario = load_scenario(args.preset, overrides)
    if "iterations" in get_attack(scenario.attack.name).Params.model_fields:
        overrides["attack.iterations"] = args.iterations
    overrides |= dict(parse_assignment(s) for s in args.overrides)
    scenario = load_scenario(args.preset, overrides)
    families = grid(args)
    unknown = [f for f in args.only.split(",") if f not in families]
    if unknown:
        parser.error(f"unknown families {unknown}; valid: {', '.join(FAMILIES)}")
    chosen = {f: families[f] for f in args.only.split(",")}
    utility = None if args.no_utility else UtilityConfig(
        FLSetup(algorithm="fedavg", rounds=args.rounds, learning_rate=args.lr, local_batch_size=args.local_batch),
        clients=args.clients, seeds=args.utility_seeds)

    shown = " ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"attack: preset {args.preset} ({shown}), seeds 0..{args.seeds - 1}; DP clip C={args.clip:g}, delta 1e-5; "
          "torch threads 1")
    if utility:
        print(f"utility: {scenario.model} on {scenario.dataset}, FedAvg, {args.clients} clients (IID, all per round), "
              f"{args.rounds} rounds of 1 local epoch, local batch {args.local_batch}, lr {args.lr:g}; held-out "
              f"{utility.test_fraction:g} of the data set, seeds 0..{args.utility_seeds - 1}")
    started = time.perf_counter()
    rows = sweep(chosen, preset=args.preset, overrides=overrides, seeds=args.seeds, utility=utility)
    print(f"total {time.perf_counter() - started:.0f} s")
    if utility and args.plot:
        title = (f"{scenario.attack.name} on {scenario.model}/{scenario.dataset}, batch 1, FedSGD ({args.seeds} seeds) "
                 f"vs FedAvg accuracy, {args.clients} clients x {args.rounds} rounds")
        classes = load_dataset(scenario.dataset, path=scenario.data_path, seed=0).spec.num_classes
        plot(rows, args.plot, title, scenario.recovered_psnr, chance=1 / classes)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
