"""Naive pruning: the teacher with the same layers dropped, built from the untrained pruned student."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from surgery.compile import compile_file
from surgery import outputs
from surgery.evaluate import baseline
from tiny import write_recipe


@pytest.mark.parametrize("init", ["teacher", "random"])
def test_naive_model_is_the_teacher_with_layers_dropped(teachers, tmp_path, init):
    teacher_dir = teachers("qwen3", layers=6, tied=True)
    recipe = write_recipe(tmp_path / "r.boom", teacher_dir, keep=f"keep first 1 every 2 last 1\n    init {init}",
                          student="run/student")
    compiled = compile_file(recipe)
    g = compiled.graph
    run_dir = compiled.student_dir.parent

    pruned = baseline.write_pruned_student(compiled, run_dir / outputs.PRUNED_STUDENT)
    assert pruned == (run_dir / "pruned-student").resolve()
    # A "distilled" student: the recipe's student directory, with every tensor changed.
    from surgery.materialize import init_student

    init_student(compiled)
    for f in compiled.student_dir.glob("*.safetensors"):
        save_file({k: v + 0.01 for k, v in load_file(f).items()}, f, metadata={"format": "pt"})

    assembly = g.assemble([g.patchable[-1]])  # the last patchable block patched: embeddings from the student
    naive = baseline.write_naive(compiled, assembly, pruned, run_dir)
    assert naive == baseline.naive_dir(run_dir, assembly).resolve() and naive.name == f"{assembly.depth}L"

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    origins = [r.index if r.side == "teacher" else g.blocks[r.index].init for r in assembly.layers]
    teacher.model.layers = torch.nn.ModuleList(teacher.model.layers[i] for i in origins)
    teacher.config.num_hidden_layers = len(origins)
    model = AutoModelForCausalLM.from_pretrained(naive, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == len(origins) < g.n_teacher
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, teacher(ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)

    # The same assembly from the distilled student differs: the baseline really skipped training.
    from surgery.materialize import write_model

    ours = AutoModelForCausalLM.from_pretrained(write_model(compiled, assembly, tmp_path / "ours"), dtype=torch.float32)
    with torch.no_grad():
        assert not torch.allclose(ours(ids).logits, model(ids).logits, atol=1e-3)

    before = {p: p.stat().st_mtime_ns for p in naive.iterdir()}
    assert baseline.write_naive(compiled, assembly, pruned, run_dir) == naive  # up to date: left alone
    assert {p: p.stat().st_mtime_ns for p in naive.iterdir()} == before
