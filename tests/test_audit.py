"""`surgery audit`: the paper's released sizes offline, and every output format."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from surgery import audit
from surgery.cli import main
from surgery.compile import compile_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
TINY = ROOT / "tests" / "recipes"

# The paper's released students (training-time parameters, a tied head counted once).
RELEASED = {
    "qwen3-4b": (36, 19, 2.3e9),
    "qwen3-8b": (36, 19, 4.9e9),
    "pythia-2.8b": (32, 17, 1.6e9),
    "pythia-6.9b": (32, 17, 3.8e9),
    "llama-3.2-3b": (28, 15, 1.9e9),
}


def _audit(capsys, recipe, *args) -> str:
    assert main(["audit", str(recipe), *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", RELEASED)
def test_released_student_sizes_within_one_percent(capsys, name):
    teacher_layers, student_layers, released = RELEASED[name]
    data = json.loads(_audit(capsys, RECIPES / f"{name}.boom", "--format", "json"))
    assert data["teacher"]["layers"] == teacher_layers
    assert data["student"]["layers"] == student_layers
    assert abs(data["student"]["params"] - released) / released < 0.01
    student_row = next(line for line in _audit(capsys, RECIPES / f"{name}.boom").splitlines()
                       if line.startswith("student "))
    assert student_row.split()[-3] == f"{data['student']['params'] / 1e9:.3g}B"


def test_qwen3_4b_training_and_untied_counts(capsys):
    data = json.loads(_audit(capsys, RECIPES / "qwen3-4b.boom", "-f", "json"))
    s = data["student"]
    assert s["tied"] and round(s["params"] / 1e9, 2) == 2.31 and round(s["params_untied"] / 1e9, 2) == 2.70
    assert s["params_untied"] - s["params"] == data["head_params"]


def test_table_holds_every_section(capsys):
    out = _audit(capsys, RECIPES / "qwen3-4b.boom")
    assert "teacher Qwen/Qwen3-4B-Base (qwen3, " in out  # a bundled config, or one in the HF cache
    assert "2.31B" in out and "4.02B" in out
    row = next(line for line in out.splitlines() if line.startswith("s16 "))
    assert row.split()[:6] == ["s16", "32..33", "32", "17", "↔", "34"]
    first_size = next(line for line in out.splitlines() if line.strip().startswith("1  s16..s18"))
    assert first_size.split()[2] == "20"  # depth
    assert "runs/qwen3-4b/models/20L" in first_size


def test_markdown_tables_for_review(capsys):
    out = _audit(capsys, RECIPES / "llama-3.2-3b.boom", "--format", "markdown")
    assert out.startswith("### Audit of ")
    assert "| student | teacher block | init from | aligned pair (S ↔ T) | params | block params |" in out
    assert "| s1 | 1..2 | 1 | 2 ↔ 3 |" in out
    assert "| s14 | 27 | 27 | 15 ↔ 28 (after final norm) |" in out
    schedule = out[out.index("#### Patch schedule"):]
    rows = [line for line in schedule.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 13
    assert rows[0].startswith("| 1 | s0..s1 | 16 |")
    tables = "\n".join(line if line.startswith("|") else "" for line in out.splitlines()).split("\n\n")
    for table in filter(None, (t.strip() for t in tables)):  # each row has as many cells as its header
        assert len({line.count("|") for line in table.splitlines()}) == 1


def test_rows_agree_with_the_graph():
    compiled = compile_file(TINY / "rule.boom")
    a = audit.build(compiled)
    g = compiled.graph
    for row, step in zip(a.sizes, compiled.steps):
        size = g.size(step.assembly)
        assert (row.depth, row.params, row.tied) == (step.assembly.depth, size.params, size.tied)
        assert row.bytes == size.params * 2  # emit dtype bf16
        assert row.patched == tuple(sorted(step.assembly.patched))
    assert [r.block for r in a.mapping] == [b.teacher for b in g.blocks]
    assert [r.aligned for r in a.mapping] == list(g.aligned_pairs[1:])
    per_layer = g.part_params[0]
    assert all(r.block_params == sum(per_layer[t] for t in r.block) for r in a.mapping)


def test_measured_order_is_shown_as_chosen_at_plan_time(capsys):
    out = _audit(capsys, TINY / "klpatch.boom")
    sizes = out[out.index("patch schedule"):]
    assert sizes.count("chosen by klpatch at plan time") == 2
    assert "~" in sizes
    data = json.loads(_audit(capsys, TINY / "klpatch.boom", "-f", "json"))
    assert [r["patched"] for r in data["sizes"]] == [None, None]
    assert data["measured"] is True and [r["steps"] for r in data["sizes"]] == [1, 3]


def test_json_and_yaml_hold_the_same_data(capsys):
    as_json = json.loads(_audit(capsys, TINY / "map.boom", "-f", "json"))
    as_yaml = yaml.safe_load(_audit(capsys, TINY / "map.boom", "-f", "yaml"))
    assert as_json == as_yaml
    kinds = {e["kind"] for e in as_json["graph"]["edges"]}
    assert kinds == {"flow", "replaces", "aligns", "init"}
    assert len(as_json["graph"]["nodes"]) == 6 + 3 + 4


def test_dot_names_every_edge(capsys):
    out = _audit(capsys, TINY / "map.boom", "-f", "dot")
    g = compile_file(TINY / "map.boom").graph
    assert out.startswith("digraph ") and out.rstrip().endswith("}")
    edges = [line for line in out.splitlines() if " -> " in line]
    assert len(edges) == g.graph.number_of_edges()
    assert '"S.L1" -> "T.L3" [class=aligns' in out
    assert '"T.L1" -> "S.L1" [class=init' in out
    assert out.count("class=replaces") == 6
    assert 'label="s1\\n← 1..3"' in out


def test_mermaid_flowchart(capsys):
    out = _audit(capsys, TINY / "keep.boom", "-f", "mermaid")
    g = compile_file(TINY / "keep.boom").graph
    assert "flowchart BT" in out
    edges = [line for line in out.splitlines() if re.fullmatch(r"  \w+ [-.=>|0-9↔]+ \w+", line)]
    assert len(edges) == g.graph.number_of_edges()
    assert "  T_L2 ==> S_L1" in out


def test_svg_and_png_pictures(tmp_path, capsys):
    svg = _audit(capsys, TINY / "keep.boom", "-f", "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "s2" in svg and "t5" in svg
    png = tmp_path / "graph.png"
    assert main(["audit", str(TINY / "keep.boom"), "-f", "png", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_needs_an_output_file(capsys):
    assert main(["audit", str(TINY / "keep.boom"), "-f", "png"]) == 2
    assert "--output" in capsys.readouterr().err


def test_output_file_is_written_whole(tmp_path, capsys):
    out = tmp_path / "audit.md"
    assert main(["audit", str(TINY / "keep.boom"), "-f", "markdown", "-o", str(out)]) == 0
    assert out.read_text() == audit.render(compile_file(TINY / "keep.boom"), "markdown", str(TINY / "keep.boom"))
    assert [p.name for p in tmp_path.iterdir()] == ["audit.md"]  # no temporary file left behind


def test_layer_ranges():
    assert audit.layer_ranges([5, 0, 1, 2]) == "0..2, 5"
    assert audit.layer_ranges([3], "s") == "s3"
    assert audit.layer_ranges([16, 17, 18], "s") == "s16..s18"
    assert audit.layer_ranges([]) == "none"
