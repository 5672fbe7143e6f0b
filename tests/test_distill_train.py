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
from distill_support import distill_recipe, documents, jsonl_corpus, make_student
from safetensors.torch import load_file

from surgery.compile import compile_file
from surgery.distill import checkpoint
from surgery.distill.train import run as distill_run
from surgery.errors import SurgeryError

BODY = """
data jsonl "{corpus}"
validation 10%
seq 32
steps 6
batch 4
micro_batch 2
optimizer adamw lr 1e-3
checkpoint every 2 steps
"""

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


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, teachers, corpus):
    body = BODY.replace("lr 1e-3", "lr 1e30 weight_decay 0").replace("every 2 steps", "every 1 steps")  # lr x decay < 1
    _, compiled = _setup(tmp_path, teachers("qwen3"), corpus, body)
    with pytest.raises(SurgeryError, match=r"the loss is not finite at step \d") as err:
        distill_run(compiled, progress=False)
    root = checkpoint.directory(compiled.student_dir)
    last = checkpoint.latest(root)
    assert last is not None and f"the last good checkpoint, {last.name}, is intact" in err.value.hint
    weights = load_file(last / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


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
    recipe.write_text(recipe.read_text().replace("lr 1e-3", "lr 2e-3"))
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
