"""The pydoc corpus, the offline BERT WordPiece tokenizer, and fixed-length token sequences."""

from __future__ import annotations

import pytest
import torch

from gialab.data import load_dataset
from gialab.data.text import (
    TextDataset, TextSpec, corpus_sentences, decode, load_text, load_tokenizer, token_pieces, vocabulary,
)
from gialab.errors import GialabError


def test_corpus_is_english_sentences_from_pydoc_topics() -> None:
    from pydoc_data.topics import topics

    sentences = corpus_sentences()
    assert len(sentences) > 3000  # measured: 3445 sentences
    assert sentences == corpus_sentences()  # fixed: sorted topics, no randomness
    assert all(len(s.split()) >= 3 for s in sentences)
    # every sentence is text from the standard library's help topics, whitespace normalised
    joined = " ".join(" ".join(t.split()) for t in topics.values())
    assert all(s in joined for s in sentences[::200])


def test_tokenizer_is_the_real_bert_wordpiece_vocabulary() -> None:
    vocab = vocabulary()
    assert len(vocab) == 30522
    assert (vocab[0], vocab[100], vocab[101], vocab[102]) == ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    ids = load_tokenizer().encode("Hello, tokenizers!", add_special_tokens=False).ids
    assert ids == [7592, 1010, 19204, 17629, 2015, 999]  # bert-base-uncased's ids
    assert token_pieces(ids) == ["hello", ",", "token", "##izer", "##s", "!"]
    assert decode(ids) == "hello, tokenizers!"


def test_sequences_are_back_to_back_windows_shuffled_by_seed() -> None:
    data = load_dataset("pydoc", sequence_length=16, seed=0)
    assert isinstance(data, TextDataset) and isinstance(data.spec, TextSpec)
    assert data.tokens.dtype == torch.int64 and data.tokens.shape[1] == 16
    assert data.spec.shape == (16,) and data.spec.sequence_length == 16 and data.spec.vocab_size == 30522
    assert abs(len(data) - 2 * len(load_text(32))) <= 1  # the same token stream, cut finer
    assert torch.equal(data.tokens, load_dataset("pydoc", sequence_length=16, seed=0).tokens)
    other = load_dataset("pydoc", sequence_length=16, seed=1).tokens
    assert not torch.equal(data.tokens, other)
    assert sorted(data.tokens.tolist()) == sorted(other.tolist())  # the same windows, reordered
    assert int(data.tokens.max()) < 30522 and int(data.tokens.min()) >= 0
    assert load_dataset("pydoc").spec.sequence_length == 32  # the default


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sequence_length": 1}, "at least 2 tokens"),
    ({"sequence_length": 10**6}, "exceeds the corpus"),
])
def test_bad_sequence_lengths_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(GialabError, match=message) as err:
        load_dataset("pydoc", **kwargs)
    assert "\n" not in str(err.value)


def test_sequence_length_on_image_data_and_a_path_on_pydoc_are_refused(tmp_path) -> None:
    with pytest.raises(GialabError, match="sequence_length applies to text datasets"):
        load_dataset("digits", sequence_length=8)
    with pytest.raises(GialabError, match="takes no data_path"):
        load_dataset("pydoc", path=tmp_path)
    with pytest.raises(GialabError, match="pydoc"):
        load_dataset("wikitext")  # the unknown-name error lists the text set too
