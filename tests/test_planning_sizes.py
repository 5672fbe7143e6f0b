"""`sizes layers/params/bytes` targets: the right entries with tied and untied heads, uneven blocks.

Config-only teachers: sizes come from the layer graph, no weights are read.
"""

from __future__ import annotations

import itertools
import json

import pytest
from tiny import config_for

from surgery.compile import compile_file
from surgery.errors import SurgeryError
from surgery.planning.choose import choose
from surgery.schedule import size_of

KEEP = "keep first 1 every 2 last 1"  # 6 layers: blocks [0,1] [2,3] [4] [5]; s0 and s1 are steps


def recipe(tmp_path, *, tied, patch, keep=KEEP, emit_dtype="fp32", layers=6):
    teacher = tmp_path / f"teacher-{'tied' if tied else 'untied'}-{layers}"
    teacher.mkdir(exist_ok=True)
    (teacher / "config.json").write_text(json.dumps(config_for("qwen3", layers, tied)))
    path = tmp_path / "r.boom"
    path.write_text(f'boom 1\nteacher "{teacher.name}" {{ dtype fp32 }}\nstudent "student" {{ {keep} }}\n'
                    f'patch {{\n{patch}\n}}\nemit "out/{{layers}}L-{{patched}}" {{ dtype {emit_dtype} }}\n')
    return compile_file(path)


def params(compiled, patched):
    return compiled.graph.size(compiled.graph.assemble(patched)).params


def test_params_target_counts_the_head_twice_once_it_is_untied(tmp_path):
    # first_to_last k=1 patches s0: teacher embeddings, student head. Tied teacher: untied, +head.
    both = {}
    for tied in (True, False):
        base = recipe(tmp_path, tied=tied, patch="order first_to_last\nsizes all")
        g = base.graph
        layer = params(base, {1}) - params(base, ())
        head = g.part_params[3]
        assert g.size(g.assemble({0})).tied is False
        target = params(base, ()) + layer + head // 2
        c = recipe(tmp_path, tied=tied, patch=f"order first_to_last\nsizes params {target}")
        both[tied] = [s.k for s in c.steps]
        assert all(params(c, s.assembly.patched) <= target for s in c.steps)
    assert both == {True: [0], False: [1]}


def test_bytes_target_is_in_the_emit_dtype(tmp_path):
    picked = {}
    for dtype in ("bf16", "fp32"):
        base = recipe(tmp_path, tied=True, patch="order last_to_first\nsizes all", emit_dtype=dtype)
        target = 4 * params(base, ())  # the student in fp32; the teacher is smaller than that in bf16
        c = recipe(tmp_path, tied=True, patch=f"order last_to_first\nsizes bytes {target}", emit_dtype=dtype)
        picked[dtype] = [s.k for s in c.steps]
        assert all(size_of(c.graph, s.assembly, "bytes", dtype) <= target for s in c.steps)
    assert picked == {"bf16": [2], "fp32": [0]}


def additive(weights):
    """A synthetic KL: each student layer left in the model adds its weight."""
    return lambda sets: [sum(w for i, w in enumerate(weights) if i not in s) for s in sets]


def test_measured_orders_pick_the_best_model_that_fits_a_params_target(tmp_path):
    base = recipe(tmp_path, tied=True, patch="order optimal\nsizes all\ncalibration text \"c/*.txt\" seq 64")
    target = params(base, {1})  # s1 alone keeps both ends on the student: still tied
    unconstrained = frozenset({1, 2, 3})  # the best 1-step model below; its head is the teacher's
    assert params(base, unconstrained) > target
    patch = f"sizes params {target}\ncalibration text \"c/*.txt\" seq 64"
    measure = additive([1.0, 5.0, 0.5, 0.2])

    opt = recipe(tmp_path, tied=True, patch="order optimal\n" + patch)
    assert [s.k for s in opt.steps] == [1]  # the schedule's bound: some 1-step model fits
    (chosen,) = choose(opt, measure, compare=()).steps
    n = opt.graph.n_student
    every = [frozenset(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)]
    fitting = [s for s in every if params(opt, s) <= target]
    assert min(every, key=lambda s: (measure([s])[0] if len(s & {0, 1}) == 1 else 99)) == unconstrained
    assert chosen.params <= target and chosen.tied
    assert measure([frozenset(chosen.patched)])[0] == min(measure(fitting))
    assert chosen.patched == (1, 2)

    # KLPatch's chain goes student, {s1}, {s0, s1}, ...: the best of it that fits is {s1}.
    greedy = recipe(tmp_path, tied=True, patch="order klpatch\n" + patch)
    (chosen,) = choose(greedy, measure, compare=()).steps
    assert chosen.patched == (1,) and chosen.step == 1


def test_layers_target_with_uneven_blocks(tmp_path):
    # blocks [0,1] [2] [3,4,5]: patching s0 adds one layer, patching s2 adds two.
    keep = "map { 0 <- 0..1\n 1 <- 2\n 2 <- 3..5 }"
    c = recipe(tmp_path, tied=False, keep=keep,
               patch="order optimal\nsizes layers 4\ncalibration text \"c/*.txt\" seq 64")
    assert [s.k for s in c.steps] == [1]  # the last patchable block alone would give 5 layers
    (chosen,) = choose(c, additive([1.0, 0.1, 3.0]), compare=()).steps
    assert chosen.depth == 4 and 0 in chosen.patched and 2 not in chosen.patched

    sequential = recipe(tmp_path, tied=False, keep=keep, patch="order last_to_first\nsizes layers 4")
    assert [s.k for s in sequential.steps] == [0]  # last_to_first's first step is 5 layers deep


def test_a_target_smaller_than_the_student_is_a_located_error(tmp_path):
    with pytest.raises(SurgeryError, match="no model fits") as err:
        recipe(tmp_path, tied=True, patch="order optimal\nsizes params 1K\ncalibration text \"c/*.txt\" seq 64")
    assert err.value.pos is not None and err.value.file is not None
