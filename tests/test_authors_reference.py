"""The compiler against what the authors' own code returns, for 1,206 shapes.

`reference/authors-layer-maps.json.gz` is `shared/reference/authors-layer-maps.json`: the
outputs of `get_layer_mappings` and `get_layer_cutoffs` (dcml-lab/boomerang-distillation) over
a grid of depths and (first, every, last) rules. Kept layers and every patch step of both
sequential orders must be equal. The alignment pairs differ on purpose in one documented
class of shapes (docs/language.md, "Where surgery's alignment pairs differ"); everywhere
else they are equal too.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from surgery import arch, layout
from surgery.graph import LayerGraph
from surgery.recipe.ast import KeepRule

CASES = json.loads(gzip.decompress((Path(__file__).parent / "reference" / "authors-layer-maps.json.gz").read_bytes()))
CASES = CASES["cases"]
LLAMA = arch.for_config({"model_type": "llama"})


def _graph(case) -> LayerGraph:
    n = case["teacher_layers"]
    blocks = layout.blocks(KeepRule(case["first"], case["every"], case["last"]), n)
    return LayerGraph(LLAMA, {"model_type": "llama", "num_hidden_layers": n, "tie_word_embeddings": False}, blocks)


def _authors_pairs(case, graph) -> set[tuple[int, int]]:
    return {(graph.n_student if s == "-1" else int(s), graph.n_teacher if t == -1 else t)
            for s, t in case["aligned_hidden_states"].items()}


def _marks_fall_short(case) -> bool:
    """The authors' marks stop before n-last: the shapes whose tail has more than `last` blocks."""
    n, first, every, last = (case[k] for k in ("teacher_layers", "first", "every", "last"))
    return max(range(first + every - 1, n - last + 1, every)) != n - last


def test_the_grid_is_whole():
    assert len(CASES) == 1206
    assert {c["every"] for c in CASES} == {2, 3, 4, 5}


def test_kept_layers_equal_the_authors():
    wrong = [(c["teacher_layers"], c["first"], c["every"], c["last"]) for c in CASES
             if list(layout.kept_by_rule(c["first"], c["every"], c["last"], c["teacher_layers"])) != c["kept"]]
    assert wrong == []
    # The example from the paper notes: the tail keeps 10 and 11 as one-layer blocks.
    assert layout.kept_by_rule(1, 3, 1, 12) == (0, 3, 6, 9, 10, 11)


@pytest.mark.parametrize("order", ["last_to_first", "first_to_last"])
def test_every_patch_step_equals_the_authors(order):
    checked = 0
    for case in CASES:
        graph = _graph(case)
        steps = case["patch_steps"][order]
        assert [s["k"] for s in steps] == list(range(1, len(graph.patchable) + 1))
        for step in steps:
            a = graph.sequential(order, step["k"])
            got = {"layers": [("T" if r.side == "teacher" else "S") + str(r.index) for r in a.layers],
                   "embeddings": a.embeddings[0].upper(), "final_norm_and_head": a.final[0].upper()}
            assert got == {k: step[k] for k in got}, (case["teacher_layers"], case["first"], case["every"],
                                                      case["last"], step["k"])
            checked += 1
    assert checked > 5000


def test_alignment_pairs_equal_the_authors_except_where_documented():
    equal = differ = 0
    for case in CASES:
        graph = _graph(case)
        ours, theirs = set(graph.aligned_pairs), _authors_pairs(case, graph)
        rule = (case["first"], case["every"], case["last"], case["teacher_layers"])
        assert set(layout.authors_aligned_pairs(*rule)) == theirs  # what audit shows as the authors' pairs
        if not _marks_fall_short(case):
            assert ours == theirs, case
            equal += 1
            continue
        differ += 1
        # Up to the last mark the pairs agree; in the tail the authors' loop starts at n-last+1
        # whatever the marks reached, so it leaves pairs out and shifts the ones it keeps.
        head = {p for p in theirs if p[1] <= max(range(case["first"] + case["every"] - 1,
                                                       case["teacher_layers"] - case["last"] + 1, case["every"]))}
        assert head <= ours
        assert (0, 0) in theirs and (graph.n_student, graph.n_teacher) in theirs
        assert len(theirs) < len(ours)
    assert (equal, differ) == (379, 827)


def test_documented_examples():
    """The two examples docs/language.md shows for the difference."""
    left_out = _graph({"teacher_layers": 4, "first": 1, "every": 2, "last": 1})
    assert left_out.aligned_pairs == ((0, 0), (1, 2), (2, 3), (3, 4))  # authors: (0,0) (1,2) (3,4)
    shifted = _graph({"teacher_layers": 5, "first": 1, "every": 2, "last": 2})
    assert shifted.aligned_pairs == ((0, 0), (1, 2), (2, 3), (3, 4), (4, 5))  # authors: (0,0) (1,2) (2,4) (4,5)


def test_audit_shows_where_the_authors_pairs_differ(tmp_path):
    from surgery.audit import build, render
    from surgery.compile import compile_file

    teacher = Path(__file__).resolve().parents[1] / "recipes" / "assets" / "tiny-teacher"  # 12 layers
    recipe = tmp_path / "r.boom"
    for rule, differs in (("first 1 every 3 last 1", True), ("first 1 every 2 last 2", False)):
        recipe.write_text(f'boom 1\nteacher "{teacher}" {{\n    dtype fp32\n}}\nstudent "s" {{\n    keep {rule}\n}}\n')
        compiled = compile_file(recipe)
        audit = build(compiled)
        assert (audit.authors_pairs is not None) == differs
        table = render(compiled, "table")
        if differs:
            assert audit.authors_pairs == ((0, 0), (1, 3), (2, 6), (3, 9), (6, 12))
            assert "the authors' get_layer_mappings aligns other pairs for this rule: it leaves out 4 ↔ 10, " \
                   "5 ↔ 11;" in table.replace("The authors'", "the authors'")
        else:
            assert "get_layer_mappings" not in table
