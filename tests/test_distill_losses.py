"""Each distillation loss against a plain fp32 implementation of its formula (values and
gradients), chunked and unchunked, with padding masked out."""

import math

import pytest
import torch
import torch.nn.functional as F

from surgery.distill import losses, steps
from surgery.distill.losses import Head, HeadTerm

TOKENS, HIDDEN, VOCAB = 37, 16, 50


def _inputs(seed=0, bias=False, pad=5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(TOKENS, HIDDEN, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(VOCAB, generator=g) * 0.1).requires_grad_() if bias else None
    ht = torch.randn(TOKENS, HIDDEN, generator=g)
    wt = torch.randn(VOCAB, HIDDEN, generator=g) * 0.5
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    valid = torch.ones(TOKENS)
    valid[-pad:] = 0  # trailing padding
    targets[-pad - 1:] = losses.IGNORE  # the last real token has no next token; padding has none
    return h, w, b, ht, wt, targets, valid


# Plain per-token formulas on full fp32 logits, written from the definitions.
def _plain(kind, zs, zt, targets, valid, tau=1.0, beta=0.5):
    if kind == "ce":
        return F.cross_entropy(zs, targets, ignore_index=losses.IGNORE, reduction="sum")
    q = torch.softmax(zs / tau, -1)
    p = torch.softmax(zt / tau, -1)
    if kind == "kl":
        per = (p * (p.log() - q.log())).sum(-1)
    elif kind == "reverse_kl":
        per = (q * (q.log() - p.log())).sum(-1)
    else:
        m = beta * p + (1 - beta) * q
        per = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    return (per * tau**2 * valid).sum()


CASES = [("ce", {}), ("kl", {}), ("kl", {"temperature": 2.0}), ("reverse_kl", {"temperature": 1.5}),
         ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.2, "temperature": 2.0})]


@pytest.mark.parametrize("kind,args", CASES)
@pytest.mark.parametrize("chunk_elements", [VOCAB * 8, 10**9])  # uneven chunks of 8 tokens; one chunk
def test_head_term_matches_formula(kind, args, chunk_elements, monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", chunk_elements)
    h, w, b, ht, wt, targets, valid = _inputs(bias=True)
    term = HeadTerm(kind, args.get("temperature", 1.0), args.get("beta", 0.5))
    total, sums = losses.head_loss(Head(h, w, b), Head(ht, wt), targets, valid, (term,), (0.7,))
    total.backward()
    got = (total.item(), h.grad.clone(), w.grad.clone(), b.grad.clone())

    h.grad = w.grad = b.grad = None
    ref = 0.7 * _plain(kind, F.linear(h, w, b), F.linear(ht, wt), targets, valid, term.temperature, term.beta)
    ref.backward()
    assert got[0] == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    assert sums.item() == pytest.approx(ref.item() / 0.7, rel=1e-4, abs=1e-5)
    for mine, theirs in zip(got[1:], (h.grad, w.grad, b.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_kl_is_the_authors_batchmean():
    """Forward KL at τ=1 per token equals F.kl_div(log q, p, 'batchmean') over flattened tokens."""
    h, w, _, ht, wt, targets, _ = _inputs(pad=0)
    _, sums = losses.head_loss(Head(h, w), Head(ht, wt), targets, None, (HeadTerm("kl"),), (1.0,))  # all real
    theirs = F.kl_div(F.log_softmax(F.linear(h, w), -1), F.softmax(F.linear(ht, wt), -1), reduction="batchmean")
    assert sums.item() / TOKENS == pytest.approx(theirs.item(), rel=1e-4)


def test_several_terms_share_one_pass(monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", VOCAB * 5)
    h, w, _, ht, wt, targets, valid = _inputs(seed=3)
    terms = (HeadTerm("ce"), HeadTerm("kl", 2.0), HeadTerm("jsd", 1.0, 0.3))
    scales = (1.0 / 31, 0.1 / 32, 0.5 / 32)
    total, sums = losses.head_loss(Head(h, w), Head(ht, wt), targets, valid, terms, scales)
    total.backward()
    grad = h.grad.clone()
    h.grad = None
    zs, zt = F.linear(h, w), F.linear(ht, wt)
    parts = [_plain(t.kind, zs, zt, targets, valid, t.temperature, t.beta) for t in terms]
    ref = sum(s * p for s, p in zip(scales, parts))
    ref.backward()
    torch.testing.assert_close(sums, torch.stack(parts).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, h.grad, rtol=1e-4, atol=1e-6)


def test_softcapped_logits(monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", VOCAB * 7)
    h, w, _, ht, wt, targets, valid = _inputs(seed=4)
    cap = 3.0
    total, _ = losses.head_loss(Head(h, w, softcap=cap), Head(ht, wt, softcap=cap), targets, valid,
                                (HeadTerm("ce"), HeadTerm("kl")), (1.0, 1.0))
    total.backward()
    grad = h.grad.clone()
    h.grad = None
    capped = lambda z: torch.tanh(z / cap) * cap  # noqa: E731
    zs, zt = capped(F.linear(h, w)), capped(F.linear(ht, wt))
    ref = _plain("ce", zs, zt, targets, valid) + _plain("kl", zs, zt, targets, valid)
    ref.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-4)
    torch.testing.assert_close(grad, h.grad, rtol=1e-4, atol=1e-6)


def test_without_grad_gives_the_same_sums(monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", VOCAB * 6)
    h, w, _, ht, wt, targets, valid = _inputs(seed=5)
    terms = (HeadTerm("ce"), HeadTerm("reverse_kl"))
    with_grad = losses.head_loss(Head(h, w), Head(ht, wt), targets, valid, terms, (1.0, 1.0))[1]
    with torch.no_grad():
        without = losses.head_loss(Head(h, w), Head(ht, wt), targets, valid, terms, (1.0, 1.0))[1]
    torch.testing.assert_close(with_grad, without)


def _plain_cosine(a, b):
    return 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_hidden_terms_match_formulas():
    g = torch.Generator().manual_seed(1)
    pairs = 3
    hs = [torch.randn(TOKENS, HIDDEN, generator=g).requires_grad_() for _ in range(pairs)]
    ht = [torch.randn(TOKENS, HIDDEN, generator=g) for _ in range(pairs)]
    valid = torch.ones(TOKENS)
    valid[-4:] = 0
    n = valid.sum()
    scales = (2.0 / pairs / n, 0.5 / pairs / n)
    total, sums = losses.hidden_loss(hs, ht, valid, ("cosine", "mse"), scales)
    total.backward()
    grads = [x.grad.clone() for x in hs]
    for x in hs:
        x.grad = None
    cos = sum((_plain_cosine(a, b) * valid).sum() for a, b in zip(hs, ht))
    mse = sum((((a - b) ** 2).mean(-1) * valid).sum() for a, b in zip(hs, ht))
    ref = scales[0] * cos + scales[1] * mse
    ref.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-4)
    torch.testing.assert_close(sums, torch.stack([cos, mse]).detach(), rtol=1e-4, atol=1e-5)
    for mine, x in zip(grads, hs):
        torch.testing.assert_close(mine, x.grad, rtol=1e-4, atol=1e-6)
    # Padding contributes nothing.
    assert all(x.grad[-4:].abs().max() == 0 for x in hs)


def test_identical_states_give_zero_cosine():
    x = torch.randn(5, HIDDEN)
    assert losses.cosine_distance(x, x.clone()).abs().max() < 1e-6
    assert math.isclose(losses.cosine_distance(x, -x).mean().item(), 2.0, rel_tol=1e-6)
