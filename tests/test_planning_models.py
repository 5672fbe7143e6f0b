"""In-memory patched models and the prefix-sharing measurer, on tiny real models of four families."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from planning_student import save_student
from tiny import write_recipe
from transformers import AutoConfig, AutoModelForCausalLM

from surgery.compile import compile_file
from surgery.inmemory import assemble
from surgery.planning.measure import Measurer

CASES = [("qwen3", True), ("llama", False), ("gpt2", True), ("gpt_neox", False), ("gemma2", True), ("gemma3_text", True)]


@pytest.fixture(scope="module")
def pairs(teachers, tmp_path_factory):
    made = {}

    def get(family, tied):
        if (family, tied) not in made:
            teacher = teachers(family, tied=tied)
            d = tmp_path_factory.mktemp(f"pair-{family}")
            compiled = compile_file(write_recipe(d / "r.boom", teacher, student=str(d / "student")))
            save_student(teacher, compiled.graph, d / "student")
            load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
            made[family, tied] = (compiled, teacher, load(teacher), load(d / "student"))
        return made[family, tied]

    return get


def reference(teacher_dir, teacher, student, graph, assembly):
    """The same model built the slow way: a fresh model loaded with a hand-assembled state dict."""
    arch = graph.arch
    states = {"teacher": teacher.state_dict(), "student": student.state_dict()}
    config = AutoConfig.from_pretrained(teacher_dir)
    setattr(config, arch.depth, assembly.depth)
    setattr(config, arch.tie, graph.size(assembly).tied)
    configs = {"teacher": teacher.config, "student": student.config}
    for key in arch.per_layer:  # Gemma 3's local and global layers differ in their rotary base too
        if getattr(config, key, None) is not None:
            setattr(config, key, [getattr(configs[r.side], key)[r.index] for r in assembly.layers])
    model = AutoModelForCausalLM.from_config(config).eval()
    state = {}
    for name in model.state_dict():
        layer = arch.layer_of(name)
        if layer is not None:
            ref = assembly.layers[layer]
            state[name] = states[ref.side][arch.rename_layer(name, ref.index)]
        else:
            side = assembly.embeddings if arch.part_of(name) == "embeddings" else assembly.final
            state[name] = states[side][name]
    model.load_state_dict(state)
    return model


SETS = [(), (0,), (1,), (0, 2), (1, 2, 3), (0, 1, 2, 3)]


@pytest.mark.parametrize("family,tied", CASES)
def test_assembly_matches_the_teacher_the_student_and_a_hand_built_model(pairs, family, tied):
    compiled, teacher_dir, teacher, student = pairs(family, tied)
    g = compiled.graph
    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    logits = lambda m: m(ids, use_cache=False).logits  # noqa: E731
    with torch.no_grad():
        t, s = logits(teacher), logits(student)
        assert torch.equal(logits(assemble(teacher, student, g, g.teacher)), t)
        assert torch.equal(logits(assemble(teacher, student, g, g.student)), s)
        assert not torch.allclose(t, s, atol=1e-2)  # the two really differ
        shared = {p.data_ptr() for m in (teacher, student) for p in m.parameters()}
        for patched in SETS:
            a = g.assemble(patched)
            model = assemble(teacher, student, g, a)
            assert {p.data_ptr() for p in model.parameters()} <= shared  # modules shared, nothing copied
            assert getattr(model.config, g.arch.depth) == a.depth
            ref = reference(teacher_dir, teacher, student, g, a)
            torch.testing.assert_close(logits(model), logits(ref), atol=1e-5, rtol=1e-5)
        assert torch.equal(logits(teacher), t)  # building patched models left the teacher alone


# GPT-2 adds its position table to inputs_embeds: a segment fed a hidden state must not add it twice.
@pytest.mark.parametrize("family,tied", [("qwen3", True), ("gpt2", True), ("gpt_neox", False), ("gemma2", True),
                                        ("gemma3_text", True)])
def test_measurer_scores_equal_whole_forwards_and_share_prefixes(pairs, family, tied):
    compiled, _, teacher, student = pairs(family, tied)
    g = compiled.graph
    rows = torch.randint(4, 300, (5, 24), generator=torch.Generator().manual_seed(1))
    m = Measurer(teacher, student, g, rows, batch_rows=2)
    sets = [frozenset(c) for r in range(g.n_student + 1) for c in itertools.combinations(range(g.n_student), r)]
    m.passes = 0.0
    scores = m.scores(sets)
    assert m.passes < 0.5 * len(sets)  # 16 models for the price of fewer than 8
    with torch.no_grad():
        target = F.log_softmax(teacher(rows, use_cache=False).logits, -1)
        for s, score in zip(sets, scores):
            logp = F.log_softmax(assemble(teacher, student, g, g.assemble(s))(rows, use_cache=False).logits, -1)
            kl = (target.exp() * (target - logp)).sum(-1).mean().item()
            nll = F.nll_loss(logp[:, :-1].flatten(0, 1), rows[:, 1:].flatten()).item()
            assert score.kl == pytest.approx(kl, rel=1e-5, abs=1e-6)
            assert score.nll == pytest.approx(nll, rel=1e-6)
    assert scores[-1].kl == 0.0  # the teacher
    before = m.passes
    assert m.kl(sets[:3]) == [x.kl for x in scores[:3]] and m.passes == before  # memoised

