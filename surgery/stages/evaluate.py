"""evaluate: score the student, every emitted size and the teacher (and the naive-pruning
baseline when asked) with the recipe's `evaluate` block. Scores are cached by model content in
the machine's shared cache (surgery.caches), so a rerun, a resumed interruption, or another run
with the same teacher computes only what is missing.

The artifact is `RUN/evaluation/`: evaluation.json (the record surgery.evaluate.report
renders; its docstring gives the schema) and the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from surgery.outputs import EVALUATION_DIR
from surgery.stages import Context
from surgery.stages import emit as emitting

NAME = "evaluate"
EVALUATION = "evaluation.json"


def directory(ctx: Context) -> Path:
    return in_run(ctx.run_dir)


def in_run(run: Path) -> Path:
    """The evaluation artifact's directory in a run directory."""
    return Path(run) / EVALUATION_DIR


def skip_reason(ctx: Context) -> str | None:
    block = ctx.recipe.evaluate
    if block is None or (block.perplexity is None and not block.tasks):
        return "no perplexity or tasks in the recipe"
    return None


def require_block(ctx: Context) -> None:
    if skip_reason(ctx):
        raise ctx.error("the recipe has no `evaluate` block with perplexity or tasks",
                        hint='add e.g. `evaluate { perplexity text "held-out/*.txt" }`')


def wants_baseline(ctx: Context) -> bool:
    return bool(ctx.recipe.evaluate and ctx.recipe.evaluate.baseline == "naive_pruning")


def evaluator(ctx: Context):
    from surgery.evaluate.cache import ResultCache
    from surgery.evaluate.suite import Evaluator

    return Evaluator(ctx.recipe, ResultCache(), ctx.digests, device=ctx.device)


def lineup(ctx: Context):
    from surgery.evaluate.lineup import lineup as models

    return models(ctx.compiled, emitting.emitted(ctx), ctx.teacher_dir, ctx.run_dir if wants_baseline(ctx) else None)


def inputs(ctx: Context) -> dict:
    block = dataclasses.replace(ctx.recipe.evaluate, report=None)
    models = {e.name: ctx.digests.model_dir(e.directory) if e.directory.is_dir() else None for e in lineup(ctx)}
    # The naive-pruning models are built from the teacher alone, as the student block lays it out.
    baseline = {"teacher": ctx.teacher_files(), "student": ctx.section("student")} if wants_baseline(ctx) else None
    from surgery.fingerprint import digest_value

    return {"recipe": digest_value(block), "models": models, "data": evaluator(ctx).inputs(), "baseline": baseline}


def run(ctx: Context, *, log=lambda event: None):
    """Score the line-up and write the evaluation record; `log` receives one event per model."""
    from surgery.evaluate.lineup import evaluation_record

    require_block(ctx)
    ctx.student()
    scorer = evaluator(ctx)
    scorer.cache.require_writable()
    entries = lineup(ctx)
    for e in entries:
        if not e.directory.is_dir():
            raise ctx.error(f"no {e.name} model at {e.directory}",
                            hint=f"run `surgery run {ctx.recipe.path}` to make every model first")
    if wants_baseline(ctx):  # the untrained student, then each size built from it; up-to-date ones are left alone
        from surgery.evaluate.baseline import write_naive, write_pruned_student
        from surgery.outputs import PRUNED_STUDENT

        pruned = ctx.run_dir / PRUNED_STUDENT
        write_pruned_student(ctx.compiled, pruned)
        for e in entries:
            if e.kind == "interpolated":
                write_naive(ctx.compiled, e.assembly, pruned, ctx.run_dir)
    jobs = [(e.name, e.directory) for e in entries] + [(f"{e.name} (naive pruning)", e.naive)
                                                        for e in entries if e.naive is not None]
    scores = {}
    with ctx.counter("evaluate", len(jobs)) as each:
        for name, model_dir in jobs:
            with each(name):
                scores[model_dir] = scorer.score(model_dir).as_dict()
            log({"stage": NAME, "model": name, "dir": str(model_dir), **scores[model_dir]})
    record = evaluation_record(ctx.compiled, entries, scores, scorer)
    out = directory(ctx)
    out.mkdir(parents=True, exist_ok=True)
    from surgery.durable import write_atomic

    write_atomic(out / EVALUATION, json.dumps(record, indent=1) + "\n")
    return ctx.write_artifact(out, NAME, inputs(ctx), evaluation=ctx.digests.file(out / EVALUATION))


def intact(ctx: Context, found) -> bool:
    path = found.path / EVALUATION
    return path.is_file() and ctx.digests.file(path) == found.manifest["outputs"]["evaluation"]


def record(ctx: Context) -> dict:
    """The evaluation record, checked to be this recipe's and current."""
    found = ctx.require(directory(ctx), NAME, inputs(ctx))
    if not intact(ctx, found):
        raise ctx.error(f"{found.path / EVALUATION} changed since `surgery evaluate` wrote it",
                        hint=f"run `surgery evaluate {ctx.recipe.path}` again")
    return json.loads((found.path / EVALUATION).read_text())


def score(ctx: Context, directories) -> list[tuple[Path, object]]:
    """Scores of model directories the user names, outside the line-up."""
    from surgery.errors import SurgeryError

    require_block(ctx)
    scorer = evaluator(ctx)
    out = []
    for d in map(Path, directories):
        if not d.is_dir():
            raise SurgeryError(f"no model directory {d}")
        out.append((d, scorer.score(d)))
    return out
