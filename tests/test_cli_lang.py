"""The language commands through the real CLI: check, audit, fmt, diff.

Exit status 0 when clean, 1 for user errors, 2 for usage; errors are one located line on
stderr and never a traceback. `check`, `fmt` and `diff` must not import torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_text import HEAD, write

from surgery.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAPER = [ROOT / "recipes" / f"{name}.boom" for name in
         ("qwen3-4b", "qwen3-8b", "pythia-2.8b", "pythia-6.9b", "llama-3.2-3b")]
RECIPES = sorted((ROOT / "recipes").glob("*.boom"))  # the paper's five and any others shipped
TINY = ROOT / "tests" / "recipes"
STUDENT = 'student "s" {\n    keep 0, 2, 4\n}\n'


def _surgery(*args, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "surgery", *map(str, args)], capture_output=True, text=True,
                          input=stdin, cwd=cwd, env=env, timeout=120)


# --------------------------------------------------------------------------- subprocess: the real thing


def test_check_accepts_the_paper_recipes():
    proc = _surgery("check", *PAPER)
    assert proc.returncode == 0, proc.stderr
    assert "recipes/qwen3-4b.boom: ok: 36 -> 19 layers, 17 patch steps, 17 sizes" in proc.stdout
    assert "recipes/llama-3.2-3b.boom: ok: 28 -> 15 layers, 13 patch steps, 13 sizes" in proc.stdout


@pytest.mark.parametrize("body, where, message", [
    ('boom 1\nteacher "t" {\n    dtpe fp32\n}\n', "3:5", "unexpected `dtpe`"),
    (HEAD + 'student "s" {\n    keep 0, 2, 9\n}\n', "6:16", "layer 9 is out of range"),
    (HEAD + STUDENT + 'emit "models" {\n}\n', "8:1", "the emit path has no placeholder"),
])
def test_user_errors_exit_1_with_one_located_line(tmp_path, body, where, message):
    path = write(tmp_path, body)
    proc = _surgery("check", path.name, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"r.boom:{where}: error: {message}")
    assert "Traceback" not in proc.stderr


def test_check_reports_each_bad_recipe_and_goes_on(tmp_path):
    bad = write(tmp_path, HEAD + 'student "s" {\n    keep 0, 4, 2\n}\n', "bad.boom")
    good = write(tmp_path, HEAD + STUDENT, "good.boom")
    proc = _surgery("check", bad.name, good.name, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("bad.boom:6:16: error: kept layers must be in order")
    assert proc.stdout.startswith("good.boom: ok: 6 -> 3 layers")


@pytest.mark.parametrize("args", [["check"], ["audit", "x.boom", "--format", "pdf"], ["frobnicate"], []])
def test_usage_errors_exit_2(args):
    proc = _surgery(*args)
    assert proc.returncode == 2
    assert "usage: surgery" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_audit_errors_are_located_too(tmp_path):
    path = write(tmp_path, 'boom 1\nteacher "t" {\n    dtype fp32\n    dtype bf16\n}\n' + STUDENT)
    proc = _surgery("audit", path.name, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "r.boom:4:5: error: duplicate `dtype` in `teacher`"
    assert "Traceback" not in proc.stderr


def test_audit_prints_the_released_size_offline():
    proc = _surgery("audit", "recipes/qwen3-4b.boom")
    assert proc.returncode == 0, proc.stderr
    student = next(line for line in proc.stdout.splitlines() if line.startswith("student "))
    assert "2.31B" in student and "2.7B" in student


def test_language_commands_do_not_import_torch(tmp_path):
    """check (sizes `all`), fmt, diff and the graph drawings need no torch."""
    script = (
        "import sys\n"
        "from surgery.cli import main\n"
        f"a, b = {str(PAPER[0])!r}, {str(PAPER[1])!r}\n"
        "for argv in (['check', a, b], ['fmt', '--check', a], ['diff', a, b], ['audit', a, '-f', 'dot']):\n"
        "    assert main(argv) == 0, argv\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- fmt


def test_fmt_check_passes_on_the_shipped_recipes(capsys):
    assert main(["fmt", "--check", *map(str, RECIPES)]) == 0
    assert capsys.readouterr().err == ""


def test_fmt_check_rewrite_and_diff(tmp_path, capsys):
    path = tmp_path / "r.boom"
    messy = 'boom 1\nteacher "t" { dtype fp32 }  # the teacher\nstudent "s" {\n  keep 0,2,4\n}\n'
    path.write_text(messy)
    assert main(["fmt", "--check", str(path)]) == 1
    assert capsys.readouterr().err == f"would reformat {path}\n"
    assert path.read_text() == messy
    assert main(["fmt", "--diff", str(path)]) == 0
    diff = capsys.readouterr().out
    assert "-  keep 0,2,4\n+    keep 0, 2, 4\n" in diff and path.read_text() == messy
    path.chmod(0o640)
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().err == f"reformatted {path}\n"
    assert path.read_text() == ('boom 1\n\nteacher "t" {\n    dtype fp32\n}  # the teacher\n\n'
                                'student "s" {\n    keep 0, 2, 4\n}\n')
    assert path.stat().st_mode & 0o777 == 0o640
    assert main(["fmt", "--check", str(path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.boom"]


def test_fmt_syntax_error_leaves_the_file(tmp_path, capsys):
    path = tmp_path / "r.boom"
    path.write_text('boom 1\nteacher "t" {\n')
    assert main(["fmt", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:2:14: error: unexpected end of file")
    assert path.read_text() == 'boom 1\nteacher "t" {\n'


def test_fmt_reads_stdin():
    proc = _surgery("fmt", "-", stdin='boom 1;teacher "t" {};student "s" {keep 0}')
    assert proc.returncode == 0
    assert proc.stdout == 'boom 1\n\nteacher "t" {\n}\n\nstudent "s" {\n    keep 0\n}\n'


# --------------------------------------------------------------------------- diff


def _diff(capsys, tmp_path, old: str, new: str) -> str:
    a, b = write(tmp_path, old, "a.boom"), write(tmp_path, new, "b.boom")
    assert main(["diff", str(a), str(b)]) == 0
    return capsys.readouterr().out


BASE = HEAD + 'student "s" {\n    keep 0, 2, 4\n}\ndistill {\n    data text "x"\n    loss ce 1\n    loss kl 0.1\n}\n'


def test_diff_in_reviewer_terms(tmp_path, capsys):
    new = (HEAD + 'student "s" {\n    keep 0, 3, 4\n}\ndistill {\n    data text "x"\n    loss ce 1\n'
           "    loss kl 0.2 temperature 2\n    loss cosine 2\n    tokens 1M\n    validation 1%\n}\n"
           "patch {\n    sizes 1, 2\n}\n")
    out = _diff(capsys, tmp_path, BASE, new)
    assert out == (
        "mapping:\n"
        "  student layer s0: block 0..1 -> 0..2\n"
        "  student layer s1: block 2..3 -> 3\n"
        "losses:\n"
        "  loss kl weight: 0.1 -> 0.2\n"
        "  loss kl temperature: 1 -> 2\n"
        "  loss cosine added (weight 2)\n"
        "schedule:\n"
        "  sizes all -> 1, 2\n"
        "  models no longer emitted: patched 3\n"
        "  patched 1: s2 (4 layers) -> s1..s2 (4 layers)\n"
        "  patched 2: s1..s2 (5 layers) -> s0..s2 (6 layers)\n"
        "settings:\n"
        "  distill validation: 0.5% -> 1%\n"
        "  distill tokens: unset -> 1M\n"
    )


def test_diff_of_equal_recipes(capsys):
    assert main(["diff", str(PAPER[0]), str(PAPER[0])]) == 0
    assert capsys.readouterr().out == "no differences in mapping, losses, schedule or settings\n"


def test_diff_sees_through_the_spelling_of_the_mapping(tmp_path, capsys):
    old = HEAD + 'student "s" {\n    keep first 1 every 2 last 1\n}\n'
    new = HEAD + 'student "s" {\n    map {\n' + "".join(f"        {e}\n" for e in ("0 <- 0..1", "1 <- 2..3", "2 <- 4", "3 <- 5"))
    new += "    }\n}\n"
    out = _diff(capsys, tmp_path, old, new)
    assert out == ("mapping:\n  layers written as `keep first 1 every 2 last 1` -> `map of 4 entries` "
                   "(same blocks)\n")


def test_diff_order_teacher_and_blocks(tmp_path, capsys):
    new = BASE.replace("dtype fp32", "dtype bf16").replace("loss kl 0.1\n", "").replace(
        'data text "x"', 'data jsonl "y.jsonl" field "body" weight 2') + (
        "patch {\n    order klpatch\n    calibration text \"c.txt\"\n}\nemit \"m/{layers}\" {\n}\n")
    out = _diff(capsys, tmp_path, BASE, new)
    assert "teacher:\n  teacher dtype: fp32 -> bf16\n" in out
    assert "  loss kl removed (weight 0.1)\n" in out
    assert "  order last_to_first -> klpatch\n" in out
    assert "  patched 1: s2 (4 layers) -> chosen at plan time (~4 layers)\n" in out
    assert "  emit block added\n" in out
    assert '  distill data: added jsonl "y.jsonl" field "body" weight 2\n' in out
    assert '  distill data: removed text "x"\n' in out


def test_diff_reports_a_bad_recipe_cleanly(tmp_path):
    good = write(tmp_path, BASE, "a.boom")
    bad = write(tmp_path, BASE.replace("keep 0, 2, 4", "keep 0, 2, 9"), "b.boom")
    proc = _surgery("diff", good.name, bad.name, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("b.boom:6:16: error: layer 9 is out of range")
    assert "Traceback" not in proc.stderr


def test_diff_names_the_optimal_search_settings(tmp_path, capsys):
    patch = 'patch {{\n    order optimal\n    calibration text "c.txt"\n{extra}}}\n'
    old = BASE.split("patch {")[0] + patch.format(extra="")
    new = BASE.split("patch {")[0] + patch.format(extra="    candidates 4\n    exhaustive 0\n")
    out = _diff(capsys, tmp_path, old, new)
    assert "  candidates 8 -> 4\n  exhaustive 64 -> 0\n" in out
