"""Label recovery accuracy (iDLG, Zhao et al. 2020; Yin et al. 2021; Wainakh et al. 2022).

Many attacks recover the batch's labels before (or instead of) its images, often without
knowing which label belongs to which image. Two measures cover both cases:

* :func:`label_accuracy` — labels already paired with true samples (e.g. the label an
  attack assigned to each reconstruction, after image matching): fraction equal.
* :func:`multiset_label_accuracy` — an unordered prediction: the fraction of true labels
  recovered counting multiplicity, |pred ∩ true| / |true| with multiset intersection
  (true [1, 1, 2] vs predicted [1, 2, 2] -> 2/3). This is the usual "label accuracy" of
  batch label-recovery attacks, whose output is a bag of labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from gialab.errors import GialabError

Labels = torch.Tensor | Sequence[int]


def _as_list(name: str, labels: Labels) -> list[int]:
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 1:
            raise GialabError(f"{name} must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
        return [int(v) for v in labels.tolist()]
    return [int(v) for v in labels]


def label_accuracy(pred: Labels, true: Labels) -> float:
    """Fraction of positions where pred[i] == true[i]; both aligned, same length (NaN if empty)."""
    p, t = _as_list("predicted labels", pred), _as_list("true labels", true)
    if len(p) != len(t):
        raise GialabError(
            f"matched label accuracy needs as many predicted labels ({len(p)}) as true labels ({len(t)}); "
            "use multiset_label_accuracy for unordered predictions"
        )
    if not t:
        return float("nan")
    return sum(a == b for a, b in zip(p, t)) / len(t)


def multiset_label_accuracy(pred: Labels, true: Labels) -> float:
    """Fraction of true labels found in the unordered prediction, counting multiplicity.

    Any lengths; extra predicted labels are not rewarded (NaN if there are no true labels)."""
    p, t = Counter(_as_list("predicted labels", pred)), Counter(_as_list("true labels", true))
    n = sum(t.values())
    if n == 0:
        return float("nan")
    return sum((p & t).values()) / n
