"""distill: train the student against the teacher, in place, resumable from checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

from surgery.stages import Context

NAME = "distill"


def inputs(ctx: Context) -> dict:
    d = ctx.recipe.distill
    local = [s.path for s in d.data if s.kind != "hf"] + ([d.validation.text] if d.validation.text else [])
    # Hub datasets count by name only: their content is not on this machine to digest.
    return {"recipe": ctx.section("teacher", "student", "distill"), "teacher": ctx.teacher_files(),
            "data": {pattern: ctx.glob_files(pattern) for pattern in local}}


def run(ctx: Context, *, restart: bool = False, dry_run: bool = False, progress: bool = True,
        tensorboard: bool = False, stop_after: int | None = None) -> Path:
    """Distill the recipe's student. `restart` drops checkpoints and rewrites the untrained
    student first (what `surgery run` does when the distill block changed). `dry_run` prints
    the plan (tokens, steps, memory) without importing torch, and stops."""
    if dry_run:
        from surgery.distill.steps import dry_run as describe

        print(describe(ctx.compiled))
        return ctx.compiled.student_dir
    from surgery.distill import checkpoint
    from surgery.distill.train import run as distill

    if restart:
        shutil.rmtree(checkpoint.directory(ctx.compiled.student_dir), ignore_errors=True)
        from surgery.materialize import init_student

        init_student(ctx.compiled, force=True)
    ctx.student()
    return distill(ctx.compiled, progress=progress, tensorboard=tensorboard, stop_after=stop_after)
