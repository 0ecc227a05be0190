"""What every Byzantine-robust aggregation rule shares: updates as rows, and the Byzantine budget.

Robust rules (Krum, median, trimmed mean, Bulyan, FLTrust, norm bounding) compare whole updates
or single coordinates across clients, so each round's updates become the rows of one (n, d)
matrix and the result is cut back into tensors aligned with the model's parameters.

They are **unweighted over clients**: a client's example count is self-reported, and a Byzantine
client that claimed a huge count would get back the influence the rule is there to bound. This
follows the papers, which all aggregate over clients.

Each rule tolerates at most a known number f of Byzantine clients out of the n in a round (Krum
needs n > 2f + 2, ...). Each rule's ``check_round_size`` fails with one line naming n, f and the
rule's condition; the runner calls it with the planned round size before any work, and the rule
calls it again on the updates that arrive (a malicious server may size a round itself). These rules
reveal every individual update to the server: they defend the model against clients, not the
clients against a curious server (survey section 2.2), so ``reveals_individual`` stays True.

Each rule also reports which clients it **accepted** (``aggregate_with_acceptance``; the protocol
logs the ids in the round's transcript), so that an attack on the rule can be measured:

* selection rules accept the updates they select: Krum its one pick, Multi-Krum its m picks,
  Bulyan the theta updates its repeated-Krum stage keeps;
* FLTrust accepts the updates with a positive trust score (the others get weight zero);
* norm bounding accepts the updates it does not have to clip;
* coordinate-wise rules (median, trimmed mean) use some of every client's coordinates, so a
  client counts as accepted when its value lies in the rule's kept range (the middle value or
  two for the median, ranks f .. n - f - 1 for the trimmed mean) in at least half as many
  coordinates as a client's fair share (kept values per coordinate / n). An honest client sits
  near its fair share in every round; an update the rule cuts away (an outlier) sits near zero.
  This counts coordinates, not magnitude: an update that differs from the honest ones in a few
  coordinates only (a poison confined to the last layer) is accepted while exactly those
  coordinates are cut, so whether a poison took must be read from its effect on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from pydantic import Field

from gialab.defenses.registry import DefenseParams
from gialab.errors import GialabError
from gialab.fl.client import ClientUpdate
from gialab.fl.update_vector import flatten
from gialab.fl.update_vector import unflatten as unflatten_vector


class ByzantineParams(DefenseParams):
    byzantine: int = Field(1, ge=0, description="number f of Byzantine clients per round the rule must tolerate")


def stack_updates(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """The round's updates as an (n, d) matrix, one flattened update per row."""
    if not updates:
        raise GialabError("a robust aggregation rule needs at least one update in the round")
    return torch.stack([flatten(u.tensors) for u in updates])


def unflatten(vector: torch.Tensor, like: ClientUpdate) -> tuple[torch.Tensor, ...]:
    """Cut a flat vector back into tensors shaped like ``like``'s (aligned with the model)."""
    return unflatten_vector(vector, like.tensors)


def client_ids(updates: Sequence[ClientUpdate], rows: Iterable[int]) -> tuple[int, ...]:
    """The sorted client ids of the updates at positions ``rows``."""
    return tuple(sorted(updates[int(i)].client_id for i in rows))


def coordinate_acceptance(updates: Sequence[ClientUpdate], rows: torch.Tensor, low: torch.Tensor,
                          high: torch.Tensor, kept_per_coordinate: int) -> tuple[int, ...]:
    """Clients whose values lie in the kept range ``[low, high]`` in at least half their fair share
    of coordinates (``kept_per_coordinate / n``): the coordinate-wise rules' acceptance (see above)."""
    n = rows.shape[0]
    share = ((rows >= low) & (rows <= high)).double().mean(dim=1)
    return client_ids(updates, (share >= kept_per_coordinate / n / 2).nonzero().flatten().tolist())


def require_clients(rule: str, n: int, f: int, condition: str, holds: Callable[[int, int], bool],
                    smallest_n: int) -> None:
    """Refuse a round of ``n`` updates that ``rule`` cannot aggregate with ``f`` Byzantine clients."""
    if not holds(n, f):
        raise GialabError(
            f"{rule} with byzantine f={f} needs {condition}, but the round has n={n} client updates; "
            f"use at least {smallest_n} clients per round or a smaller byzantine"
        )
