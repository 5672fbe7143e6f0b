"""The distillation losses, read from the recipe's `loss` lines.

    L = Σ_k weight_k · term_k

Head terms compare the student's next-token distribution with the teacher's:

- `ce`: cross-entropy with the next token, a mean over predicted tokens;
- `kl`: τ²·KL(p_T^τ ‖ p_S^τ), forward KL at temperature τ, a mean over tokens (the authors'
  "batchmean" over flattened tokens);
- `reverse_kl`: τ²·KL(p_S^τ ‖ p_T^τ);
- `jsd`: τ²·(β·KL(p_T‖m) + (1−β)·KL(p_S‖m)) with m = β·p_T + (1−β)·p_S.

Hidden terms compare hidden states over the layer graph's aligned pairs, with the weight
split evenly over the pairs:

- `cosine`: mean over pairs of the token mean of 1 − cos(h_S, h_T);
- `mse`: mean over pairs of the token mean of the squared error per hidden unit.

Every term is a token mean over *valid* tokens (padding excluded). The caller supplies the
denominators (valid-token counts of the whole global batch), so gradient accumulation and data
parallelism sum to exactly the mean a single big batch would give.

Head terms never hold [tokens × vocab] fp32 logits for a whole micro-batch: `head_loss` applies
the LM heads to a chunk of tokens at a time and works out the gradient with respect to the
chunk's logits by formula, right there. The backward pass then only rescales gradients already
accumulated for the hidden states and the head weights, so no logits are kept or recomputed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from surgery.distill.steps import chunk_tokens

HEAD_KINDS = ("ce", "kl", "reverse_kl", "jsd")
HIDDEN_KINDS = ("cosine", "mse")
IGNORE = -100  # target of a position with no next token to predict


@dataclass(frozen=True)
class HeadTerm:
    kind: str  # one of HEAD_KINDS
    temperature: float = 1.0
    beta: float = 0.5


@dataclass(frozen=True)
class Head:
    """One model's output layer: its final normed hidden states [tokens, hidden] and LM head."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None  # Gemma-2 style final_logit_softcapping

    def rows(self, rows: slice) -> "Head":
        """The same head over the tokens in `rows` only."""
        return dataclasses.replace(self, hidden=self.hidden[rows])

    def logits(self, dtype: torch.dtype) -> torch.Tensor:
        """fp32 logits of its tokens, the matrix product done in `dtype`."""
        h = self.hidden.to(dtype)
        z = F.linear(h, self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)).float()
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


# ----------------------------------------------------------------------------- per-chunk math
# Each function returns (per-token loss [c], gradient of the summed loss w.r.t. the student
# logits z [c, V]). `log_q(τ)` and `log_p(τ)` give the student's and teacher's log-softmax at
# temperature τ; they are cached per chunk, so terms must not modify them in place. The
# gradients are written into fresh tensors that the caller may modify. Each line here is a
# pass over [chunk × vocab] floats, the bulk of the loss's cost, so there are few of them.


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij·b_ij for each row i, without writing the product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _ce(log_q, log_p, targets, term):
    lq = log_q(1.0)
    ok = targets != IGNORE
    y = torch.where(ok, targets, 0)
    loss = -lq.gather(1, y[:, None]).squeeze(1) * ok
    grad = lq.exp()
    grad[torch.arange(len(y), device=y.device), y] -= 1.0
    return loss, grad.masked_fill_(~ok[:, None], 0.0)  # masked_fill, not boolean indexing: no GPU sync


def _kl(log_q, log_p, targets, term):
    tau = term.temperature
    lq, lp = log_q(tau), log_p(tau)
    p = lp.exp()
    loss = (_rowdot(p, lp) - _rowdot(p, lq)) * tau**2
    grad = lq.exp().sub_(p).mul_(tau)  # τ² · (1/τ)(q − p)
    return loss, grad


def _reverse_kl(log_q, log_p, targets, term):
    tau = term.temperature
    lq, lp = log_q(tau), log_p(tau)
    q = lq.exp()
    r = lq - lp
    kl = _rowdot(q, r)
    grad = r.sub_(kl[:, None]).mul_(q).mul_(tau)  # τ² · (1/τ) · q ⊙ (r − KL)
    return kl * tau**2, grad


def _jsd(log_q, log_p, targets, term):
    tau, beta = term.temperature, term.beta
    lq, lp = log_q(tau), log_p(tau)
    log_m = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
    q = lq.exp()
    r_q = lq - log_m  # log(q / m)
    kl_q = _rowdot(q, r_q)
    kl_p = _rowdot(lp.exp(), lp - log_m)
    loss = (beta * kl_p + (1 - beta) * kl_q) * tau**2
    grad = r_q.sub_(kl_q[:, None]).mul_(q).mul_((1 - beta) * tau)
    return loss, grad


_TERMS = {"ce": _ce, "kl": _kl, "reverse_kl": _reverse_kl, "jsd": _jsd}


def _log_softmax_cache(z: torch.Tensor | None):
    cache: dict[float, torch.Tensor] = {}

    def get(tau: float) -> torch.Tensor:
        if tau not in cache:
            cache[tau] = (z if tau == 1.0 else z / tau).log_softmax(-1)
        return cache[tau]

    return get


def chunk_loss(student: Head, teacher: Head | None, targets, valid, terms, scales, dtype):
    """Loss sums over one chunk of tokens (the heads' and `targets`' rows), and
    d(Σ scale·sum)/d(student logits).

    `valid` is None when every token is real (packed rows), which saves a masking pass.
    Shapes depend only on the chunk's length, so `torch.compile` makes one graph per length."""
    z = student.logits(dtype)
    t = teacher.logits(dtype) if teacher is not None else None
    log_q, log_p = _log_softmax_cache(z), _log_softmax_cache(t)
    grad = None
    sums = []
    for term, scale in zip(terms, scales):
        loss, g = _TERMS[term.kind](log_q, log_p, targets, term)
        if term.kind != "ce" and valid is not None:  # ce masks itself through its targets
            loss = loss * valid
            g.masked_fill_(valid[:, None] == 0, 0.0)
        sums.append(loss.sum())
        # mul_, not add_'s alpha: under torch.compile alpha would fix the scale's value into the graph.
        grad = g.mul_(scale) if grad is None else grad.add_(g.mul_(scale))
    if student.softcap:
        grad *= 1 - (z / student.softcap) ** 2
    return torch.stack(sums), grad


mixed_addmm_works: dict[str, bool] = {}  # device type -> whether out_dtype addmm runs there (probed)


def _accumulate_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, with low-precision a, b summed into an fp32 `out` without an fp32 copy
    of the product where the backend can (CUDA's mixed-precision matmul)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
        return
    kind = out.device.type
    if mixed_addmm_works.get(kind, True):
        try:
            torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
            mixed_addmm_works[kind] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            mixed_addmm_works[kind] = False
    out.add_((a @ b).float())


def _chunks(n: int, vocab: int):
    step = chunk_tokens(vocab)
    return (slice(start, min(start + step, n)) for start in range(0, n, step))


def _chunk_at(chunk_fn, rows: slice, student, teacher, targets, valid, terms, scales, dtype):
    return chunk_fn(student.rows(rows), None if teacher is None else teacher.rows(rows), targets[rows],
                    None if valid is None else valid[rows], terms, scales, dtype)


def compiled_chunk(backend: str = "inductor"):
    """The per-chunk math under `torch.compile`: the log-softmaxes, the terms and their
    gradients fuse into a few passes over the [chunk × vocab] logits instead of one per op.
    The matrix products stay cuBLAS calls."""
    return torch.compile(chunk_loss, backend=backend)


def _weighted(sums: torch.Tensor, scales) -> torch.Tensor:
    # Python floats as scalars: building a device tensor from them would wait for the GPU.
    return sum(sums[i] * scale for i, scale in enumerate(scales))


class _FusedHeadLoss(torch.autograd.Function):
    """Chunked head losses whose gradients are computed in the forward pass (see module doc).

    Why in the forward pass rather than recomputing logits in backward: the gradient with
    respect to a chunk's student logits needs the teacher's distribution for that chunk
    (KL: τ·(q − p)), so a backward that recomputed only the student's logits would have to keep
    p for every chunk, which is the full [tokens × vocab] tensor this avoids, or recompute the
    teacher's logits too, a third more head FLOPs. Done here, each chunk's logits exist once and
    what is kept for backward is the finished gradient: [tokens × hidden] for the hidden states
    and an fp32 [vocab × hidden] for the head weight (600 MB at Qwen3's vocabulary), whatever
    the number of tokens. The cost: the head's weight gradient is computed even when backward
    is never called (training always calls it; evaluation takes the no-grad branch of
    `head_loss`, which computes no gradients).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, student, teacher, targets, valid, terms, scales, dtype, chunk_fn):
        grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None else None
        w = weight.to(dtype)
        sums = torch.zeros(len(terms), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for rows in _chunks(h.shape[0], weight.shape[0]):
                chunk_sums, g = _chunk_at(chunk_fn, rows, student, teacher, targets, valid, terms, scales, dtype)
                sums += chunk_sums
                g_low = g.to(dtype)
                grad_h[rows] = g_low @ w
                _accumulate_product(grad_w, g_low.t(), h[rows].to(dtype))
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype),
                              grad_b.to(bias.dtype) if grad_b is not None else None)
        ctx.mark_non_differentiable(sums)
        return _weighted(sums, scales), sums

    @staticmethod
    def backward(ctx, grad_total, _grad_sums):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype),
                None if grad_b is None else grad_b * grad_total.to(grad_b.dtype),
                None, None, None, None, None, None, None, None)


def head_loss(student: Head, teacher: Head | None, targets: torch.Tensor, valid: torch.Tensor | None,
              terms: tuple[HeadTerm, ...], scales: tuple[float, ...], dtype: torch.dtype = torch.float32,
              chunk_fn=chunk_loss):
    """(Σ scale_k · sum_k, the sums [k]) for head terms over all tokens, in chunks.

    `student.hidden` is [tokens, hidden]; `targets` [tokens] holds the next token or IGNORE;
    `valid` [tokens] is 1 for real tokens, 0 for padding, or None when all tokens are real.
    `dtype` is the matmul precision. `chunk_fn` is the per-chunk math, or `compiled_chunk()`.
    Gradients flow to the student's hidden states, head weight and bias.
    """
    valid = None if valid is None else valid.to(torch.float32)
    if torch.is_grad_enabled() and (student.hidden.requires_grad or student.weight.requires_grad):
        return _FusedHeadLoss.apply(student.hidden, student.weight, student.bias, student, teacher, targets,
                                    valid, terms, scales, dtype, chunk_fn)
    sums = torch.zeros(len(terms), dtype=torch.float32, device=student.hidden.device)
    with torch.no_grad(), torch.autocast(student.hidden.device.type, enabled=False):
        for rows in _chunks(student.hidden.shape[0], student.weight.shape[0]):
            sums += _chunk_at(chunk_fn, rows, student, teacher, targets, valid, terms, scales, dtype)[0]
    return _weighted(sums, scales), sums


# ----------------------------------------------------------------------------- hidden states


def cosine_distance(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
    """Per-token 1 − cos(hs, ht) over the last dimension, in fp32."""
    return 1 - F.cosine_similarity(hs.float(), ht.float(), dim=-1, eps=1e-8)


def squared_error(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
    """Per-token mean squared error over the last dimension, in fp32."""
    return (hs.float() - ht.float()).pow(2).mean(-1)


_HIDDEN = {"cosine": cosine_distance, "mse": squared_error}


def hidden_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                valid: torch.Tensor | None, kinds: tuple[str, ...], scales: tuple[float, ...]):
    """(Σ scale_k · sum_k, the sums [k]): each sum is over pairs and valid tokens.

    `student_states[i]` and `teacher_states[i]` are the i-th aligned pair, [tokens, hidden];
    `valid` as for `head_loss`.
    """
    weight = (lambda x: x) if valid is None else (lambda x: x * valid.to(torch.float32))  # noqa: E731
    sums = []
    for kind in kinds:
        fn = _HIDDEN[kind]
        sums.append(sum(weight(fn(s, t)).sum() for s, t in zip(student_states, teacher_states)))
    sums_t = torch.stack(sums)
    total = sum(s * scale for s, scale in zip(sums, scales))
    return total, sums_t.detach()
