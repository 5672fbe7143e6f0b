"""`surgery run`: stages record what they consumed, skip when still valid, rerun when not, resume."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from surgery.cli import main
from surgery.compile import compile_file
from surgery.errors import SurgeryError
from surgery.evaluate import suite
from surgery.pipeline import STAGES, run_pipeline
from tiny import CORPUS, write_recipe

EVALUATE = """patch {{
    order last_to_first
    sizes all
}}

emit "run/models/{{layers}}L" {{
    dtype fp32
}}

evaluate {{
    perplexity text "held-out/*.txt" seq 32 stride {stride}
    {baseline}
    report "run/report"
}}"""


def make_recipe(tmp_path, teacher, stride=16, baseline=True):
    (tmp_path / "held-out").mkdir(exist_ok=True)
    (tmp_path / "held-out" / "a.txt").write_text(CORPUS)
    return write_recipe(tmp_path / "r.boom", teacher, student="run/student",
                        extra=EVALUATE.format(stride=stride, baseline="baseline naive_pruning" if baseline else ""))


def run(recipe, **kw) -> str:
    out = io.StringIO()
    run_pipeline(compile_file(recipe), console=Console(file=out, width=200), **kw)
    return out.getvalue()


def statuses(log: str) -> dict[str, str]:
    """stage -> 'up to date' | 'running' | 'resuming' | 'skipped', from the run's stage lines."""
    out = {}
    for line in log.splitlines():
        for stage in STAGES:
            if line.strip().startswith("[") and f"] {stage} " in line + " ":
                tail = line.split(stage, 1)[1].strip()
                out[stage] = ("up to date" if "up to date" in tail else "running" if "running" in tail
                              else "resuming" if "resuming" in tail else "done" if tail.startswith("✓") else "skipped")
    return out


def mtimes(directory):
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def teacher(teachers):
    return teachers("qwen3", layers=6, tied=True)


def test_run_writes_everything_and_a_rerun_skips_it(teacher, tmp_path):
    recipe = make_recipe(tmp_path, teacher)
    log = run(recipe)
    assert statuses(log)["distill"] == statuses(log)["prepare"] == "skipped"  # this recipe has no distill block
    run_dir = tmp_path / "run"
    for name in ("run.yaml", "metrics.jsonl", "state.json", "evaluation/evaluation.json", "report/results.json",
                 "report/results.md", "report/curve.png", "pruned-student/config.json", "models/5L/config.json",
                 "naive-pruning/5L/config.json"):
        assert (run_dir / name).is_file(), name
    state = json.loads((run_dir / "state.json").read_text())["stages"]
    assert {s for s, r in state.items() if r["status"] == "done"} == set(STAGES) - {"prepare", "distill"}
    assert state["init-student"]["inputs"]["teacher"]  # a digest of the teacher's files
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert [(m["name"], m["depth"]) for m in results["models"]] == [("student", 4), ("5L", 5), ("teacher", 6)]
    assert results["models"][1]["naive"]["dir"].endswith("naive-pruning/5L")

    before = mtimes(run_dir)
    log = run(recipe)
    assert set(statuses(log).values()) == {"up to date", "skipped"}
    changed = {p for p, t in mtimes(run_dir).items() if before.get(p) != t}
    assert {p.name for p in changed} <= {"state.json", "run.yaml"}  # records only; no model or report rewritten


def test_changed_inputs_rerun_exactly_the_stages_that_read_them(teacher, tmp_path):
    recipe = make_recipe(tmp_path, teacher)
    run(recipe)
    models = mtimes(tmp_path / "run" / "models")

    for changed in (dict(stride=8), dict(stride=8, baseline=False)):  # the evaluate block changed
        make_recipe(tmp_path, teacher, **changed)
        got = statuses(run(recipe))
        assert got["check"] == got["evaluate"] == got["report"] == "done"
        assert got["init-student"] == got["plan"] == got["emit"] == "up to date"
        assert mtimes(tmp_path / "run" / "models") == models
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    assert all(m["naive"] is None for m in results["models"])

    (tmp_path / "held-out" / "a.txt").write_text(CORPUS + " And one more line.")  # the held-out text changed
    got = statuses(run(recipe))
    assert got["evaluate"] == "done" and got["emit"] == "up to date"

    import shutil

    shutil.rmtree(tmp_path / "run" / "models" / "5L")  # an output went missing: emit rewrites it, and the
    got = statuses(run(recipe))  # identical bytes need no new evaluation
    assert got["emit"] == "done" and got["plan"] == got["evaluate"] == "up to date"
    assert (tmp_path / "run" / "models" / "5L" / "config.json").is_file()


def test_from_and_force(teacher, tmp_path):
    recipe = make_recipe(tmp_path, teacher)
    run(recipe)
    got = statuses(run(recipe, start="emit"))
    assert [got[s] for s in STAGES] == ["up to date"] * 2 + ["skipped"] * 2 + ["up to date"] + ["done"] * 3
    got = statuses(run(recipe, force=True))
    assert [got[s] for s in STAGES] == ["done"] * 2 + ["skipped"] * 2 + ["done"] * 4
    with pytest.raises(SurgeryError, match="no stage `emitt`"):
        run(recipe, start="emitt")


def test_interrupted_evaluation_resumes_without_redoing_finished_models(teacher, tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path, teacher)
    scored = []
    real = suite.Evaluator.score

    def interrupt_third(self, directory):
        if len(scored) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third model is scored
        scored.append(directory)
        return real(self, directory)

    monkeypatch.setattr(suite.Evaluator, "score", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run(recipe)
    state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert state["evaluate"]["status"] == "running" and "report" not in state

    monkeypatch.setattr(suite.Evaluator, "score", real)
    from surgery.evaluate import perplexity

    computed = []
    real_ppl = perplexity.perplexity_of
    monkeypatch.setattr(perplexity, "perplexity_of", lambda d, *a, **k: computed.append(d) or real_ppl(d, *a, **k))
    log = run(recipe)
    assert statuses(log)["evaluate"] == "done" and "evaluate      resuming" in log
    # Scored before the interrupt: student and 5L. Without distillation the naive models have the
    # same bytes as those two, so the content-keyed cache has them too: only the teacher is left.
    assert computed == [tmp_path / "run" / "models" / "6L"]


def test_cli_prints_the_table_and_reports_interrupts(teacher, tmp_path, capsys, monkeypatch):
    recipe = make_recipe(tmp_path, teacher)
    assert main(["run", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "| student | 4 | none |" in out and "| 5L | 5 |" in out

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    (tmp_path / "held-out" / "a.txt").unlink()  # bad input: one located line, exit 1
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"r\.boom:\d+:5: error: no files match the perplexity text glob .*held-out/\*\.txt\n", err)
    assert "Traceback" not in err

    monkeypatch.setattr("surgery.pipeline.run_pipeline", interrupted)
    assert main(["run", str(recipe), "--from", "evaluate"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_evaluate_command(teacher, tmp_path, capsys):
    recipe = make_recipe(tmp_path, teacher)
    assert main(["evaluate", str(recipe)]) == 1  # nothing emitted yet
    assert "error: no emit output at" in capsys.readouterr().err
    run(recipe)
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    five = next(m for m in results["models"] if m["name"] == "5L")
    assert main(["evaluate", str(recipe), five["dir"]]) == 0
    assert capsys.readouterr().out == f"{five['dir']}: perplexity {five['scores']['perplexity']:.3f}\n"
    assert main(["evaluate", str(recipe)]) == 0
    assert "up to date" in capsys.readouterr().err


def test_measured_order_is_planned_then_emitted(teacher, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "c.txt").write_text(CORPUS)
    recipe = write_recipe(tmp_path / "r.boom", teacher, student="run/student", extra="""patch {
    order klpatch
    sizes all
    calibration text "calib/*.txt" samples 4 seq 32
}

emit "run/models/{layers}L" {
    dtype fp32
}""")
    got = statuses(run(recipe))
    assert got["plan"] == got["emit"] == "done" and got["evaluate"] == "skipped"
    planned = json.loads((tmp_path / "run" / "schedule" / "schedule.json").read_text())["steps"]
    assert [s["kl"] is not None for s in planned] == [True, True]  # measured on the calibration text
    for step in planned:
        manifest = json.loads((tmp_path / "run" / "models" / f"{step['depth']}L" / "manifest.json").read_text())
        assert manifest["patched"] == step["patched"]
    assert statuses(run(recipe))["plan"] == "up to date"


def test_an_unwritable_score_cache_stops_the_run_at_check(teacher, tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path, teacher)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SurgeryError, match="cannot write the score cache"):
        run(recipe)
    assert not (tmp_path / "run" / "student").exists()  # refused before any work
