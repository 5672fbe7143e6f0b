"""init-student: the pruned student (teacher layers, or `init random`) in the student directory."""

from __future__ import annotations

from pathlib import Path

from surgery.stages import Context

NAME = "init-student"


def inputs(ctx: Context) -> dict:
    return {"recipe": ctx.section("teacher", "student"), "teacher": ctx.teacher_files()}


def run(ctx: Context, *, force: bool = False) -> Path:
    """Write the student; the directory is the artifact, and its manifest.json the materializer's."""
    from surgery.materialize import init_student

    return init_student(ctx.compiled, force=force)
