"""End to end on a tiny teacher: distill a few steps, kill the run mid-distill, rerun to resume,
and check that lm-eval's own CLI loads an emitted model. (lm-eval inside the pipeline goes
through the same Evaluator that tests/test_evaluate_lmeval.py covers; it is left out here to
keep this test short.)"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from surgery.compile import compile_file
from surgery.pipeline import STAGES, run_pipeline
from test_evaluate_lmeval import items, write_task
from tiny import CORPUS, write_recipe

pytestmark = pytest.mark.slow

RECIPE_TAIL = """distill {
    data text "train/*.txt"
    validation text "held-out/*.txt"
    seq 32
    steps 12
    batch 4
    micro_batch 2
    precision fp32
    checkpoint every 3 steps
    device cpu
}

patch {
    order last_to_first
    sizes all
}

emit "run/models/{layers}L" {
    dtype fp32
}

evaluate {
    perplexity text "held-out/*.txt" seq 32 stride 16
    baseline naive_pruning
    report "run/report"
}"""

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def surgery(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "surgery", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def recipe(teachers, tmp_path):
    words = CORPUS.split()
    for split, n in (("train", 12), ("held-out", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            start = (i * 11) % len(words)
            (tmp_path / split / f"{i:02}.txt").write_text(" ".join(words[start:] + words[:start]))
    write_task(tmp_path / "tasks", items())
    teacher = teachers("qwen3", layers=6, tied=True)
    return write_recipe(tmp_path / "r.boom", teacher, student="run/student", extra=RECIPE_TAIL)


def run_here(recipe) -> str:
    out = io.StringIO()
    run_pipeline(compile_file(recipe), console=Console(file=out, width=200))
    return out.getvalue()


def test_killed_mid_distill_resumes_then_lm_eval_cli_loads_an_emitted_model(recipe, tmp_path, capfd):
    checkpoints = tmp_path / "run" / "student.checkpoints"
    proc = surgery("run", str(recipe))
    deadline = time.monotonic() + 120
    while not (checkpoints / "step-000003" / "state.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert state["distill"]["status"] == "running"
    # `surgery run` tokenised the data into the token cache first; distillation read rows from it.
    assert state["prepare"]["status"] == "done"
    assert all(Path(d, "manifest.json").is_file() for d in state["prepare"]["outputs"]["directories"])

    capfd.readouterr()
    log = run_here(recipe)  # the rerun, in this process (its torch is already imported)
    assert "distill       resuming" in log
    err = capfd.readouterr().err  # the distillation engine's own messages
    resumed_from = int(err.split("resuming from ")[1].split("step-")[1][:6])
    assert 3 <= resumed_from < 12
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "step" in r and "split" not in r]
    assert steps == list(range(1, 13))  # every step once: none lost, none redone twice in the record
    assert "| 5L | 5 |" in (tmp_path / "run" / "report" / "results.md").read_text()

    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    student = results["models"][0]
    assert student["kind"] == "student"
    assert student["scores"]["perplexity"] != student["naive"]["scores"]["perplexity"]  # it was trained

    assert run_here(recipe).count("up to date") == len(STAGES)  # nothing left to do

    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", "hf", "--model_args",
         f"pretrained={tmp_path / 'run' / 'models' / '5L'},dtype=float32", "--tasks", "tiny_next_word",
         "--include_path", str(tmp_path / "tasks"), "--limit", "4", "--device", "cpu", "--batch_size", "4"],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "tiny_next_word" in cli.stdout and "acc" in cli.stdout
