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
    """Write the report as a whole directory, swapped into place: an interrupted write leaves the
    previous report, and a folder surgery did not write is never replaced (checked at `check` too)."""
    from surgery import durable, outputs
    from surgery.evaluate import report
    from surgery.fingerprint import digest_bytes

    out = ctx.report_dir
    outputs.check_own_folder(out, NAME, "the report directory")
    with durable.rewrite(out) as tmp:
        written = report.write(evaluation.record(ctx), tmp)
        ctx.write_artifact(tmp, NAME, inputs(ctx), files={p.name: digest_bytes(p.read_bytes()) for p in written})
    return [out / p.name for p in written]


def intact(ctx: Context, found) -> bool:
    return all((found.path / name).is_file() and ctx.digests.file(found.path / name) == digest
               for name, digest in found.manifest["outputs"]["files"].items())
