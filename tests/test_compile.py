"""Compiling recipes to the layer graph: blocks, aligned pairs, the graph, the schedule.

Everything here reads config.json only: the paper's teachers come from the bundled configs,
the tiny ones from tests/recipes/teachers (directories holding nothing but config.json).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from recipe_text import HEAD, LLAMA_TIED, write

from surgery import layout
from surgery.compile import compile_file
from surgery.graph import STUDENT, TEACHER, node
from surgery.recipe.ast import KeepRule

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TINY = ROOT / "tests" / "recipes"


PAPER = ("qwen3-4b", "qwen3-8b", "pythia-2.8b", "pythia-6.9b", "llama-3.2-3b")


@pytest.fixture(scope="module")
def paper():
    return {name: compile_file(RECIPES / f"{name}.boom") for name in PAPER}


# --------------------------------------------------------------------------- layout


def test_paper_rule_keeps_the_published_layers():
    assert layout.kept_by_rule(1, 2, 2, 36) == (0, *range(2, 35, 2), 35)
    assert layout.kept_by_rule(1, 2, 2, 32) == (0, *range(2, 31, 2), 31)
    assert layout.kept_by_rule(2, 2, 1, 28) == (0, 1, *range(3, 26, 2), 27)


@pytest.mark.parametrize("name, teacher, student, steps", [
    ("qwen3-4b", 36, 19, 17), ("qwen3-8b", 36, 19, 17), ("pythia-2.8b", 32, 17, 15),
    ("pythia-6.9b", 32, 17, 15), ("llama-3.2-3b", 28, 15, 13),
])
def test_paper_depths_and_steps(paper, name, teacher, student, steps):
    g = paper[name].graph
    assert (g.n_teacher, g.n_student, len(g.patchable)) == (teacher, student, steps)
    assert len(paper[name].steps) == steps  # `sizes all`


def test_blocks_cover_the_teacher_in_order(paper):
    for compiled in paper.values():
        g = compiled.graph
        flat = [t for b in g.blocks for t in b.teacher]
        assert flat == list(range(g.n_teacher))
        assert [b.student for b in g.blocks] == list(range(g.n_student))
        assert g.kept == tuple(b.teacher[0] for b in g.blocks)
        assert sorted(g.kept + g.pruned) == list(range(g.n_teacher))


def test_explicit_list_equals_the_rule(paper):
    """qwen3-4b.boom spells the layers out; qwen3-8b.boom uses the rule: same blocks."""
    assert isinstance(paper["qwen3-8b"].recipe.student.layers, KeepRule)
    assert paper["qwen3-4b"].graph.blocks == paper["qwen3-8b"].graph.blocks


def test_map_gives_uneven_blocks():
    g = compile_file(TINY / "map.boom").graph
    assert [b.teacher for b in g.blocks] == [(0,), (1, 2, 3), (4, 5)]
    assert [b.init for b in g.blocks] == [0, 1, 4]
    assert g.patchable == (1, 2)


# --------------------------------------------------------------------------- aligned pairs


def test_qwen3_4b_aligned_pairs(paper):
    pairs = paper["qwen3-4b"].graph.aligned_pairs
    assert len(pairs) == 20
    assert pairs == ((0, 0), *((i, 2 * i) for i in range(1, 18)), (18, 35), (19, 36))


def test_aligned_pairs_follow_block_ends():
    g = compile_file(TINY / "map.boom").graph
    assert g.aligned_pairs == ((0, 0), (1, 1), (2, 4), (3, 6))


# --------------------------------------------------------------------------- the graph


def test_graph_nodes_and_edge_kinds():
    g = compile_file(TINY / "map.boom").graph  # 6 teacher layers, blocks 0 | 1..3 | 4..5
    G = g.graph
    assert isinstance(G, nx.DiGraph)
    assert set(G.nodes) == ({"T.embed", "T.final", "S.embed", "S.final"}
                            | {f"T.L{i}" for i in range(6)} | {f"S.L{i}" for i in range(3)})
    by_kind = {}
    for u, v, k in G.edges(keys=True):
        by_kind.setdefault(k, set()).add((u, v))
    assert by_kind["replaces"] == {("S.L0", "T.L0"), ("S.L1", "T.L1"), ("S.L1", "T.L2"), ("S.L1", "T.L3"),
                                   ("S.L2", "T.L4"), ("S.L2", "T.L5")}
    assert by_kind["init"] == {("T.L0", "S.L0"), ("T.L1", "S.L1"), ("T.L4", "S.L2"), ("T.embed", "S.embed"),
                               ("T.final", "S.final")}
    assert by_kind["aligns"] == {("S.embed", "T.embed"), ("S.L0", "T.L0"), ("S.L1", "T.L3"), ("S.final", "T.final")}
    hidden = {(u, v): d["hidden"] for u, v, k, d in G.edges(keys=True, data=True) if k == "aligns"}
    assert sorted(hidden.values()) == sorted(g.aligned_pairs)
    # forward order inside each model, plus a crossing each way at each block boundary
    within = {("T.embed", "T.L0"), *((f"T.L{i}", f"T.L{i + 1}") for i in range(5)), ("T.L5", "T.final"),
              ("S.embed", "S.L0"), ("S.L0", "S.L1"), ("S.L1", "S.L2"), ("S.L2", "S.final")}
    crossings = {("S.L0", "T.L1"), ("T.L0", "S.L1"), ("S.L1", "T.L4"), ("T.L3", "S.L2")}
    assert by_kind["flow"] == within | crossings


def test_every_model_is_a_path_and_every_path_a_model():
    g = compile_file(TINY / "map.boom").graph
    flow = g.flow_graph()
    models = {tuple(g.path(p)) for p in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}
    paths = {tuple(p) for src in ("T.embed", "S.embed") for dst in ("T.final", "S.final")
             for p in nx.all_simple_paths(flow, src, dst)}
    assert models == paths  # 2 choices per block, 3 blocks
    assert all(nx.is_path(flow, list(p)) for p in models)


def test_assembly_sides_of_embeddings_and_head():
    g = compile_file(TINY / "map.boom").graph
    a = g.assemble({0})
    assert (a.embeddings, a.final) == (TEACHER, STUDENT)
    a = g.assemble({2})
    assert (a.embeddings, a.final) == (STUDENT, TEACHER)
    assert g.path(a.patched)[-3:] == [node(TEACHER, 4), node(TEACHER, 5), node(TEACHER, "final")]
    # The assembly is read off its path: every layer node on it, in order.
    assert [node(r.side, r.index) for r in a.layers] == g.path(a.patched)[1:-1]
    assert g.teacher.depth == 6 and g.student.depth == 3


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("name, order", [("qwen3-4b", "last_to_first"), ("pythia-2.8b", "last_to_first"),
                                         ("llama-3.2-3b", "first_to_last")])
def test_paper_schedules_grow_one_layer_per_step(paper, name, order):
    compiled = paper[name]
    g = compiled.graph
    assert compiled.recipe.patch.order == order
    depths = [s.assembly.depth for s in compiled.steps]
    assert [s.k for s in compiled.steps] == list(range(1, len(g.patchable) + 1))
    assert depths == list(range(g.n_student + 1, g.n_teacher + 1))
    assert compiled.steps[-1].assembly.patched == frozenset(range(g.n_student))  # the last step is the teacher
    side = "final" if order == "last_to_first" else "embeddings"
    assert all(getattr(s.assembly, side) == TEACHER for s in compiled.steps)


def test_last_to_first_patches_the_suffix(paper):
    first = paper["qwen3-4b"].steps[0].assembly
    assert first.patched == frozenset({16, 17, 18})  # s16's block 32..33, then the one-layer blocks 34, 35
    assert first.depth == 20


def test_sizes_by_count_layers_params_and_bytes(tmp_path):
    base = HEAD + 'student "s" {\n    keep first 1 every 2 last 1\n}\n'  # 6 layers -> blocks 0..1, 2..3, 4, 5
    def steps(sizes):
        return [s.k for s in compile_file(write(tmp_path, base + f"patch {{\n    {sizes}\n}}\n")).steps]
    assert steps("sizes 0, 2") == [0, 2]
    assert steps("sizes layers 5, 6") == [1, 2]
    g = compile_file(write(tmp_path, base)).graph
    one = g.size(g.sequential("last_to_first", 1))
    assert steps(f"sizes params {one.params}") == [1]
    assert steps(f"sizes params {one.params - 1}") == [0]
    assert steps(f"sizes bytes {one.bytes('fp32')}") == [1]  # no emit block: the teacher's dtype
    assert steps(f"sizes bytes {one.bytes('fp32') - 1}") == [0]


def test_a_tied_teacher_can_be_smaller_than_a_patched_model(tmp_path):
    """Untying the head can cost more than a layer: a params budget may then fit the teacher."""
    base = HEAD + 'student "s" {\n    keep first 1 every 2 last 2\n}\n'  # 8 tied layers -> 0, 2, 4, 6, 7
    g = compile_file(write(tmp_path, base, teacher=LLAMA_TIED)).graph
    two, teacher = g.size(g.sequential("last_to_first", 2)), g.size(g.teacher)
    assert not two.tied and teacher.tied and teacher.params < two.params
    budget = write(tmp_path, base + f"patch {{\n    sizes params {two.params}\n}}\n", teacher=LLAMA_TIED)
    assert [s.k for s in compile_file(budget).steps] == [3]


def test_explicit_order_list(tmp_path):
    compiled = compile_file(TINY / "map.boom")  # order [s2, s1], sizes layers 5, 6
    assert [sorted(s.assembly.patched) for s in compiled.steps] == [[2], [1, 2]]


def test_measured_order_leaves_sets_to_the_planner():
    compiled = compile_file(TINY / "klpatch.boom")
    assert [s.k for s in compiled.steps] == [1, 3]
    assert all(s.assembly is None for s in compiled.steps)


# --------------------------------------------------------------------------- config only, sizes, paths


def test_compiles_from_config_json_alone():
    compiled = compile_file(TINY / "keep.boom")
    assert sorted(p.name for p in compiled.teacher.directory.iterdir()) == ["config.json"]
    assert not compiled.teacher.has_weights
    assert compiled.teacher.origin == "local"


def test_bundled_configs_serve_hub_ids(paper):
    assert {c.teacher.origin for c in paper.values()} <= {"bundled", "hf-cache"}


def test_tied_head_counted_once_until_sides_differ():
    g = compile_file(TINY / "rule.boom").graph  # tied teacher
    student, teacher = g.size(g.student), g.size(g.teacher)
    per_layer, embeddings, final, head = g.part_params
    assert student.tied and teacher.tied
    assert student.params_untied - student.params == head == embeddings
    mixed = g.size(g.assemble({g.n_student - 1}))  # head from the teacher, embeddings from the student
    assert not mixed.tied and mixed.params == mixed.params_untied
    assert teacher.params == sum(per_layer) + embeddings + final


def test_emit_paths_fill_placeholders():
    compiled = compile_file(TINY / "map.boom")
    assert [compiled.emit_dir(s.assembly).name for s in compiled.steps] == ["s2", "s1-s2"]
    compiled = compile_file(TINY / "rule.boom")
    first = compiled.steps[0].assembly
    assert compiled.emit_dir(first).name.startswith(f"{first.depth}L-")
    assert compiled.student_dir == (TINY / "runs" / "rule" / "student").resolve()
