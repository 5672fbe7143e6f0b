"""The stages compose by hand: plan -> emit, build by step or depth, evaluate what was emitted.

Each stage's artifact carries a manifest of what it was made from; the next stage refuses a
missing or stale one in one line, and every stage that reads the student checks that it holds
the teacher layers the recipe names (student_config.json, as surgery and the authors write it).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from planning_student import save_student
from tiny import CORPUS, read_json, write_recipe

from surgery.cli import main
from surgery.compile import compile_file
from surgery.artifact import MANIFEST
from surgery.errors import SurgeryError
from surgery.stages import Context
from surgery.stages import report as report_stage

BLOCKS = """patch {
    order klpatch
    sizes all
    calibration text "cal/*.txt" samples 4 seq 32
}

emit "run/models/{layers}L" {
    dtype fp32
}

evaluate {
    perplexity text "cal/*.txt" seq 32 stride 32
}"""


@pytest.fixture
def recipe(teachers, tmp_path):
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "a.txt").write_text(CORPUS * 2)
    teacher = teachers("qwen3", layers=8, tied=True)
    path = write_recipe(tmp_path / "r.boom", teacher, student="run/student", extra=BLOCKS)
    save_student(teacher, compile_file(path).graph, tmp_path / "run" / "student")
    return path


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _patched(model_dir) -> list[int]:
    return read_json(model_dir / MANIFEST)["patched"]


def test_plan_then_emit_emits_the_planned_sizes(recipe, capsys):
    assert main(["emit", str(recipe)]) == 1
    assert re.search(r"r\.boom: error: no plan output at .*run/schedule\n  hint: run `surgery plan .*r\.boom` first",
                     _err(capsys))
    assert main(["plan", str(recipe), "--compare", "none", "--device", "cpu"]) == 0
    planned = read_json(recipe.parent / "run" / "schedule" / "schedule.json")["steps"]
    assert len(planned) == 3 and all(s["kl"] is not None for s in planned)
    capsys.readouterr()
    assert main(["emit", str(recipe)]) == 0
    dirs = capsys.readouterr().out.split()
    assert [_patched(recipe.parent / d) for d in dirs] == [s["patched"] for s in planned]
    assert [read_json(recipe.parent / d / "config.json")["num_hidden_layers"] for d in dirs] == \
        [s["depth"] for s in planned]


def test_emit_counts_its_models_on_the_console(recipe):
    import io

    from rich.console import Console

    from surgery.stages import emit

    assert main(["plan", str(recipe), "--compare", "none", "--device", "cpu"]) == 0
    screen = io.StringIO()
    made = emit.run(Context(compile_file(recipe), Console(file=screen, force_terminal=True, width=100)))
    models = made.manifest["outputs"]["models"]
    last = compile_file(recipe).graph.assemble(models[-1]["patched"]).name
    assert len(models) == 3
    assert f"emit {last}" in screen.getvalue() and "3/3" in screen.getvalue()


def test_build_names_a_size_of_the_plan_by_step_or_depth(recipe, tmp_path, capsys):
    assert main(["build", str(recipe), "--step", "2", "--out", str(tmp_path / "x")]) == 1
    assert "no plan output at" in _err(capsys)
    assert main(["plan", str(recipe), "--compare", "none", "--device", "cpu"]) == 0
    planned = read_json(recipe.parent / "run" / "schedule" / "schedule.json")["steps"]
    assert main(["build", str(recipe), "--step", "2", "--out", str(tmp_path / "by-step")]) == 0
    assert _patched(tmp_path / "by-step") == planned[1]["patched"]
    assert main(["build", str(recipe), "--layers", str(planned[1]["depth"]), "--out", str(tmp_path / "by-depth")]) == 0
    assert _patched(tmp_path / "by-depth") == planned[1]["patched"]
    assert main(["build", str(recipe), "--step", "9", "--out", str(tmp_path / "none")]) == 1
    assert "the plan has no step 9" in _err(capsys)


def test_evaluate_scores_what_emit_wrote_and_finds_stale_artifacts(recipe, teachers, capsys):
    assert main(["plan", str(recipe), "--compare", "none", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["emit", str(recipe)]) == 0
    emitted = capsys.readouterr().out.split()
    assert main(["evaluate", str(recipe)]) == 0
    evaluation = read_json(recipe.parent / "run" / "evaluation" / "evaluation.json")
    scored = [m["dir"] for m in evaluation["models"] if m["kind"] != "student"]  # the last size is the teacher
    assert scored == [str(recipe.parent / d) for d in emitted]
    assert all(m["scores"]["perplexity"] > 1 for m in evaluation["models"])

    # The report is written whole each time, over its own folder and never over another.
    folder = recipe.parent / "run" / "report"
    assert main(["evaluate", str(recipe)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["curve.png", "manifest.json", "results.json", "results.md"]
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".report")]
    compiled = compile_file(recipe)
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "results.md").write_text("mine")  # appears after the check, before the write
    with pytest.raises(SurgeryError, match="is a folder surgery did not write, and report replaces it whole"):
        report_stage.run(Context(compiled))
    assert [p.name for p in folder.iterdir()] == ["results.md"] and (folder / "results.md").read_text() == "mine"
    shutil.rmtree(folder)

    # Another student in the same place: everything made from the old one is stale.
    save_student(teachers("qwen3", layers=8, tied=True), compile_file(recipe).graph,
                 recipe.parent / "run" / "student", seed=7)
    capsys.readouterr()
    assert main(["emit", str(recipe)]) == 1
    assert re.search(r"error: the plan output at .*run/schedule is stale: it was made from another student\n"
                     r"  hint: run `surgery plan .*` again", _err(capsys))
    assert main(["evaluate", str(recipe)]) == 1
    assert re.search(r"error: the plan output at .* is stale", _err(capsys))


def test_a_student_of_other_teacher_layers_is_refused_by_every_stage(recipe, capsys):
    config = recipe.parent / "run" / "student" / "student_config.json"
    config.write_text(json.dumps({"copied_teacher_layers": [0, 1, 3, 5, 7], "pruned_teacher_layers": [2, 4, 6]}))
    for argv in (["plan", str(recipe), "--compare", "none"], ["build", str(recipe), "--patch", "1", "--out",
                                                               str(recipe.parent / "x")],
                 ["distill", str(recipe)]):
        assert main(argv) == 1, argv
        err = _err(capsys)
        assert re.search(r"r\.boom:8:5: error: the student in .*run/student was made from teacher layers "
                         r"\[0, 1, 3, 5, 7\], but the recipe keeps \[0, 2, 4, 6, 7\]\n"
                         r" +keep first 1 every 2 last 1\n +\^", err), (argv, err)
    assert not (recipe.parent / "x").exists()


def test_a_student_without_its_layer_record_is_refused(recipe, capsys):
    (recipe.parent / "run" / "student" / "student_config.json").unlink()
    assert main(["build", str(recipe), "--patch", "0", "--out", str(recipe.parent / "x")]) == 1
    assert "student_config.json does not say which teacher layers the student holds" in _err(capsys)
