"""The distillation engine end to end on tiny CPU models: training lowers the validation loss,
resume equals an uninterrupted run (in process and after kill -9), two gloo processes follow
one process's loss curve, and bad runs stop with clear errors and intact checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distill_support import BODY, distill_recipe, documents, jsonl_corpus, make_student
from safetensors.torch import load_file

from surgery.cli import main
from surgery.compile import compile_file
from surgery.distill import checkpoint
from surgery.distill.train import run as distill_run
from surgery.errors import SurgeryError


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return jsonl_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl", documents(200))


def _setup(directory: Path, teacher: Path, corpus: Path, body: str = BODY, **kw):
    recipe = distill_recipe(directory, teacher, body.format(corpus=corpus), **kw)
    compiled = compile_file(recipe)
    make_student(compiled)
    return recipe, compiled


def _run(cmd, env=ENV, timeout=300) -> subprocess.CompletedProcess:
    """Run a command in its own process group, so a timeout ends its workers too."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _weights(student_dir: Path) -> dict:
    return load_file(student_dir / "model.safetensors")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teachers, corpus):
    """One uninterrupted run: its recipe, student directory and metrics."""
    d = tmp_path_factory.mktemp("reference")
    recipe, compiled = _setup(d, teachers("qwen3"), corpus)
    out = distill_run(compiled, progress=False)
    return recipe, out, _records(out.parent)


def test_distillation_lowers_validation_loss(reference):
    from transformers import AutoModelForCausalLM

    _, student_dir, records = reference
    val = [r for r in records if r.get("split") == "validation"]
    train = [r for r in records if "split" not in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in val] == [0, 2, 4, 6]
    assert val[-1]["loss"] < val[0]["loss"] and val[-1]["ppl"] < val[0]["ppl"]
    assert {"ce", "kl", "cosine", "lr", "grad_norm", "tokens_per_s"} <= set(train[-1])
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    assert model.config.num_hidden_layers == 4
    summary = json.loads((student_dir / "student_config.json").read_text())
    assert summary["copied_teacher_layers"] == [0, 2, 4, 5]
    assert summary["distillation"]["steps"] == 6 and summary["distillation"]["validation"]["loss"] == val[-1]["loss"]
    ckpts = sorted(p.name for p in checkpoint.directory(student_dir).iterdir())
    assert ckpts == ["step-000004", "step-000006"]  # the newest two


def test_resume_equals_uninterrupted(tmp_path, teachers, corpus, reference):
    _, compiled = _setup(tmp_path, teachers("qwen3"), corpus)
    distill_run(compiled, progress=False, stop_after=3)
    assert checkpoint.latest(checkpoint.directory(compiled.student_dir)).name == "step-000003"
    assert not (compiled.student_dir / "student_config.json").read_text().count("distillation")
    distill_run(compiled, progress=False)
    expected = _weights(reference[1])
    got = _weights(compiled.student_dir)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # The curve after resuming is the same curve.
    steps = [r for r in _records(tmp_path / "run") if "split" not in r]
    ref = [r for r in reference[2] if "split" not in r]
    assert [r["loss"] for r in steps] == [r["loss"] for r in ref]


def test_kill_9_then_rerun_resumes(tmp_path, teachers, corpus, reference):
    recipe, compiled = _setup(tmp_path, teachers("qwen3"), corpus,
                              BODY.replace("checkpoint every 2 steps", "checkpoint every 1 steps"))
    root = checkpoint.directory(compiled.student_dir)
    proc = subprocess.Popen([sys.executable, "-m", "surgery", "distill", str(recipe), "--no-progress"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (root / "step-000002").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= int(checkpoint.latest(root).name.split("-")[1]) < 6
    done = _run([sys.executable, "-m", "surgery", "distill", str(recipe), "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    expected, got = _weights(reference[1]), _weights(compiled.student_dir)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_follow_one(tmp_path, teachers, corpus, reference, strategy):
    recipe, compiled = _setup(tmp_path, teachers("qwen3"), corpus)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "surgery", "distill", str(recipe), "--no-progress"]
    done = _run(cmd, env={**ENV, "SURGERY_DISTILL_STRATEGY": strategy})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"2 x cpu ({strategy})" in done.stderr
    mine = [r for r in _records(tmp_path / "run") if "split" not in r]
    ref = [r for r in reference[2] if "split" not in r]
    assert len(mine) == len(ref) == 6
    for a, b in zip(mine, ref):
        for term in ("loss", "ce", "kl", "cosine"):
            assert a[term] == pytest.approx(b[term], rel=1e-4), (a["step"], term)
    expected, got = _weights(reference[1]), _weights(compiled.student_dir)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-3, atol=1e-4)


def test_cli_dry_run_and_already_distilled(reference):
    recipe, student_dir, _ = reference
    dry = _run([sys.executable, "-m", "surgery", "distill", str(recipe), "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert "768 = 6 steps x 4 rows x 32 tokens" in dry.stdout
    assert "memory   about" in dry.stdout and "AdamW state (fp32)" in dry.stdout
    again = _run([sys.executable, "-m", "surgery", "distill", str(recipe)])
    assert again.returncode == 0 and "already distilled by this recipe" in again.stdout


def test_cli_needs_the_student(tmp_path, teachers, corpus):
    recipe = distill_recipe(tmp_path, teachers("qwen3"), BODY.format(corpus=corpus))
    done = _run([sys.executable, "-m", "surgery", "distill", str(recipe)])
    assert done.returncode == 1
    assert "recipe.boom:7:1: error: no student in" in done.stderr
    assert f"run `surgery init-student {recipe}` first" in done.stderr and "Traceback" not in done.stderr


def test_a_diverging_run_stops_keeps_the_last_good_checkpoint_and_the_hint_fixes_it(tmp_path, teachers, corpus,
                                                                                   capsys):
    # No weight decay: lr x weight_decay >= 1 is refused, and lr goes to 1e30 below.
    body = BODY.replace("every 2 steps", "every 1 steps").replace("lr 1e-3", "lr 1e-3 weight_decay 0")
    recipe, compiled = _setup(tmp_path, teachers("qwen3"), corpus, body)
    root = checkpoint.directory(compiled.student_dir)
    assert main(["distill", str(recipe), "--no-progress", "--stop-after", "2"]) == 0
    # lr 1e30 from step 3 on: step 3's update throws the weights to ~1e30 (finite, and
    # checkpointed), and step 4's gradients are not finite.
    recipe.write_text(recipe.read_text().replace("lr 1e-3", "lr 1e30"))
    capsys.readouterr()
    assert main(["distill", str(recipe), "--no-progress"]) == 1
    err = capsys.readouterr().err  # progress, then the error
    assert "note: resuming with a changed optimizer lr 0.001 -> 1e+30" in err and "Traceback" not in err
    first, *_, hint = err[err.index(f"{recipe}:"):].splitlines()
    assert first.startswith(f"{recipe}:11:1: error: the loss is not finite at step 4 (")
    assert hint == ("  hint: lower `lr` on the optimizer line (a resume accepts a changed `lr`, `clip` or schedule) "
                    "or check the data; the last good checkpoint, step-000002, is intact, and rerunning the same "
                    "command resumes from it")
    # step-000003 held the weights that gave the non-finite loss: it is gone, step-000002 is the newest.
    assert checkpoint.latest(root).name == "step-000002" and sorted(p.name for p in root.iterdir()) == ["step-000002"]
    assert all(w.abs().max() < 100 for w in load_file(root / "step-000002" / "model.safetensors").values())
    # Follow the hint: lower lr and rerun.
    recipe.write_text(recipe.read_text().replace("lr 1e30", "lr 5e-4"))
    assert main(["distill", str(recipe), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: resuming with a changed optimizer lr 0.001 -> 0.0005" in err and "resuming from" in err
    train = [r for r in _records(tmp_path / "run") if "tokens" in r]  # a resume drops records past its step
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and all(r["lr"] <= 5e-4 for r in train[2:])
    assert all(torch.isfinite(w).all() for w in _weights(compiled.student_dir).values())
    manifest = json.loads((compiled.student_dir / "manifest.json").read_text())
    assert manifest["stage"] == "distill" and manifest["inputs"]["student"]["stage"] == "init-student"
    assert manifest["distillation"]["steps"] == 6
    # Surgery made the distilled student, so init-student --force may replace it.
    assert main(["init-student", str(recipe), "--force"]) == 0
    assert json.loads((compiled.student_dir / "manifest.json").read_text())["stage"] == "init-student"


def test_weights_that_are_not_finite_are_never_checkpointed(tmp_path, teachers, corpus, monkeypatch):
    from surgery.distill import train

    _, compiled = _setup(tmp_path, teachers("qwen3"), corpus, BODY.replace("every 2 steps", "every 1 steps"))
    step = train.Engine.step

    def step_then_overflow(self, *args):  # a weight overflows in an update whose loss was finite
        result = step(self, *args)
        with torch.no_grad():
            next(self.student.parameters())[0, 0] = float("inf")
        return result

    monkeypatch.setattr(train.Engine, "step", step_then_overflow)
    with pytest.raises(SurgeryError, match="the weights are not finite after step 1") as err:
        distill_run(compiled, progress=False)
    assert "no checkpoint was written yet, so rerunning the same command starts over" in err.value.hint
    assert checkpoint.latest(checkpoint.directory(compiled.student_dir)) is None


def test_out_of_memory_is_a_clear_error(tmp_path, teachers, corpus, monkeypatch):
    from surgery.distill import train

    _, compiled = _setup(tmp_path, teachers("qwen3"), corpus)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(train.Engine, "step", out_of_memory)
    with pytest.raises(SurgeryError, match="out of cpu memory at micro_batch 2 x seq 32") as err:
        distill_run(compiled, progress=False)
    assert "lower `micro_batch`" in err.value.hint and "no checkpoint was written yet" in err.value.hint


def test_changed_distill_block_refuses_the_checkpoint(tmp_path, teachers, corpus):
    recipe, compiled = _setup(tmp_path, teachers("qwen3"), corpus)
    distill_run(compiled, progress=False, stop_after=1)
    # lr, clip and the schedule may change (the step size); the rest of the optimizer may not.
    recipe.write_text(recipe.read_text().replace("lr 1e-3", "lr 2e-3 weight_decay 0.2"))
    with pytest.raises(SurgeryError, match="different `optimizer` in the distill block"):
        distill_run(compile_file(recipe), progress=False)


@pytest.mark.parametrize("family,tied,losses", [
    ("gpt2", True, "loss ce 1.0\nloss reverse_kl 0.5 temperature 2.0\nloss mse 1.0"),
    ("gpt_neox", False, "loss kl 1.0\nloss jsd 0.5 beta 0.3\nloss cosine 1.0"),
])
def test_other_families_and_losses_unpacked(tmp_path, teachers, corpus, family, tied, losses):
    from transformers import AutoModelForCausalLM

    body = BODY.replace("steps 6", "steps 2").replace("seq 32", "seq 24\npack no") + losses
    _, compiled = _setup(tmp_path, teachers(family, tied=tied), corpus, body)
    out = distill_run(compiled, progress=False)
    records = _records(out.parent)
    assert {"reverse_kl", "mse"} <= set(records[-1]) if family == "gpt2" else {"jsd", "cosine"} <= set(records[-1])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
