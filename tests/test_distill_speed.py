"""The fast paths of the distillation step (docs/distill.md, "Speed") against the plain ones, on
CPU in fp32, to 1e-5: the fused chunked head loss against torch's own losses on full logits,
the student and teacher compiled whole (`compile step`) against the eager models, the step that
reads nothing back from the device against the one that does, and a whole run with
`compile step` against one without.

Compiled graphs here use the `aot_eager` backend: dynamo's capture and AOTAutograd's backward
graph, as on a GPU, without inductor's C++ build (minutes on a small CPU); bench/gpu_check.sh
runs inductor on the GPU.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distill_support import BODY, distill_recipe, documents, jsonl_corpus, make_student
from safetensors.torch import load_file

from surgery.compile import compile_file
from surgery.distill import data, losses, models, parallel
from surgery.distill import steps
from surgery.distill.losses import IGNORE, Head, HeadTerm
from surgery.distill.train import Engine
from surgery.distill.train import run as distill_run
from surgery.errors import SurgeryError

BACKEND = "aot_eager"
TOKENS, HIDDEN, VOCAB = 45, 16, 60
RTOL, ATOL = 1e-5, 1e-6


def _unfused(zs, zt, targets, valid, ce_weight, kl_weight, tau):
    """ce_weight·CE + kl_weight·τ²·KL(p_T^τ ‖ p_S^τ) from full logits with torch's losses: CE a
    mean over targets, KL the "batchmean" over real tokens."""
    real = torch.ones(len(zs), dtype=torch.bool) if valid is None else valid.bool()
    ce = F.cross_entropy(zs, targets, ignore_index=IGNORE)
    kl = F.kl_div(F.log_softmax(zs[real] / tau, -1), F.log_softmax(zt[real] / tau, -1), log_target=True,
                  reduction="batchmean") * tau**2
    return ce_weight * ce + kl_weight * kl, ce, kl


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("ce_weight,kl_weight,tau,pad", [
    (1.0, 0.1, 1.0, 0),  # packed: every token real
    (1.0, 0.1, 2.0, 7),  # temperature and padding
    (1.0, 0.0, 1.0, 7),  # KL weight 0
    (0.0, 1.0, 1.5, 0),  # CE weight 0
])
def test_fused_head_loss_equals_unfused(ce_weight, kl_weight, tau, pad, compiled, monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", VOCAB * 8)  # uneven chunks of 8 tokens
    g = torch.Generator().manual_seed(pad)
    h = torch.randn(TOKENS, HIDDEN, generator=g).requires_grad_()
    w = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).requires_grad_()
    ht, wt = torch.randn(TOKENS, HIDDEN, generator=g), torch.randn(VOCAB, HIDDEN, generator=g) * 0.5
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    targets[-pad - 1:] = IGNORE  # the last real token has no next token; padding has none
    valid = None
    if pad:
        valid = torch.ones(TOKENS)
        valid[-pad:] = 0
    n_targets, n_tokens = int((targets != IGNORE).sum()), TOKENS - pad
    chunk_fn = losses.compiled_chunk(BACKEND) if compiled else losses.chunk_loss
    total, sums = losses.head_loss(Head(h, w), Head(ht, wt), targets, valid, (HeadTerm("ce"), HeadTerm("kl", tau)),
                                   (ce_weight / n_targets, kl_weight / n_tokens), chunk_fn=chunk_fn)
    total.backward()
    got = total.detach(), sums / torch.tensor([n_targets, n_tokens]), h.grad.clone(), w.grad.clone()

    h.grad = w.grad = None
    ref, ce, kl = _unfused(F.linear(h, w), F.linear(ht, wt), targets, valid, ce_weight, kl_weight, tau)
    ref.backward()
    for mine, theirs in zip(got, (ref.detach(), torch.stack([ce, kl]).detach(), h.grad, w.grad)):
        torch.testing.assert_close(mine, theirs, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- whole models


def _tiny_pair(tied: bool):
    """A real 4-layer Qwen3 teacher, its student (`keep first 1 every 2 last 1`), their graph."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from tiny import config_for

    from surgery import arch as arch_registry
    from surgery import layout
    from surgery.graph import LayerGraph
    from surgery.recipe.ast import KeepRule

    config = config_for("qwen3", layers=4, tied=tied)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), attn_implementation="sdpa")
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    graph = LayerGraph(arch_registry.for_config(config), config, layout.blocks(KeepRule(1, 2, 1), 4))
    student = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**{**config, "num_hidden_layers": graph.n_student}), attn_implementation="sdpa")
    weights = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k}
    for i, kept in enumerate(graph.kept):
        weights |= {k.replace(f".layers.{kept}.", f".layers.{i}."): v for k, v in teacher.state_dict().items()
                    if f".layers.{kept}." in k}
    student.load_state_dict(weights)
    for m in (teacher, student):
        m.config.use_cache = False
    return teacher.eval(), student.train(), graph


def _batch(lengths, seq=16, vocab=320, seed=0):
    tokens = np.random.default_rng(seed).integers(3, vocab, size=(len(lengths), seq))
    return models.Batch.from_rows(tokens, np.array(lengths), torch.device("cpu"))


def _unfused_model_loss(teacher, student, graph, batch, tau):
    """CE + 0.1·KL(τ) + 2·cosine over the aligned pairs, from HF's full logits and all hidden states."""
    with torch.no_grad():
        t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    valid = batch.valid
    loss, _, _ = _unfused(flat(s.logits), flat(t.logits), batch.targets, valid, 1.0, 0.1, tau)
    real = torch.ones(len(batch.targets), dtype=torch.bool) if valid is None else valid.bool()
    pairs = graph.aligned_pairs
    cos = sum((1 - F.cosine_similarity(flat(s.hidden_states[i])[real], flat(t.hidden_states[j])[real], dim=-1)).mean()
              for i, j in pairs)
    return loss + 2.0 * cos / len(pairs)


@pytest.mark.parametrize("tied,lengths,compiled", [
    (True, [16, 16], False), (False, [16, 11], False), (True, [16, 9], True), (False, [16, 16], True),
], ids=["tied-packed", "untied-padded", "tied-padded-compiled", "untied-packed-compiled"])
def test_distiller_equals_unfused_model_losses(tied, lengths, compiled, monkeypatch):
    """The engine's student loss (hooks, final norm, tied or untied head, fused head loss, padding)
    against HF's full forward: the loss and every student parameter's gradient."""
    from surgery.recipe.ast import Loss

    monkeypatch.setattr(steps, "CHUNK_ELEMENTS", 320 * 7)  # several chunks
    tau = 2.0
    teacher, student, graph = _tiny_pair(tied)
    objective = models.Objective.from_recipe((Loss("ce", 1.0), Loss("kl", 0.1, temperature=tau),
                                              Loss("cosine", 2.0)), graph)
    forward, chunk_fn = models.base_forward, losses.chunk_loss
    if compiled:
        forward = torch.compile(models.base_forward, backend=BACKEND, dynamic=False)
        chunk_fn = losses.compiled_chunk(BACKEND)
    mentor = models.Teacher(teacher, graph, models.teacher_indices(objective, graph), forward)
    distiller = models.Distiller(student, graph, objective, torch.float32, forward, chunk_fn)
    batch = _batch(lengths)
    n_targets, n_tokens = int((batch.targets != IGNORE).sum()), sum(lengths)
    total, _ = distiller(batch, *mentor(batch), objective.scales(n_targets, n_tokens))
    total.backward()
    got = {k: p.grad.clone() for k, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    ref = _unfused_model_loss(teacher, student, graph, batch, tau)
    ref.backward()
    torch.testing.assert_close(total.detach(), ref.detach(), rtol=RTOL, atol=ATOL)
    for k, p in student.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=RTOL, atol=ATOL, msg=k)
    assert (student.get_output_embeddings().weight is student.get_input_embeddings().weight) == tied


# ----------------------------------------------------------------------------- the engine's step



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return jsonl_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl", documents(200))


def _setup(directory, teacher, corpus, body=BODY):
    directory.mkdir(parents=True, exist_ok=True)
    compiled = compile_file(distill_recipe(directory, teacher, body.format(corpus=corpus)))
    make_student(compiled)
    return compiled


def _engine(compiled, compile):
    """The engine of a compiled recipe, on CPU, and a fused AdamW (no host reads of its own)."""
    from surgery import source

    schedule = steps.make(compiled, 1, "cpu")
    teacher = models.load(source.weights_dir(compiled.teacher), torch.float32, torch.device("cpu"), False, "teacher")
    student = models.load(compiled.student_dir, torch.float32, torch.device("cpu"), False, "student")
    objective = models.Objective.from_recipe(compiled.recipe.distill.losses, compiled.graph)
    engine = Engine(teacher, student, compiled.graph, objective, schedule, parallel.World(0, 1, 0, torch.device("cpu")),
                    compile=compile, compile_backend=BACKEND)
    return engine, student, torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)


def _rows(step, seq=32, batch=4):
    rng = np.random.default_rng(step)
    lengths = np.full(batch, seq) if step % 2 == 0 else rng.integers(seq // 2, seq + 1, size=batch)
    return data.Rows(rng.integers(3, 320, size=(batch, seq)), lengths)  # packed and padded steps


class _NoHostReads:
    """Makes every read of a tensor's values into Python (the waits for a GPU) an error."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__float__", "__int__")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.Tensor, n, self._refuse(n))

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)

    @staticmethod
    def _refuse(name):
        def refuse(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} inside the step")
        return refuse


@pytest.mark.slow
def test_compiled_deferred_step_equals_the_eager_step(tmp_path, teachers, corpus):
    compiled = _setup(tmp_path, teachers("qwen3"), corpus)
    eager, eager_student, eager_opt = _engine(compiled, False)
    fast, fast_student, fast_opt = _engine(compiled, "step")
    assert fast.deferred and not eager.deferred
    expected = [eager.step(_rows(i), eager_opt, 1.0) for i in range(4)]
    # Steps 0 and 1 compile (packed rows, then padded rows: a mask, and other loss scales).
    pending = [fast.step_deferred(_rows(i), fast_opt, 1.0) for i in (0, 1)]
    with _NoHostReads():
        pending += [fast.step_deferred(_rows(i), fast_opt, 1.0) for i in (2, 3)]
    with _NoHostReads(), pytest.raises(AssertionError, match="inside the step"):
        eager.step(_rows(4), eager_opt, 1.0)  # the check sees the eager step's reads
    got = fast.read(pending)
    for (m1, n1), (m2, n2) in zip(got, expected):
        assert m1.keys() == m2.keys()
        assert [m1[k] for k in m1] == pytest.approx([m2[k] for k in m2], rel=RTOL)
        assert n1 == pytest.approx(n2, rel=RTOL)
    for (k, a), b in zip(fast_student.state_dict().items(), eager_student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=k)
    assert fast.evaluate(_rows(5)) == pytest.approx(eager.evaluate(_rows(5)), rel=RTOL)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend, whatever backend the engine asks for."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": BACKEND}))


@pytest.mark.slow
def test_compile_step_run_equals_compile_no(tmp_path, teachers, corpus, aot_eager):
    plain = _setup(tmp_path / "plain", teachers("qwen3"), corpus)
    fast = _setup(tmp_path / "fast", teachers("qwen3"), corpus, BODY + "compile step\n")
    assert fast.recipe.distill.compile == "step"
    runs = [distill_run(c, progress=False) for c in (plain, fast)]
    a, b = (_records(r.parent) for r in runs)
    assert [(r["step"], r.get("split")) for r in a] == [(r["step"], r.get("split")) for r in b]
    for x, y in zip(a, b):
        for term in ("loss", "ce", "kl", "cosine", "grad_norm"):
            if term in x:
                assert y[term] == pytest.approx(x[term], rel=RTOL), (x["step"], term)
    wa, wb = (load_file(r / "model.safetensors") for r in runs)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_compile_step_names_the_first_non_finite_step(tmp_path, teachers, corpus, aot_eager):
    from surgery.distill import checkpoint

    body = BODY.replace("lr 1e-3", "lr 1e30 weight_decay 0").replace("every 2 steps", "every 3 steps")
    body += "compile step\n"
    compiled = _setup(tmp_path, teachers("qwen3"), corpus, body)
    with pytest.raises(SurgeryError, match=r"the loss is not finite at step 2 ") as err:
        distill_run(compiled, progress=False)
    assert "no checkpoint was written yet" in err.value.hint
    assert checkpoint.latest(checkpoint.directory(compiled.student_dir)) is None


def test_compile_setting_parses(tmp_path):
    from surgery.recipe.parse import load

    text = 'boom 1\n\nteacher "t" {\n}\n\nstudent "s" {\n    keep first 1 every 2 last 1\n}\n\ndistill {\n' \
           '    data text "x/*.txt"\n    steps 5\n    compile WORD\n}\n'
    path = tmp_path / "r.boom"
    for word, value in (("yes", True), ("no", False), ("step", "step")):
        path.write_text(text.replace("WORD", word))
        assert load(path).distill.compile == value
    path.write_text(text.replace("WORD", "fast"))
    with pytest.raises(SurgeryError, match=r"r\.boom:13:13: error: unexpected `fast`; expected `no`, `step`, `yes`"):
        load(path)
