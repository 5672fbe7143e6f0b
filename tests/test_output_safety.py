"""Outputs never destroy what surgery did not make: dangerous paths are refused at `check`,
`--force` replaces only surgery's own directories, two sizes never share an emit path, outputs
follow the umask, and what a killed run left is cleaned up by the next run, and nothing else."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_text import HEAD, QWEN, write
from tiny import read_json, write_recipe

from surgery import outputs, schedule
from surgery.cli import main
from surgery.compile import compile_file
from surgery.errors import SurgeryError
from surgery.materialize import emit, init_student, write_model

KEEP = "keep 0, 2, 3, 5"  # blocks s0 = 0..1, s1 = 2 (one layer), s2 = 3..4, s3 = 5
STUDENT = 'student "run/student" {\n    keep 0, 2, 4\n}\n'  # lines 5-7
ONE_SIZE = "patch {\n    sizes 1\n}\n"  # lines 8-10; an emit block then opens on line 11


def _error(capsys, argv) -> str:
    """The one line `surgery ARGV` prints, after checking it failed cleanly with exit status 1."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(("error: ", "/")), err
    return err.splitlines()[0]


# ---------------------------------------------------------------------------- refused at `check`
@pytest.mark.parametrize("emit_path, message", [
    ("", "the emit path {d} holds the recipe ({d}/r.boom)"),
    (".", "the emit path {d} holds the recipe"),
    ("..", "the emit path {d.parent} holds the recipe"),
    ("/", "the emit path / holds the recipe"),
    ("r.boom", "the emit path is the recipe ({d}/r.boom)"),
    ("t", "the emit path is the teacher's directory ({d}/t)"),
    ("run/student", "the emit path is the student's directory ({d}/run/student)"),
    ("run", "the emit path {d}/run holds the student's directory ({d}/run/student)"),
    ("run/student.checkpoints", "the emit path is the student's checkpoints"),
    ("run/student/m", "the emit path {d}/run/student/m is inside the student's directory"),
    ("link", "the emit path is the teacher's directory ({d}/t)"),  # a link is followed
])
def test_dangerous_emit_paths_are_refused_at_check_with_the_line(tmp_path, capsys, emit_path, message):
    recipe = write(tmp_path, HEAD + STUDENT + ONE_SIZE + f'emit "{emit_path}" {{\n}}\n')
    (tmp_path / "link").symlink_to(tmp_path / "t")
    line = _error(capsys, ["check", str(recipe)])
    assert line.startswith(f"{recipe}:11:1: error: " + message.format(d=tmp_path)), line


# The evaluate block opens on line 14, after the one-size emit block (lines 11-12) and a blank line.
EMIT_M = 'emit "out/m" {\n}\n\n'


@pytest.mark.parametrize("report_path, message", [
    (".", "the report directory {d} holds the recipe ({d}/r.boom)"),
    ("t", "the report directory is the teacher's directory ({d}/t)"),
    ("run", "the report directory {d}/run holds the student's directory ({d}/run/student)"),
    ("run/student/report", "the report directory {d}/run/student/report is inside the student's directory"),
    ("out", "the report directory {d}/out holds the emit path ({d}/out/m)"),
    ("out/m/report", "the report directory {d}/out/m/report is inside the emit path {d}/out/m"),
    ("run/evaluation", "the report directory {d}/run/evaluation is the run directory's `evaluation` folder"),
    ("run/schedule/r", "the report directory {d}/run/schedule/r is inside the run directory's `schedule` folder"),
    ("mine", "the report directory {d}/mine is a folder surgery did not write, and report replaces it whole"),
    ("afile", "the report directory {d}/afile is a file"),
])
def test_dangerous_report_paths_are_refused_at_check_with_the_line(tmp_path, capsys, report_path, message):
    recipe = write(tmp_path, HEAD + STUDENT + ONE_SIZE + EMIT_M +
                   f'evaluate {{\n    perplexity text "t/*.txt"\n    report "{report_path}"\n}}\n')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    line = _error(capsys, ["check", str(recipe)])
    assert line.startswith(f"{recipe}:14:1: error: " + message.format(d=tmp_path)), line
    assert (tmp_path / "mine" / "notes.md").read_text() == "mine" and (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("report_path", ["run/report", "run/results", "elsewhere/report", "empty"])
def test_a_new_or_empty_report_directory_and_the_default_are_accepted(tmp_path, capsys, report_path):
    (tmp_path / "empty").mkdir()
    recipe = write(tmp_path, HEAD + STUDENT + ONE_SIZE + EMIT_M +
                   f'evaluate {{\n    perplexity text "t/*.txt"\n    report "{report_path}"\n}}\n')
    assert main(["check", str(recipe)]) == 0


@pytest.mark.parametrize("name, text", [
    ("run.yaml", "experiment: mine\n"),
    ("state.json", '{"mine": true}'),
    ("metrics.jsonl", '{"loss": 1.0}\n'),
    ("digests.json", '{"a": "mine"}'),
    ("digests.json", "not json"),
])
def test_a_run_directory_holding_a_users_run_file_is_refused_at_check(tmp_path, capsys, name, text):
    recipe = write(tmp_path, HEAD + 'student "student" {\n    keep 0, 2, 4\n}\n')  # run directory: tmp_path
    (tmp_path / name).write_text(text)
    line = _error(capsys, ["check", str(recipe)])
    assert line == (f"{recipe}:5:1: error: the run directory {tmp_path} holds a {name} that surgery did not write, "
                    f"and a run writes its own {name} there"), line
    assert (tmp_path / name).read_text() == text


def test_run_files_surgery_wrote_are_accepted(tmp_path, capsys):
    recipe = write(tmp_path, HEAD + 'student "student" {\n    keep 0, 2, 4\n}\n')
    (tmp_path / "run.yaml").write_text("surgery: 0.1.0\nrecipe: {}\n")
    (tmp_path / "state.json").write_text('{"stages": {}}')
    (tmp_path / "metrics.jsonl").write_text('{"time": "2026-12-01T00:00:00+00:00", "stage": "check"}\n')
    (tmp_path / "digests.json").write_text('{"/x": [1, 2, 3, "ab"]}')
    assert main(["check", str(recipe)]) == 0


@pytest.mark.parametrize("out, message", [
    (".", "the plan folder {d} holds the recipe ({d}/r.boom)"),
    ("t", "the plan folder is the teacher's directory ({d}/t)"),
    ("mine", "the plan folder {d}/mine is a folder surgery did not write, and plan replaces it whole"),
])
def test_plan_out_never_replaces_what_surgery_did_not_write(tmp_path, capsys, out, message):
    recipe = write(tmp_path, HEAD + STUDENT)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "schedule.json").write_text("mine")
    line = _error(capsys, ["plan", str(recipe), "--out", str(tmp_path / out), "--compare", "none"])
    assert line == "error: " + message.format(d=tmp_path), line
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["schedule.json"]
    assert main(["plan", str(recipe), "--out", str(tmp_path / "new"), "--compare", "none"]) == 0
    assert main(["plan", str(recipe), "--out", str(tmp_path / "new"), "--compare", "none"]) == 0  # its own: again
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["manifest.json", "schedule.json"]


@pytest.mark.parametrize("student_path, message", [
    ("", "the student directory {d} holds the recipe"),
    ("..", "the student directory {d.parent} holds the recipe"),
    ("t", "the student directory is the teacher's directory ({d}/t)"),
])
def test_dangerous_student_paths_are_refused_at_check(tmp_path, capsys, student_path, message):
    recipe = write(tmp_path, HEAD + f'student "{student_path}" {{\n    keep 0, 2, 4\n}}\n')
    assert _error(capsys, ["check", str(recipe)]).startswith(f"{recipe}:5:1: error: " + message.format(d=tmp_path))


def test_a_student_that_holds_the_teacher_is_refused(tmp_path, capsys):
    shutil.copytree(QWEN, tmp_path / "models" / "t")
    recipe = tmp_path / "r.boom"
    recipe.write_text('boom 1\nteacher "models/t" {\n}\nstudent "models" {\n    keep 0, 2, 4\n}\n')
    assert _error(capsys, ["check", str(recipe)]).startswith(
        f"{recipe}:4:1: error: the student directory {tmp_path}/models holds the teacher's directory")


def test_emit_onto_the_recipe_folder_with_force_deletes_nothing(tmp_path, teachers, capsys):
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP,
                          extra=ONE_SIZE + 'emit "" {\n}\n')
    (tmp_path / "notes.txt").write_text("mine")
    assert "holds the recipe" in _error(capsys, ["emit", str(recipe), "--force"])
    assert (tmp_path / "notes.txt").read_text() == "mine" and recipe.is_file()


def test_the_materializer_checks_every_output_path_however_it_was_chosen(tmp_path, teachers):
    """`build --out DIR` is not in the recipe: the writer applies the same rules."""
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP)
    compiled = compile_file(recipe)
    init_student(compiled)
    (tmp_path / "notes.txt").write_text("mine")
    for out, message in ((tmp_path, "holds the recipe"), (tmp_path / "student", "is the student's directory"),
                         (tmp_path / "student" / "x", "inside the student's directory")):
        with pytest.raises(SurgeryError, match=message) as err:
            write_model(compiled, compiled.graph.assemble((0,)), out, force=True)
        assert err.value.file is None  # a command-line path has no recipe line
        with pytest.raises(SurgeryError, match=message):
            outputs.check_output(compiled, out)
    assert (tmp_path / "notes.txt").read_text() == "mine" and read_json(tmp_path / "student" / "manifest.json")


# ---------------------------------------------------------------------------- two sizes, one path
def test_two_sizes_on_one_emit_path_are_refused_at_check(tmp_path, capsys):
    # Patching s1, a one-layer block, keeps the depth: the student and `patched s1` are both 3L.
    recipe = write(tmp_path, HEAD + STUDENT.replace("0, 2, 4", "0, 2, 3") +
                   "patch {\n    order [s1, s0]\n    sizes 0, 1\n}\n" + 'emit "m/{layers}L" {\n}\n')
    line = _error(capsys, ["check", str(recipe)])
    assert line.startswith(f"{recipe}:12:1: error: two sizes resolve to the emit path {tmp_path}/m/3L: "
                           "student (3 layers) and patched s1 (3 layers)"), line


def test_emit_refuses_two_planned_sizes_on_one_path_before_writing(tmp_path, teachers):
    """Measured orders get their layers after `check`; emit checks them again."""
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP,
                          extra=ONE_SIZE + 'emit "m/{layers}L" {\n}\n')
    compiled = compile_file(recipe)
    init_student(compiled)
    g = compiled.graph
    planned = (schedule.Step(0, g.assemble(())), schedule.Step(1, g.assemble((1,))))
    with pytest.raises(SurgeryError, match="two sizes resolve to the emit path .*/m/4L: student"):
        emit(dataclasses.replace(compiled, steps=planned), force=True)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------- --force
@pytest.fixture
def recipe(tmp_path, teachers):
    path = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP)
    init_student(compile_file(path))
    return path


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_force_refuses_what_surgery_did_not_make(recipe, tmp_path, capsys, kind):
    out = tmp_path / "out"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    if kind == "folder":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif kind == "file":
        out.write_text("years of work")
    else:  # a link, even to a directory surgery made, is not replaced
        assert main(["build", str(recipe), "--patch", "0", "--out", str(mine / "model")]) == 0
        out.symlink_to(mine / "model")
    line = _error(capsys, ["build", str(recipe), "--patch", "1", "--out", str(out), "--force"])
    what = {"folder": "a directory", "file": "a file", "link": "a symbolic link"}[kind]
    assert line == f"error: {out} is {what} without surgery's manifest.json: surgery did not make it, " \
                   "so --force will not replace it"
    assert (mine / "thesis.tex").read_text() == "years of work"
    if kind == "folder":
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    elif kind == "file":
        assert out.read_text() == "years of work"
    else:
        assert out.is_symlink() and read_json(out / "manifest.json")["patched"] == [0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_force_refuses_a_user_folder_in_place_of_the_student(tmp_path, teachers, capsys):
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP)
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "data.bin").write_bytes(b"\0" * 10)
    assert "surgery did not make it" in _error(capsys, ["init-student", str(recipe), "--force"])
    assert (tmp_path / "student" / "data.bin").read_bytes() == b"\0" * 10


def test_force_replaces_surgerys_own_output(recipe, tmp_path):
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--patch", "0", "--out", str(out)]) == 0
    assert read_json(out / "manifest.json")["stage"] == "build"
    assert main(["build", str(recipe), "--patch", "2", "--out", str(out), "--force"]) == 0
    assert read_json(out / "manifest.json")["patched"] == [2]
    assert main(["init-student", str(recipe), "--force"]) == 0  # up to date: left as it is
    (tmp_path / "student" / "model.safetensors").unlink()
    assert main(["init-student", str(recipe), "--force"]) == 0  # differs, made by surgery: replaced
    assert (tmp_path / "student" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- umask
@pytest.mark.parametrize("umask, dirs, files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_follow_the_umask(tmp_path, teachers, umask, dirs, files):
    recipe = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP,
                          student="runs/student")
    before = os.umask(umask)
    try:
        compiled = compile_file(recipe)
        made = [init_student(compiled), write_model(compiled, compiled.graph.assemble((0,)), tmp_path / "m" / "o")]
    finally:
        os.umask(before)
    for out in made:
        for path in (out.parent, out):
            assert stat.S_IMODE(path.stat().st_mode) == dirs, path
        names = sorted(p.name for p in out.iterdir())
        assert {"model.safetensors", "config.json", "manifest.json", "tokenizer.json"} <= set(names)
        for name in names:
            assert stat.S_IMODE((out / name).stat().st_mode) == files, name


# ---------------------------------------------------------------------------- leftovers
KILL_IN_WRITE = """
import os, sys
from surgery.cli import main
from surgery.materialize import writer
def killed(*args):  # as `kill -9` in the middle of a write: no cleanup runs
    os._exit(9)
writer.verify = killed
main(["build", sys.argv[1], "--patch", sys.argv[2], "--out", sys.argv[3]] + sys.argv[4:])
"""


def _killed_build(recipe, patch, out, *flags):
    done = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, str(recipe), patch, str(out), *flags],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_the_next_run_removes_what_a_killed_build_left_and_nothing_else(recipe, tmp_path):
    out = tmp_path / "o"
    _killed_build(recipe, "0", out)
    left = _hidden(tmp_path)
    assert sorted(name.rsplit(".", 1)[1] for name in left) == ["scratch", "tmp"], left
    assert all(name.startswith(".o.") for name in left) and not out.exists()
    # Names that only look like surgery's, and a link with surgery's name, are someone else's.
    others = [".o.x.tmp", ".o.abcdefgh.tmp.bak", ".oo.abcdefgh.tmp", "o.abcdefgh.tmp", ".o.abcdefgh.tmp2"]
    for name in others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep").write_text("mine")
    (tmp_path / ".o.abcdefg_.scratch").write_text("a file, not a directory surgery made")
    (tmp_path / ".o.zzzzzzzz.tmp").symlink_to(tmp_path / ".o.x.tmp")
    assert main(["build", str(recipe), "--patch", "0", "--out", str(out)]) == 0
    assert read_json(out / "manifest.json")["patched"] == [0]
    assert _hidden(tmp_path) == sorted([".o.abcdefg_.scratch", ".o.zzzzzzzz.tmp"] + [n for n in others if
                                                                                       n.startswith(".")])
    assert all((tmp_path / name / "keep").read_text() == "mine" for name in others)


def test_a_killed_forced_replace_is_finished_by_the_next_run(recipe, tmp_path):
    out = tmp_path / "o"
    assert main(["build", str(recipe), "--patch", "0", "--out", str(out)]) == 0
    _killed_build(recipe, "1", out, "--force")
    # A kill between the two renames of the swap leaves the old output aside as `.o.old`.
    out.rename(tmp_path / ".o.old")
    assert main(["build", str(recipe), "--patch", "1", "--out", str(out), "--force"]) == 0
    assert read_json(out / "manifest.json")["patched"] == [1] and _hidden(tmp_path) == []
    # A kill after the second rename leaves both: the output is whole, the old one goes.
    shutil.copytree(out, tmp_path / ".o.old")
    assert main(["build", str(recipe), "--patch", "1", "--out", str(out)]) == 0  # up to date
    assert read_json(out / "manifest.json")["patched"] == [1] and _hidden(tmp_path) == []
