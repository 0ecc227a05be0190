"""Gradient disaggregation at scale: users recovered exactly and wall time, by users and workers.

Usage:
    PYTHONPATH=src .venv/bin/python bench/disaggregation.py [--users 10 50 100 200] [--rounds-per-user 2]
        [--rate 0.1] [--window 10] [--workers 1 2] [--seed 0] [--time-limit 60] [--e2e 100]
        [--sampled 500 1000 --sample 10] [--milp-only]

Each user holds one digit (sklearn digits, 1x8x8) and sends its gradient on the DLG LeNet
(8,026 parameters), which the server never steps (the attack's "delay parameter updates"), so
every user's update is the same in every round: the aggregates of n rounds are exactly
G = P U / k, the example-weighted mean the protocol computes, in float32. This script computes the
u updates once, draws P as the protocol samples (k = rate x u users uniformly without replacement
each round), and times what the attack does with G and the analytics counts: SVD, one MILP per
user (eqs. 3-5, HiGHS; each tried first by the verified rounding of its box relaxation, which
``--milp-only`` turns off), least squares for U (``participation.recover_participation``). It skips
the FL simulation so large u stay affordable; ``--e2e U ...`` also times ``gialab run
disaggregation`` end to end (FL rounds with secure aggregation, the attack, iDLG, metrics) at
those sizes. ``exact`` is the share of users whose whole participation vector is right; the
victim's update error is ||u_0 - u_0*|| / ||u_0*||. Torch runs on 1 thread; the MILPs on ``workers``
processes (Ray when installed). ``attack CPU s`` is the attack's CPU time over all processes (each
MILP timed in the process that solved it): on a loaded machine, divide it by the workers for
about the wall time on idle cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import gialab
from gialab.attacks.decomposition.disaggregation import DisaggregationParams
from gialab.attacks.decomposition.participation import (
    UserProblem, eq3_tolerances, individual_updates, left_null_space, recover_participation, solve_user,
)
from gialab.data import load_dataset
from gialab.models import build_model


def user_updates(users: int, seed: int) -> np.ndarray:
    """Each user's gradient on its one digit under the fixed model, (u, d) float32."""
    torch.manual_seed(seed)
    data = load_dataset("digits", seed=seed)
    if users > len(data):
        raise SystemExit(f"at most {len(data)} users: each holds its own digit of the {len(data)} in sklearn's digits")
    model = build_model("lenet", data.spec.shape, data.spec.num_classes)
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:users]
    rows = []
    for i in picks.tolist():
        loss = F.cross_entropy(model(data.images[i : i + 1]), data.labels[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).numpy()


def sample_participation(users: int, rounds: int, per_round: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = np.zeros((rounds, users), dtype=np.int8)
    for t in range(rounds):
        matrix[t, rng.choice(users, per_round, replace=False)] = 1
    return matrix


def own_cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system.

    On a shared machine the wall time measures the other tenants as much as the attack; the CPU
    time does not, and CPU time / workers is about what the run would take on that many idle cores.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def one_size(users: int, args: argparse.Namespace, workers: int) -> dict[str, float]:
    rounds = round(args.rounds_per_user * users / args.window) * args.window
    per_round = max(2, round(args.rate * users))
    updates = user_updates(users, args.seed)
    truth = sample_participation(users, rounds, per_round, args.seed)
    mean = (truth.astype(np.float32) @ updates) / np.float32(per_round)  # the protocol's aggregate, float32
    aggregates = mean.astype(np.float64) * per_round  # the attack's sum (cohort size x mean)
    reports = rounds // args.window
    windows = np.kron(np.eye(reports), np.ones(args.window))
    counts = windows @ truth
    started, cpu_started = time.perf_counter(), own_cpu_seconds()
    defaults = DisaggregationParams()
    recovery = recover_participation(aggregates, windows, counts, tol_scale=defaults.tol_scale, rank_tol=defaults.rank_tol,
                                     time_limit=args.time_limit, workers=workers, relaxation=not args.milp_only)
    solved, recovered = individual_updates(aggregates, recovery)
    seconds = time.perf_counter() - started
    cpu = own_cpu_seconds() - cpu_started
    if workers > 1:  # the MILPs ran in other processes, which time themselves
        cpu += sum(s.cpu_seconds for s in recovery.solutions.values())
    exact = (recovery.matrix == truth).all(axis=0)
    victim = 0
    error = (float(np.linalg.norm(recovered[solved.index(victim)] - updates[victim]) / np.linalg.norm(updates[victim]))
             if victim in solved else float("nan"))
    timeouts = sum(s.status == "time limit" for s in recovery.solutions.values())
    relaxed = sum(s.method == "relaxation" for s in recovery.solutions.values())
    return {"users": users, "rounds": rounds, "per_round": per_round, "workers": workers, "exact": float(exact.mean()),
            "victim_error": error, "timeouts": timeouts, "seconds": seconds, "cpu": cpu, "relaxed": relaxed,
            "slowest": max(s.seconds for s in recovery.solutions.values())}


def sampled(users: int, args: argparse.Namespace) -> dict[str, float]:
    """Sizes too large to solve whole here: the SVD, then ``--sample`` random users' MILPs one by one.

    The attack's total is projected as SVD CPU + mean MILP CPU x users (the MILPs are independent,
    and least squares on P is negligible beside them); ``exact`` is over the sample only.
    """
    rounds = round(args.rounds_per_user * users / args.window) * args.window
    per_round = max(2, round(args.rate * users))
    updates = user_updates(users, args.seed)
    truth = sample_participation(users, rounds, per_round, args.seed)
    aggregates = ((truth.astype(np.float32) @ updates) / np.float32(per_round)).astype(np.float64) * per_round
    windows = np.kron(np.eye(rounds // args.window), np.ones(args.window))
    counts = windows @ truth
    defaults = DisaggregationParams()
    cpu_started = own_cpu_seconds()
    active = [k for k in range(users) if counts[:, k].sum() > 0]
    null, rank, singular = left_null_space(aggregates, len(active), defaults.rank_tol)
    null_t = np.ascontiguousarray(null.T)
    tols = eq3_tolerances(singular, rank, windows, counts, defaults.tol_scale)
    svd_cpu = own_cpu_seconds() - cpu_started
    picks = np.random.default_rng(args.seed).choice(active, size=min(args.sample, len(active)), replace=False)
    cpu, exact, timeouts, relaxed = [], [], 0, 0
    for k in picks:
        solution = solve_user(null_t, UserProblem(windows, counts[:, k], tols[k]), args.time_limit,
                              relaxation=not args.milp_only)
        cpu.append(solution.cpu_seconds)
        relaxed += solution.method == "relaxation"
        exact.append(solution.vector is not None and bool((solution.vector == truth[:, k]).all()))
        timeouts += solution.status == "time limit"
    return {"users": users, "rounds": rounds, "per_round": per_round, "sample": len(picks),
            "exact": float(np.mean(exact)), "timeouts": timeouts, "relaxed": relaxed, "svd_cpu": svd_cpu,
            "user_cpu": float(np.mean(cpu)), "user_cpu_max": float(np.max(cpu)),
            "projected": svd_cpu + float(np.mean(cpu)) * len(active)}


def end_to_end(users: int, args: argparse.Namespace, workers: int) -> dict[str, float]:
    rounds = round(args.rounds_per_user * users / args.window) * args.window
    per_round = max(2, round(args.rate * users))
    settings = {"clients": users, "fl.rounds": rounds, "fl.clients_per_round": per_round,
                "analytics_window": args.window, "attack.workers": workers, "attack.time_limit": args.time_limit,
                "attack.relaxation": not args.milp_only}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = gialab.run("disaggregation", out=out, seed=args.seed, set=settings)
    m = result.metrics
    return {"users": users, "rounds": rounds, "per_round": per_round, "workers": workers,
            "exact": m["participation_exact_fraction"], "victim_error": m["victim_update_relative_error"],
            "psnr": m["psnr_mean"], "seconds": time.perf_counter() - started,
            "attack": result.reconstruction.details["disaggregation_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--rounds-per-user", type=float, default=2.0, help="n / u (rounded to whole windows)")
    parser.add_argument("--rate", type=float, default=0.1, help="share of users sampled each round")
    parser.add_argument("--window", type=int, default=10, help="rounds per analytics report (eq. 5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per user's MILP")
    parser.add_argument("--e2e", type=int, nargs="*", default=[], help="also run gialab end to end at these sizes")
    parser.add_argument("--sampled", type=int, nargs="*", default=[],
                        help="sizes to project from --sample users' MILPs instead of solving every user")
    parser.add_argument("--sample", type=int, default=10, help="users solved per --sampled size")
    parser.add_argument("--milp-only", action="store_true",
                        help="every user by HiGHS, without first trying the relaxation (attack.relaxation=false)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"window {args.window} rounds, rate {args.rate}, n/u {args.rounds_per_user}, seed {args.seed}, "
          f"MILP time limit {args.time_limit:g} s, load average at start {load:.1f} on {os.cpu_count()} cores")
    print("| users u | rounds n | per round k | workers | exact users | victim update rel. error "
          "| by relaxation | MILP timeouts | slowest user s | attack wall s | attack CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for users in args.users:
        for workers in args.workers:
            r = one_size(users, args, workers)
            print(f"| {r['users']} | {r['rounds']} | {r['per_round']} | {r['workers']} | {r['exact']:.3f} | "
                  f"{r['victim_error']:.1e} | {r['relaxed']} | {r['timeouts']} | {r['slowest']:.1f} | "
                  f"{r['seconds']:.1f} | {r['cpu']:.1f} |",
                  flush=True)
    if args.sampled:
        print(f"\nProjected from {args.sample} random users solved one by one (1 process; exact is over the sample):\n")
        print("| users u | rounds n | per round k | users sampled | exact (sample) | by relaxation | MILP timeouts "
              "| SVD CPU s | user CPU s mean / max | projected attack CPU s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for users in args.sampled:
            r = sampled(users, args)
            print(f"| {r['users']} | {r['rounds']} | {r['per_round']} | {r['sample']} | {r['exact']:.2f} | "
                  f"{r['relaxed']} | {r['timeouts']} | {r['svd_cpu']:.0f} | {r['user_cpu']:.1f} / {r['user_cpu_max']:.1f} | "
                  f"{r['projected']:.0f} |", flush=True)
    if args.e2e:
        print("\nEnd to end (`gialab run disaggregation`, secure aggregation, iDLG on the victim's update):\n")
        print("| users u | rounds n | per round k | workers | exact users | victim update rel. error | PSNR dB "
              "| disaggregation s | run wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for users in args.e2e:
            for workers in args.workers:
                r = end_to_end(users, args, workers)
                print(f"| {r['users']} | {r['rounds']} | {r['per_round']} | {r['workers']} | {r['exact']:.3f} | "
                      f"{r['victim_error']:.1e} | {r['psnr']:.1f} | {r['attack']:.1f} | {r['seconds']:.1f} |",
                      flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
