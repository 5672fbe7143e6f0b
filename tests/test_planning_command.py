"""`surgery plan` end to end: a tiny recipe with weights, a paper recipe without, a missing student."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from planning_student import save_student
from tiny import CORPUS, write_recipe

from surgery.cli import main
from surgery.compile import compile_file

REPO = Path(__file__).resolve().parents[1]
PATCH = 'patch {{\n    order {order}\n    sizes all\n    calibration text "cal/*.txt" samples 6 seq 32\n}}'


@pytest.fixture(scope="module")
def tiny(teachers, tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    (d / "cal").mkdir()
    (d / "cal" / "a.txt").write_text(CORPUS * 3)
    teacher = teachers("qwen3", layers=8, tied=True)
    recipe = write_recipe(d / "r.boom", teacher, extra=PATCH.format(order="klpatch"))
    save_student(teacher, compile_file(recipe).graph, d / "student")
    return d, teacher


def test_plan_measures_every_order_and_writes_json_and_a_plot(tiny, capsys):
    d, _ = tiny
    assert main(["plan", str(d / "r.boom"), "--out", str(d / "out"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "order klpatch" in printed and "KL" in printed
    result = json.loads((d / "out" / "schedule.json").read_text())
    assert (d / "out" / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    g = compile_file(d / "r.boom").graph
    n = len(g.patchable)
    assert set(result["curves"]) == {"last_to_first", "first_to_last", "klpatch", "optimal"}
    for name, curve in result["curves"].items():
        assert [e["step"] for e in curve] == list(range(n + 1))
        assert all(e["kl"] >= 0 for e in curve)
    for name in ("last_to_first", "first_to_last"):
        assert result["curves"][name][0]["kl"] > 0.001  # the student
        assert result["curves"][name][-1]["kl"] == 0.0  # the teacher
    # The recipe's steps are klpatch's best of each step, with measured KL and exact sizes.
    steps = result["steps"]
    assert [e["step"] for e in steps] == list(range(1, n + 1))
    assert [(e["patched"], e["kl"]) for e in steps] == [(e["patched"], e["kl"]) for e in result["curves"]["klpatch"][1:]]
    for e in steps:
        size = g.size(g.assemble(e["patched"]))
        assert (e["params"], e["tied"], e["bytes"]) == (size.params, size.tied, size.bytes("fp32"))
    assert result["calibration"]["rows"] == 6 and result["calibration"]["passes"] > 0
    # optimal's additive model is exact for a model with one student layer.
    for e in result["curves"]["optimal"]:
        if len(e["patched"]) == g.n_student - 1:
            assert e["predicted"] == pytest.approx(e["kl"], rel=1e-6)


def test_plan_of_a_paper_recipe_gives_sizes_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", str(REPO / "recipes" / "qwen3-4b.boom"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "planned sizes only" in printed
    result = json.loads((tmp_path / "schedule.json").read_text())
    assert [e["step"] for e in result["steps"]] == list(range(1, 18))
    assert result["steps"][-1]["depth"] == 36 and result["steps"][-1]["tied"]
    assert result["steps"][0]["kl"] is None and result["curves"] == {}
    assert not (tmp_path / "schedule.png").exists()


def test_a_measured_order_without_a_student_is_a_one_line_error(teachers, tmp_path, capsys):
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "a.txt").write_text(CORPUS)
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=8, tied=True),
                          extra=PATCH.format(order="optimal"))
    assert main(["plan", str(recipe), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert re.match(r".*r\.boom:\d+:1: error: cannot plan `order optimal`: no student weights", err)
    assert "Traceback" not in err
