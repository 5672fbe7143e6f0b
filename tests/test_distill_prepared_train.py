"""Distillation from the prepared token cache with two gloo processes: the same curve as one
process streaming, kill -9 then resume gives the weights of an uninterrupted run, and a
checkpoint of two processes resumes on one at the same row."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import distill_support
import pytest
import torch
from distill_support import distill_recipe, documents, jsonl_corpus, make_student
from safetensors.torch import load_file
from test_distill_train import _records, _run

from surgery.compile import compile_file
from surgery.distill import checkpoint, shards
from surgery.distill.train import run as distill_run

BODY = distill_support.BODY.replace("every 2 steps", "every 1 steps")


@pytest.fixture(scope="module")
def cache_env():
    """The environment of the processes these tests start; the token cache is the session's
    temporary one (tests/conftest.py), which they inherit."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return jsonl_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl", documents(200))


def _setup(directory: Path, teacher: Path, corpus: Path, *, prepared: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    recipe = distill_recipe(directory, teacher, BODY.format(corpus=corpus))
    compiled = compile_file(recipe)
    make_student(compiled)
    if prepared:
        shards.prepare(compiled, progress=False)
    return recipe, compiled


def _torchrun(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "surgery", "distill", str(recipe), "--no-progress"]


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        children = [p for p, parent in parents.items() if parent == below]
        found += children
        todo += children
    return found


def _weights(student_dir: Path) -> dict:
    return load_file(student_dir / "model.safetensors")


def _steps(run_dir: Path) -> list[dict]:
    return [r for r in _records(run_dir) if "split" not in r]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, teachers, corpus, cache_env):
    """One process, no cache: the rows as they were always read."""
    d = tmp_path_factory.mktemp("streamed")
    _, compiled = _setup(d, teachers("qwen3"), corpus, prepared=False)
    shutil.rmtree(shards.cache_root(), ignore_errors=True)
    out = distill_run(compiled, progress=False)
    return out, _steps(out.parent)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, teachers, corpus, cache_env, streamed):
    """Two gloo processes reading their rows from the cache, uninterrupted."""
    d = tmp_path_factory.mktemp("two")
    recipe, compiled = _setup(d, teachers("qwen3"), corpus)
    done = _run(_torchrun(recipe), env=cache_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data: prepared token cache" in done.stderr and "2 x cpu (ddp)" in done.stderr
    return compiled.student_dir, _steps(d / "run")


def test_two_ranks_on_the_cache_follow_one_streaming_process(two_ranks, streamed):
    (student, mine), (reference, ref) = two_ranks, streamed
    assert len(mine) == len(ref) == 6
    for a, b in zip(mine, ref):
        assert a["tokens"] == b["tokens"]
        for term in ("loss", "ce", "kl", "cosine"):
            assert a[term] == pytest.approx(b[term], rel=1e-4), (a["step"], term)
    expected, got = _weights(reference), _weights(student)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-3, atol=1e-4)


def test_kill_9_two_ranks_then_resume_equals_uninterrupted(tmp_path, teachers, corpus, cache_env, two_ranks):
    recipe, compiled = _setup(tmp_path / "killed", teachers("qwen3"), corpus)
    root = checkpoint.directory(compiled.student_dir)
    proc = subprocess.Popen(_torchrun(recipe), env=cache_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (root / "step-000002").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # torchrun starts each worker in a session of its own: kill the agent and every worker.
    for pid in [proc.pid, *_descendants(proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = int(checkpoint.latest(root).name.split("-")[1])
    assert 2 <= killed_at < 6
    # A copy of the killed run resumes below on one process.
    shutil.copytree(tmp_path / "killed", tmp_path / "copy")
    done = _run(_torchrun(recipe), env=cache_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    expected, got = _weights(two_ranks[0]), _weights(compiled.student_dir)
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # Another number of processes continues from the same row: one process now.
    copy = compile_file(tmp_path / "copy" / "recipe.boom")
    distill_run(copy, progress=False)
    steps = _steps(tmp_path / "copy" / "run")
    resumed = [r for r in steps if r["step"] > killed_at][-(6 - killed_at):]
    assert [r["step"] for r in resumed] == list(range(killed_at + 1, 7))
    for a, b in zip(resumed, two_ranks[1][killed_at:]):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
    expected, got = _weights(two_ranks[0]), _weights(copy.student_dir)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-3, atol=1e-4)
