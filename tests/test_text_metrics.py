"""Text metrics on constructed cases with known values, and the report's side-by-side text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gialab.data.text import decode, token_pieces
from gialab.errors import GialabError
from gialab.metrics.text import bleu, rouge, score_text, semantic_similarity, token_accuracy
from gialab.report import write_run_report


def test_token_accuracy_matches_sequences_before_counting() -> None:
    truth = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert token_accuracy(truth.flip(0), truth) == 1.0  # order of recovered sequences is free
    wrong_one = truth.flip(0).clone()
    wrong_one[0, 2] = 9
    assert token_accuracy(wrong_one, truth) == 7 / 8
    assert token_accuracy(truth[1:], truth) == 4 / 8  # an unmatched true sequence counts as all wrong
    assert token_accuracy(torch.tensor([[4, 3, 2, 1]]), truth[:1]) == 0.0  # right tokens, wrong places


def test_bleu_is_sacrebleu_corpus_bleu() -> None:
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # one word of five wrong: n-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu(["alpha beta gamma delta epsilon"], ["alpha beta gamma delta zeta"]) == pytest.approx(expected, rel=1e-9)


def test_rouge_f_measures() -> None:
    scores = rouge(["the cat sat down"], ["the cat sat up"])
    # unigrams 3 of 4 on both sides; bigrams 2 of 3; longest common subsequence 3 of 4
    assert scores == pytest.approx({"rouge_1": 0.75, "rouge_2": 2 / 3, "rouge_l": 0.75}, rel=1e-12)
    assert rouge(["a b", "x y"], ["a b", "p q"])["rouge_1"] == pytest.approx(0.5)  # mean over pairs


def test_semantic_similarity_is_a_cosine_of_minilm_embeddings() -> None:
    same = semantic_similarity(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx(1.0, abs=1e-5)
    close = semantic_similarity(["the cat sat on the mat"], ["a cat was sitting on the rug"])
    far = semantic_similarity(["the cat sat on the mat"], ["quantum chromodynamics describes gluons"])
    assert 1.0 > close > 0.5 > far  # measured: 0.74 and 0.01


def test_score_text_reports_every_metric_and_marks_wrong_tokens() -> None:
    truth = torch.tensor([[7592, 2088, 999], [1996, 4937, 2938]])  # "hello world!", "the cat sat"
    recon = torch.tensor([[1996, 4937, 2938], [7592, 1010, 999]])  # swapped order, one token wrong
    scores = score_text(recon, truth, decode=decode, pieces=token_pieces)
    assert scores.order == [1, 0]
    assert scores.flat["token_accuracy"] == 5 / 6
    assert scores.flat["n_matched"] == 2
    assert scores.per_sample[0]["wrong"] == [False, True, False]
    assert scores.per_sample[0]["recovered_tokens"] == ["hello", ",", "!"]
    assert scores.per_sample[1]["true_text"] == scores.per_sample[1]["recovered_text"] == "the cat sat"
    # rouge-score drops punctuation: "hello" vs "hello world" has F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert scores.flat["rouge_1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scores.flat["bleu"] == 0.0  # 3-token texts have no 4-grams, and corpus BLEU does not smooth
    assert 0.5 < scores.flat["semantic_similarity"] < 1


def test_unmatched_sequences_count_as_nothing_recovered() -> None:
    truth = torch.tensor([[1996, 4937, 2938], [7592, 2088, 999]])
    scores = score_text(truth[:1], truth, decode=decode, pieces=token_pieces)
    assert scores.order == [0, -1]
    assert scores.flat["token_accuracy"] == 0.5
    assert scores.flat["rouge_1"] == pytest.approx(0.5)
    assert scores.flat["semantic_similarity"] == pytest.approx(0.5, abs=1e-5)
    assert scores.per_sample[1]["wrong"] == [True, True, True]


def test_malformed_token_ids_are_refused() -> None:
    with pytest.raises(GialabError, match="integer token ids"):
        score_text(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), decode=decode, pieces=token_pieces)
    with pytest.raises(GialabError, match="tokens, true ones"):
        token_accuracy(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_report_shows_true_and_recovered_text_with_wrong_tokens_marked(tmp_path: Path) -> None:
    truth = torch.tensor([[7592, 2088, 999]])
    scores = score_text(torch.tensor([[7592, 1010, 999]]), truth, decode=decode, pieces=token_pieces, semantic=False)
    summary = {"attack": "decepticons", "scenario": "t", "threat_model": "malicious-server", "metrics": scores.flat,
               "fl_setup": {}, "config": {"seed": 0}, "runtime_s": 1.0}
    page = write_run_report(tmp_path, summary, {}, None, text_samples=scores.per_sample).read_text()
    assert "hello world !" in page  # the true tokens
    assert page.count('<span class="wrong">') == 2  # the legend and the one wrong token
    assert '<span class="wrong">,</span>' in page
    assert "data:image/png;base64," in page  # the token map
    assert math.isclose(scores.flat["token_accuracy"], 2 / 3)
