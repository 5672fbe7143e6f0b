"""The data pipeline: packing, determinism, mixing, validation split, resumable position, errors."""

import json

import numpy as np
import pytest
from distill_support import distill_recipe, documents, jsonl_corpus, text_corpus

from surgery.distill import data
from surgery.errors import SurgeryError
from surgery.hf import check_tokenizer
from surgery.recipe.parse import load


@pytest.fixture(scope="module")
def tokenizer(teachers):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teachers("qwen3"))


def _corpus(tmp_path, teachers, tokenizer, body):
    recipe = load(distill_recipe(tmp_path, teachers("qwen3"), body))
    return data.Corpus(recipe, tokenizer)


def _stream(tokenizer, docs):
    enc = data.Encoder(tokenizer)
    return np.concatenate(enc(docs))


def test_rows_are_exact_and_pack_documents_with_eos(tmp_path, teachers, tokenizer):
    docs = documents(30)
    text_corpus(tmp_path / "c", docs)
    body = 'data text "c/*.txt"\nvalidation text "c/doc0000.txt"\nseq 16\nsteps 1'
    corpus = _corpus(tmp_path, teachers, tokenizer, body)
    rows = corpus.train.take(20)
    assert rows.tokens.shape == (20, 16)
    assert (rows.lengths == 16).all()  # packed: no padding anywhere
    # The stream is the documents, each ending in EOS, in the seeded file order of epoch 0.
    order = np.random.default_rng([0, 0, 0]).permutation(30)
    paths = sorted((tmp_path / "c").glob("*.txt"))
    expected = _stream(tokenizer, [paths[i].read_text() for i in order])
    assert np.array_equal(rows.tokens.reshape(-1), expected[: 20 * 16])
    eos = tokenizer.eos_token_id
    assert (rows.tokens == eos).sum() == (expected[: 20 * 16] == eos).sum() > 5


def test_order_is_deterministic_from_seed(tmp_path, teachers, tokenizer):
    jsonl_corpus(tmp_path / "c.jsonl", documents(60))
    body = 'data jsonl "c.jsonl"\nvalidation 10%\nseq 8\nsteps 1\nseed {}'
    a = _corpus(tmp_path, teachers, tokenizer, body.format(1)).train.take(30)
    b = _corpus(tmp_path, teachers, tokenizer, body.format(1)).train.take(30)
    c = _corpus(tmp_path, teachers, tokenizer, body.format(2)).train.take(30)
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_position_resumes_exactly_across_epochs(tmp_path, teachers, tokenizer):
    jsonl_corpus(tmp_path / "a.jsonl", documents(12, seed=1))
    text_corpus(tmp_path / "b", documents(5, seed=2))
    body = 'data jsonl "a.jsonl" weight 2\ndata text "b/*.txt"\nvalidation 10%\nseq 16\nsteps 1'
    whole = _corpus(tmp_path, teachers, tokenizer, body).train.take(120)  # several epochs of both
    first = _corpus(tmp_path, teachers, tokenizer, body)
    head = first.train.take(37)
    state = json.loads(json.dumps(first.train.state_dict()))  # it travels as JSON in checkpoints
    again = _corpus(tmp_path, teachers, tokenizer, body)
    again.train.load_state_dict(state)
    tail = again.train.take(83)
    assert np.array_equal(np.concatenate([head.tokens, tail.tokens]), whole.tokens)
    assert max(p.epoch for p in again.train.packers) >= 2


def test_sources_mix_by_weight(tmp_path, teachers, tokenizer):
    jsonl_corpus(tmp_path / "a.jsonl", ["to be or not to be " * 3] * 4)
    jsonl_corpus(tmp_path / "b.jsonl", ["the slings and arrows " * 3] * 4)
    body = 'data jsonl "a.jsonl" weight 3\ndata jsonl "b.jsonl" weight 1\nvalidation text "a.jsonl"\nseq 8\nsteps 1'
    corpus = _corpus(tmp_path, teachers, tokenizer, body)
    rows = corpus.train.take(800)
    from_b = sum("slings" in s or "arrows" in s for s in tokenizer.batch_decode(rows.tokens))
    assert from_b / 800 == pytest.approx(0.25, abs=0.05)


def test_validation_documents_never_reach_training(tmp_path, teachers, tokenizer):
    docs = documents(80, seed=3)
    jsonl_corpus(tmp_path / "c.jsonl", docs)
    corpus = _corpus(tmp_path, teachers, tokenizer, 'data jsonl "c.jsonl"\nvalidation 25%\nseq 8\nsteps 1')
    held = [d for d in docs if data.held_out(d, 0.25)]
    assert 5 < len(held) < 40
    val = corpus.validation(256)
    val_text = "".join(tokenizer.batch_decode(val.tokens))
    assert all(d in val_text for d in held[:2]) and val.lengths.min() == 8
    train_text = "".join(tokenizer.batch_decode(corpus.train.take(400).tokens))  # several epochs
    assert not any(d in train_text for d in held)
    assert sum(d in train_text for d in docs if d not in held) > 40


def test_unpacked_rows_pad_each_document(tmp_path, teachers, tokenizer):
    docs = documents(6, seed=4, words=(2, 6))
    text_corpus(tmp_path / "c", docs)
    corpus = _corpus(tmp_path, teachers, tokenizer,
                     'data text "c/*.txt"\nvalidation text "c/doc0000.txt"\nseq 64\npack no\nsteps 1')
    rows = corpus.train.take(6)
    enc = data.Encoder(tokenizer)
    order = np.random.default_rng([0, 0, 0]).permutation(6)
    for row, n, i in zip(rows.tokens, rows.lengths, order):
        doc = enc([docs[i]])[0]
        assert n == len(doc) < 64
        assert np.array_equal(row[:n], doc) and (row[n:] == enc.pad).all()


def test_missing_and_empty_corpus(tmp_path, teachers, tokenizer):
    with pytest.raises(SurgeryError, match='no files match "nothing/\\*.txt"') as err:
        _corpus(tmp_path, teachers, tokenizer, 'data text "nothing/*.txt"\nsteps 1')
    assert err.value.pos.line == 12 and err.value.file.endswith("recipe.boom")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("")
    (tmp_path / "e" / "b.txt").write_text("  \n")
    corpus = _corpus(tmp_path, teachers, tokenizer, 'data text "e/*.txt"\nvalidation text "e/a.txt"\nsteps 1')
    with pytest.raises(SurgeryError, match="no documents to train on"):
        corpus.train.take(1)


def test_jsonl_errors_name_file_and_line(tmp_path, teachers, tokenizer):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')
    corpus = _corpus(tmp_path, teachers, tokenizer, 'data jsonl "c.jsonl"\nvalidation 10%\nseq 4\nsteps 1')
    with pytest.raises(SurgeryError, match=r"c\.jsonl:3: no field `text`"):
        corpus.train.take(50)


def test_empty_validation_split_is_an_error(tmp_path, teachers, tokenizer):
    jsonl_corpus(tmp_path / "c.jsonl", documents(3))
    corpus = _corpus(tmp_path, teachers, tokenizer, 'data jsonl "c.jsonl"\nvalidation 0.01%\nseq 4\nsteps 1')
    with pytest.raises(SurgeryError, match="validation split is empty"):
        corpus.validation(1)


def test_tokenizer_that_does_not_match_the_teacher(teachers, tokenizer):
    with pytest.raises(SurgeryError, match="EOS token is 2 but the teacher's config says 5"):
        check_tokenizer(tokenizer, {"vocab_size": 320, "eos_token_id": 5}, "teacher")
    with pytest.raises(SurgeryError, match="has 320 tokens but the teacher's embedding has 100 rows"):
        check_tokenizer(tokenizer, {"vocab_size": 100, "eos_token_id": 2}, "teacher")


def test_hf_source_offline_and_local(tmp_path, teachers, tokenizer, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SurgeryError, match="streams from the Hugging Face hub, but HF_HUB_OFFLINE=1"):
        _corpus(tmp_path, teachers, tokenizer, 'data hf "someone/corpus" split "train"\nsteps 1')
    # A local dataset directory streams through the same path, offline.
    jsonl_corpus(tmp_path / "ds" / "train.jsonl", documents(20, seed=5), field="content")
    body = 'data hf "ds" split "train" field "content"\nvalidation 10%\nseq 8\nsteps 1'
    corpus = _corpus(tmp_path, teachers, tokenizer, body)
    head = corpus.train.take(7)
    again = _corpus(tmp_path, teachers, tokenizer, body)
    again.train.load_state_dict(corpus.train.state_dict())
    assert np.array_equal(np.concatenate([head.tokens, again.train.take(5).tokens]),
                          _corpus(tmp_path, teachers, tokenizer, body).train.take(12).tokens)
