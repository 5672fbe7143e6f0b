"""plan: the patch schedule, which patched set each size gets, with KL to the teacher where measured.

The artifact is `RUN/schedule/`: schedule.json (the sizes and, for measured orders, the
evidence), schedule.png when curves were measured, and the manifest. Emit, build and evaluate
read the sizes from it when the recipe's order chooses by measurement.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from surgery import outputs
from surgery.schedule import MEASURED_ORDERS, Step
from surgery.stages import Context

NAME = "plan"
SCHEDULE = "schedule.json"


def directory(ctx: Context) -> Path:
    return ctx.run_dir / outputs.SCHEDULE_DIR


def measured(ctx: Context) -> bool:
    return ctx.recipe.patch.order in MEASURED_ORDERS


def inputs(ctx: Context) -> dict:
    out = {"recipe": ctx.section("patch"), "dtype": ctx.compiled.emit_dtype,
           "steps": [sorted(s.assembly.patched) if s.assembly else s.k for s in ctx.compiled.steps]}
    if measured(ctx):  # the choice depends on measurements of the weights
        out.update(student=ctx.student_files(), teacher=ctx.teacher_files(),
                   calibration=ctx.glob_files(ctx.recipe.patch.calibration.text))
    return out


def run(ctx: Context, *, compare=(), out: Path | None = None):
    """Plan the recipe's sizes; measure KL when the order needs it, or when `compare` names
    orders to draw and the weights are here. Returns (artifact, the planning result)."""
    from surgery.planning import models
    from surgery.planning.choose import choose

    recipe = ctx.recipe
    folder = directory(ctx) if out is None else outputs.check_output(ctx.compiled, out, what="the plan folder")
    outputs.check_own_folder(folder, NAME, "the plan folder", hint="give --out a new or empty folder")
    note = models.missing(ctx.compiled) if measured(ctx) or compare else None
    if measured(ctx) and note is not None:
        raise ctx.error(f"cannot plan `order {recipe.patch.order}`: {note}", pos=recipe.patch.pos,
                        hint="it measures KL between the teacher and the distilled student on the calibration text")
    measure = info = loaded = None
    if (measured(ctx) or compare) and note is None:
        ctx.student()
        loaded = models.load(ctx.compiled, ctx.device)
        measure, info = loaded.measurer.kl, loaded.info
    result = choose(ctx.compiled, measure, compare, info, note)
    if loaded is not None:
        info["passes"] = round(loaded.measurer.passes, 2)
    from surgery.durable import rewrite, write_atomic

    with rewrite(folder) as tmp:
        write_atomic(tmp / SCHEDULE, json.dumps(result.to_json(), indent=1) + "\n")
        if result.curves:
            from surgery.planning.plot import size_curves

            points = {name: [(e.params, e.kl) for e in entries] for name, entries in result.curves.items()}
            write_atomic(tmp / "schedule.png", size_curves(points, f"{recipe.path.name}: KL to the teacher by size"))
        made = ctx.write_artifact(tmp, NAME, inputs(ctx), steps=[[e.step, sorted(e.patched)] for e in result.steps])
    return dataclasses.replace(made, path=folder), result


def steps(ctx: Context) -> tuple[Step, ...]:
    """The sizes to build: the recipe's own, or the plan's for an order that measures.

    The plan must be there and made from this recipe, teacher and student; else one line says so.
    """
    if not measured(ctx):
        return ctx.compiled.steps
    found = ctx.require(directory(ctx), NAME, inputs(ctx))
    return tuple(Step(k, ctx.graph.assemble(p)) for k, p in found.manifest["outputs"]["steps"])
