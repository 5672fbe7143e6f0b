"""Perplexity: the sliding window against direct computations on tiny real models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from surgery.errors import SurgeryError
from surgery.evaluate import perplexity as ppl


@given(n=st.integers(0, 300), seq=st.integers(2, 64), data=st.data())
def test_windows_score_every_token_once(n, seq, data):
    stride = data.draw(st.integers(1, seq))
    wins = ppl.windows(n, seq, stride)
    scored = [t for w in wins for t in range(w.first, w.end)]
    assert len(scored) == len(set(scored))
    for w in wins:
        assert w.end - w.begin <= seq and w.begin < w.first < w.end
    if stride < seq:  # overlapping windows: every token but the first, each with context
        assert sorted(scored) == list(range(1, n))
        for w in wins[1:]:
            assert w.first - w.begin >= seq - stride
    else:  # disjoint chunks: each chunk's first token is context only
        assert sorted(scored) == [t for t in range(1, n) if t % seq]


@pytest.fixture(scope="module")
def model_and_docs(teachers, tmp_path_factory):
    directory = teachers("qwen3", layers=2)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    root = tmp_path_factory.mktemp("text")
    words = "to be or not to be that is the question whether tis nobler in the mind".split()
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((300, 41, 7)):  # documents longer and shorter than a window
        picks = torch.randint(len(words), (n,), generator=g).tolist()
        (root / f"doc{i}.txt").write_text(" ".join(words[j] for j in picks))
    docs = ppl.tokenize(tok, ppl.text_files(root / "*.txt"))
    return directory, model, docs


def _nll(model, ids, first):
    """Summed NLL of ids[first:] given everything before, in one unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")[first - 1:].sum().item()


def test_disjoint_windows_equal_chunked_loss(model_and_docs):
    _, model, docs = model_and_docs
    seq = 32
    nll, count = 0.0, 0
    for doc in docs:
        for start in range(0, len(doc), seq):
            chunk = doc[start:start + seq]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                loss = model(torch.tensor([chunk]), labels=torch.tensor([chunk])).loss.item()
            nll += loss * (len(chunk) - 1)
            count += len(chunk) - 1
    got = ppl.score(model, docs, seq, seq, batch_size=3)
    assert got.tokens == count
    assert got.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("seq,stride", [(32, 8), (48, 47), (12, 2)])
def test_sliding_window_matches_hand_loop(model_and_docs, seq, stride):
    _, model, docs = model_and_docs
    nll, count = 0.0, 0
    for doc in docs:  # the textbook loop: one window at a time, score what is new
        scored_to = 1
        for begin in range(0, len(doc), stride):
            end = min(begin + seq, len(doc))
            first = max(scored_to, begin + 1)
            if first < end:
                nll += _nll(model, doc[begin:end], first - begin)
                count += end - first
            scored_to = end
            if end == len(doc):
                break
    assert count == sum(len(d) - 1 for d in docs)
    got = ppl.score(model, docs, seq, stride, batch_size=5)  # batched, right-padded
    assert got.tokens == count
    assert got.nll == pytest.approx(nll, rel=1e-5)


def test_perplexity_of_directory_and_errors(model_and_docs, tmp_path):
    directory, model, docs = model_and_docs
    from_dir = ppl.perplexity_of(directory, docs, 32, 16, device="cpu")
    direct = ppl.score(model, docs, 32, 16)
    assert from_dir.tokens == direct.tokens and from_dir.nll == pytest.approx(direct.nll, rel=1e-6)
    with pytest.raises(SurgeryError, match="128 positions"):
        ppl.score(model, docs, 256, 128)
    with pytest.raises(SurgeryError, match="no files match"):
        ppl.text_files(tmp_path / "missing" / "*.txt")
    with pytest.raises(SurgeryError, match=r"has no \*\.safetensors files"):
        ppl.load_model(tmp_path, "cpu")
