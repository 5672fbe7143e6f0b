"""report: results.json, results.md and curve.png from the evaluation record (surgery.evaluate.report)."""

from __future__ import annotations

from pathlib import Path

from surgery.stages import Context
from surgery.stages import evaluate as evaluation

NAME = "report"
skip_reason = evaluation.skip_reason


def inputs(ctx: Context) -> dict:
    path = evaluation.directory(ctx) / evaluation.EVALUATION
    return {"evaluation": ctx.digests.file(path) if path.is_file() else None, "out": str(ctx.report_dir)}


def run(ctx: Context) -> list[Path]:
    from surgery.evaluate import report

    paths = report.write(evaluation.record(ctx), ctx.report_dir)
    ctx.write_artifact(ctx.report_dir, NAME, inputs(ctx), files={p.name: ctx.digests.file(p) for p in paths})
    return paths


def intact(ctx: Context, found) -> bool:
    return all((found.path / name).is_file() and ctx.digests.file(found.path / name) == digest
               for name, digest in found.manifest["outputs"]["files"].items())
