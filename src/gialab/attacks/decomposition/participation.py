"""The participant matrix from aggregates: survey eqs. 3-5 as one small MILP per user (Lam et al. 2021).

Paper: Lam, Wei, Brooks, Reddi, Mitzenmacher 2021, "Gradient Disaggregation: Breaking Privacy in
Federated Learning by Reconstructing the User Participant Matrix" (ICML); survey section 3.1,
"Analytical Decomposition", eqs. 3-5.

With the users' updates held fixed over the n observed rounds, the summed aggregates factor as
G = P U (G: n x d, P: n x u in {0,1}, U: u x d). When U has full row rank, G's column space is P's,
so every user's column p_k of P is a binary vector orthogonal to G's left null space:

* eq. 3, ``Nul(G^T)^T p_k = 0``: we take N from G's SVD (the left singular vectors past the
  numerical rank) and ask ``|N^T p_k| <= tol_k`` entry-wise, since G is only known to float
  precision (an exact equality on floating-point coefficients would reject the true p_k). The
  tolerance follows the noise: rounding tilts the computed null space by about
  sin(theta) <= s_{r+1} / s_r (Wedin's bound, G's singular values past and at its rank r), so the
  true p_k's residual is at most about that times ||p_k|| = sqrt(its count); ``tol_k`` is
  ``tol_scale`` times this bound. The tolerance should be no looser than that: every unit of
  slack lets more fractional points through the LP relaxation, and HiGHS branches longer;
* eq. 4, ``p_k in {0,1}^n``: the MILP's integrality;
* eq. 5, ``C_k p_k = c_k``: device analytics' counts, one equality per reported window.

Each user's problem is independent (the paper's point that the attack parallelizes), so they run
in a process pool, on Ray when it is installed. Two exact reductions shrink each problem first: a
window whose count is 0 (or its full length) fixes all its rounds to 0 (or 1), and those fixed
entries move into the bounds of eq. 3. ``scipy.optimize.milp`` (HiGHS) then looks for any
feasible point: the objective is 0, so the first integral point found is the answer.

Before the MILP (``relaxation=True``, the default) each user gets a cheaper try: ADMM on the box
relaxation of eqs. 3 and 5 (:mod:`.relaxation`), rounded, and kept only if the rounded vector
meets eqs. 3-5 exactly as the MILP states them (``satisfies``). With n = 2u rounds the relaxation
pins the answer: the affine set has about 0.13u dimensions left in some 1.3u free entries, and a
set that small meets the box only in the one corner. HiGHS spends two minutes per user at
u = 1000 reaching that corner by dual simplex; ADMM reaches it in 10-20 steps, under a second
(BENCHMARKS.md). A user whose rounding fails the check goes to HiGHS as before, so the answers
are the MILP's answers, only sooner.

Identifiability. The factorization is unique only if P has full column rank u (so n >= u) and
eq. 3 constrains anything (n > u: G's left null space is non-trivial); enough count windows then
leave one binary vector per user. ``unique_check`` asks HiGHS whether a second solution exists
(the first one cut off by a no-good constraint), which tells the attacker whether its answer is
certain without any ground truth.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from gialab.attacks.decomposition.relaxation import relaxed_binary_point

MIN_TOL = 1e-12  # eq. 3's tolerance when G is exact to double precision (no rounding to follow)
EQ3_BOUND = 1e-2  # eq. 3's rows as HiGHS sees them: |(N^T p)_i| / tol_k * EQ3_BOUND <= EQ3_BOUND


@dataclass(frozen=True)
class UserProblem:
    """Everything one user's MILP needs besides the shared null space: eq. 5's windows and counts."""

    windows: np.ndarray  # (w, n) 0/1 rows of C_k, the rounds each analytics report covers
    counts: np.ndarray  # (w,) c_k, how many of those rounds the user took part in
    tol: float  # eq. 3's allowed residual per null-space direction


@dataclass(frozen=True)
class UserSolution:
    """A user's recovered participation vector, or ``None`` when HiGHS found none in time."""

    vector: np.ndarray | None
    status: str  # "solved", "infeasible", "time limit"
    seconds: float
    cpu_seconds: float  # the solving process's CPU time (its wall time also counts waiting for a core)
    method: str = "milp"  # "relaxation" when the rounded box relaxation already met eqs. 3-5


def left_null_space(aggregates: np.ndarray, users: int, rank_tol: float) -> tuple[np.ndarray, int, np.ndarray]:
    """An orthonormal basis of Nul(G^T) (n x (n - rank)), the rank used, and G's singular values.

    G's columns are scaled to unit norm first. That leaves its column space alone (G D spans what
    G spans for any invertible diagonal D) but stops the parameters with the largest gradients from
    drowning the rest: the float32 rounding of the aggregates is relative per entry, the users'
    updates far from orthogonal, and for 500 LeNet users the scaling lifts G's u-th singular value
    from 3e-6 to 3e-5 of the largest over a rounding floor near 5e-9, cutting the true p_k's
    residual in eq. 3 about tenfold.

    The rank is the number of users who took part (G = P U has rank u when their updates are
    independent), or more when more singular values exceed ``rank_tol`` times the largest. Erring
    high only drops null-space directions (fewer constraints); erring low would turn a weak signal
    direction into a constraint the true p_k violates.
    """
    norms = np.linalg.norm(aggregates, axis=0)
    scaled = aggregates[:, norms > 0] / norms[norms > 0]
    rounds, dims = scaled.shape
    left, singular, _ = np.linalg.svd(scaled, full_matrices=dims < rounds)
    singular = np.concatenate([singular, np.zeros(rounds - len(singular))])
    numerical = int((singular > rank_tol * singular[0]).sum()) if singular.size and singular[0] > 0 else 0
    rank = min(max(users, numerical), rounds)
    return left[:, rank:], rank, singular


@dataclass(frozen=True)
class _Reduced:
    """A user's problem after the exact reductions: which rounds are free, which the counts fix to 1,
    eq. 3's offset from those, and eq. 5's rows and counts on the free rounds."""

    free: np.ndarray  # (n,) bool
    ones: np.ndarray  # (n,) bool
    offset: np.ndarray  # (n - rank,) N^T restricted to the rounds fixed to 1, summed
    rows: np.ndarray  # (w', free) eq. 5 rows still touching a free round
    target: np.ndarray  # (w',) their counts less the fixed ones

    def assemble(self, free_values: np.ndarray) -> np.ndarray:
        vector = self.ones.astype(np.int8)
        vector[self.free] = np.rint(free_values).astype(np.int8)
        return vector


def _reduce(null_t: np.ndarray, problem: UserProblem) -> _Reduced:
    fixed = np.full(null_t.shape[1], -1.0)  # -1: free, else the value the counts force
    for row, count in zip(problem.windows, problem.counts, strict=True):
        covered = row > 0
        if count == 0:
            fixed[covered] = 0.0
        elif count == covered.sum():
            fixed[covered] = 1.0
    free, ones = fixed < 0, fixed == 1
    partial = [(row[free], count - row[ones].sum()) for row, count in zip(problem.windows, problem.counts, strict=True)]
    partial = [(row, c) for row, c in partial if row.any()]
    rows = np.stack([r for r, _ in partial]) if partial else np.zeros((0, int(free.sum())))
    target = np.array([c for _, c in partial], dtype=float)
    return _Reduced(free, ones, null_t[:, ones].sum(axis=1), rows, target)


def satisfies(null_t: np.ndarray, problem: UserProblem, vector: np.ndarray) -> bool:
    """Whether a 0/1 vector meets eqs. 3-5: every null-space residual within ``tol``, every count exact."""
    within = bool(np.all(np.abs(null_t @ vector) <= problem.tol))
    return within and bool(np.array_equal(problem.windows @ vector, problem.counts))


def solve_user(null_t: np.ndarray, problem: UserProblem, time_limit: float,
               exclude: np.ndarray | None = None, relaxation: bool = True) -> UserSolution:
    """Eqs. 3-5 for one user; ``exclude`` cuts off one binary vector (the uniqueness check, which only
    the MILP can answer, so it skips the relaxation)."""
    import time

    started, cpu_started = time.perf_counter(), time.process_time()
    tol = problem.tol
    reduced = _reduce(null_t, problem)
    free, ones, offset = reduced.free, reduced.ones, reduced.offset
    if not free.any():
        vector = ones.astype(np.int8)
        ok = satisfies(null_t, problem, vector) and exclude is None
        return UserSolution(vector if ok else None, "solved" if ok else "infeasible", time.perf_counter() - started,
                            time.process_time() - cpu_started)
    if relaxation and exclude is None:
        found = relaxed_binary_point(np.vstack([null_t[:, free], reduced.rows]),
                                     np.concatenate([-offset, reduced.target]),
                                     lambda x: satisfies(null_t, problem, reduced.assemble(x)))
        if found is not None:
            return UserSolution(reduced.assemble(found), "solved", time.perf_counter() - started,
                                time.process_time() - cpu_started, "relaxation")
    # HiGHS judges feasibility to an absolute 1e-6 or so on each row, as much as or more than eq. 3's
    # whole tolerance: scaled so that the tolerance reads EQ3_BOUND, the rows mean what they say.
    scale = EQ3_BOUND / tol
    constraints = [LinearConstraint(scale * null_t[:, free], scale * (-tol - offset), scale * (tol - offset))]
    if len(reduced.rows):
        constraints.append(LinearConstraint(reduced.rows, reduced.target, reduced.target))
    if exclude is not None:  # no-good cut: sum_{x_i=0} p_i + sum_{x_i=1} (1 - p_i) >= 1, on the free entries
        previous = exclude[free]
        constraints.append(LinearConstraint(np.where(previous > 0.5, -1.0, 1.0)[None, :], 1 - previous.sum(), np.inf))
    result = milp(np.zeros(int(free.sum())), constraints=constraints, integrality=np.ones(int(free.sum())),
                  bounds=Bounds(0, 1), options={"time_limit": time_limit})
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if result.x is None:
        return UserSolution(None, "time limit" if result.status == 1 else "infeasible", seconds, cpu)
    return UserSolution(reduced.assemble(result.x), "solved", seconds, cpu)


def eq3_tolerances(singular: np.ndarray, rank: int, windows: np.ndarray, counts: np.ndarray,
                   tol_scale: float) -> np.ndarray:
    """Each user's ``tol_k``: ``tol_scale`` (s_{r+1} / s_r) ||p_k||, the rounding bound of the module docstring.

    ||p_k||^2 is the user's count over the reported rounds, plus every unreported round (which it
    may have joined). Measured, the true p_k's largest residual is 1% (50-500 LeNet users) to 12%
    (12 users with random updates) of the bound: the default share of 1 keeps every true vector
    feasible, where 0.05 had cut off a quarter of those 12 users.
    """
    tilt = float(singular[rank] / singular[rank - 1]) if 0 < rank < len(singular) and singular[rank - 1] > 0 else 0.0
    unreported = float((~windows.any(axis=0)).sum()) if len(windows) else float(len(singular))
    return np.maximum(tol_scale * tilt * np.sqrt(counts.sum(axis=0) + unreported), MIN_TOL)


@dataclass(frozen=True)
class ParticipationRecovery:
    """Every user's solution (columns of P, zero where none was found) and what the SVD showed."""

    matrix: np.ndarray  # (n, u) int8
    solutions: dict[int, UserSolution]  # users with a count > 0; the others never took part
    rank: int
    singular: np.ndarray
    null_t: np.ndarray  # N^T, (n - rank) x n
    problems: dict[int, UserProblem]  # what each solution answers, for a second look (the uniqueness check)

    @property
    def solved(self) -> list[int]:
        return [k for k, s in self.solutions.items() if s.vector is not None]


def recover_participation(aggregates: np.ndarray, windows: np.ndarray, counts: np.ndarray, *, tol_scale: float,
                          rank_tol: float, time_limit: float, workers: int,
                          relaxation: bool = True) -> ParticipationRecovery:
    """Eqs. 3-5 for every user: ``aggregates`` G (n x d, summed), ``windows`` C (w x n), ``counts`` (w x u).

    A user whose counts are all zero never took part in a reported window: its column is zero
    and it needs no MILP.
    """
    active = [k for k in range(counts.shape[1]) if counts[:, k].sum() > 0]
    null, rank, singular = left_null_space(aggregates, len(active), rank_tol)
    null_t = np.ascontiguousarray(null.T)
    tols = eq3_tolerances(singular, rank, windows, counts, tol_scale)
    problems = [UserProblem(windows, counts[:, k], tols[k]) for k in active]
    solutions = solve_users(null_t, problems, time_limit=time_limit, workers=workers, relaxation=relaxation)
    matrix = np.zeros((aggregates.shape[0], counts.shape[1]), dtype=np.int8)
    for k, solution in zip(active, solutions, strict=True):
        if solution.vector is not None:
            matrix[:, k] = solution.vector
    return ParticipationRecovery(matrix, dict(zip(active, solutions, strict=True)), rank, singular, null_t,
                                 dict(zip(active, problems, strict=True)))


def individual_updates(aggregates: np.ndarray, recovery: ParticipationRecovery) -> tuple[list[int], np.ndarray]:
    """U = argmin ||P U - G|| over the solved users: their ids and their updates' rows."""
    solved = recovery.solved
    updates, *_ = np.linalg.lstsq(recovery.matrix[:, solved].astype(float), aggregates, rcond=None)
    return solved, updates


# Process-pool workers get the shared null space once, through the initializer.
_SHARED: dict[str, object] = {}


def _init_worker(null_t: np.ndarray, time_limit: float, relaxation: bool) -> None:
    _SHARED.update(null_t=null_t, time_limit=time_limit, relaxation=relaxation)


def _solve_shared(problem: UserProblem) -> UserSolution:
    return solve_user(_SHARED["null_t"], problem, _SHARED["time_limit"],  # type: ignore[arg-type]
                      relaxation=bool(_SHARED["relaxation"]))


def solve_users(null_t: np.ndarray, problems: Sequence[UserProblem], *, time_limit: float,
                workers: int, relaxation: bool = True) -> list[UserSolution]:
    """Every user's solution (relaxation, else MILP), in order; ``workers`` > 1 runs them as Ray
    tasks if Ray is installed, else in a pool of forked processes."""
    if workers <= 1 or len(problems) <= 1:
        return [solve_user(null_t, p, time_limit, relaxation=relaxation) for p in problems]
    if importlib.util.find_spec("ray") is not None:
        return _solve_on_ray(null_t, problems, time_limit=time_limit, workers=workers, relaxation=relaxation)
    # fork: a spawned child would import gialab, hence torch, before its first MILP (seconds each);
    # a forked one starts at once and runs only numpy, scipy and HiGHS, never the parent's torch threads.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"),
                             initializer=_init_worker, initargs=(null_t, time_limit, relaxation)) as pool:
        chunk = max(1, len(problems) // (4 * workers))
        return list(pool.map(_solve_shared, problems, chunksize=chunk))


def _user_task(null_t: np.ndarray, windows: np.ndarray, counts: np.ndarray, tol: float,
               time_limit: float, relaxation: bool) -> tuple[np.ndarray | None, str, float, float, str]:
    solution = solve_user(null_t, UserProblem(windows, counts, tol), time_limit, relaxation=relaxation)
    return solution.vector, solution.status, solution.seconds, solution.cpu_seconds, solution.method


def _solve_on_ray(null_t: np.ndarray, problems: Sequence[UserProblem], *, time_limit: float,
                  workers: int, relaxation: bool) -> list[UserSolution]:
    """One Ray task per user. This module and the relaxation's travel by value, so a Ray worker
    imports only numpy and scipy: importing gialab would import torch first, which costs a fresh
    worker seconds to minutes on a loaded machine, more than a user's MILP."""
    import ray.cloudpickle

    from gialab.attacks.decomposition import relaxation as relaxation_module
    from gialab.integrations.ray_cluster import ray_session  # the matrix's Ray start-up, reused

    modules = (sys.modules[__name__], relaxation_module)
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        with ray_session(workers) as session:
            task = session.remote(num_cpus=1)(_user_task)
            shared = session.put(null_t)  # sent to each worker once, not once per user
            done = session.get([task.remote(shared, p.windows, p.counts, p.tol, time_limit, relaxation)
                                for p in problems])
    finally:
        for module in modules:
            ray.cloudpickle.unregister_pickle_by_value(module)
    return [UserSolution(*result) for result in done]
