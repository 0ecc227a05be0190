"""Splitting a dataset's examples among federated clients.

The attacker sees one client's update, so what that client holds matters: IID shards give
mixed-label batches, while Dirichlet (label-skewed) shards give batches dominated by a few
classes, which changes how well label inference and batch disaggregation work.
"""

from __future__ import annotations

import numpy as np

from gialab.errors import GialabError


def _check_sizes(n_examples: int, num_clients: int, per_client: int) -> None:
    for what, value in (("num_clients", num_clients), ("per_client", per_client)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise GialabError(f"{what} must be a positive integer, got {value!r}")
    wanted = num_clients * per_client
    if wanted > n_examples:
        raise GialabError(
            f"dataset has {n_examples} examples but {num_clients} clients x {per_client} "
            f"per client asks for {wanted}"
        )


def partition_iid(
    n_examples: int, num_clients: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Disjoint uniformly random index sets, ``per_client`` each (the benign baseline)."""
    _check_sizes(n_examples, num_clients, per_client)
    chosen = rng.permutation(n_examples)[: num_clients * per_client]
    return [np.sort(part).astype(np.int64) for part in np.split(chosen, num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    per_client: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Disjoint index sets whose class mix follows Dirichlet(alpha) per client.

    Small ``alpha`` concentrates each client on few classes; large ``alpha`` approaches IID.
    Every client gets exactly ``per_client`` examples: when a class it wants is used up, the
    shortfall is redrawn from its preferences over the classes that still have examples, and
    from whatever remains if it prefers none of those.
    """
    labels = np.asarray(labels).reshape(-1)
    _check_sizes(len(labels), num_clients, per_client)
    try:
        concentration = float(alpha)
    except (TypeError, ValueError):
        concentration = float("nan")
    if not np.isfinite(concentration) or concentration <= 0:
        raise GialabError(f"Dirichlet alpha must be a positive finite number, got {alpha!r}")
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    taken = np.zeros(len(classes), dtype=np.int64)
    sizes = np.array([len(p) for p in pools], dtype=np.int64)

    parts = []
    for _ in range(num_clients):
        prefs = rng.dirichlet(np.full(len(classes), concentration))
        if not np.all(np.isfinite(prefs)) or prefs.sum() <= 0:  # underflow at tiny alpha
            prefs = np.eye(len(classes))[rng.integers(len(classes))]
        picked: list[np.ndarray] = []
        need = per_client
        while need > 0:
            left = sizes - taken
            weights = np.where(left > 0, prefs, 0.0)
            if weights.sum() <= 0:
                weights = left.astype(np.float64)
            counts = np.minimum(rng.multinomial(need, weights / weights.sum()), left)
            for c in np.flatnonzero(counts):
                picked.append(pools[c][taken[c] : taken[c] + counts[c]])
                taken[c] += counts[c]
            need -= int(counts.sum())
        parts.append(np.sort(np.concatenate(picked)).astype(np.int64))
    return parts
