"""build and emit: models on the layer graph, written as Hugging Face safetensors directories.

`build` writes one model (the directory is its artifact; the materializer writes its manifest).
`emit` writes every size of the patch schedule into the emit template and records the set in
`RUN/emit/manifest.json`, which evaluate reads to know what was emitted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from surgery.graph import STUDENT, Assembly
from surgery.outputs import EMIT_DIR
from surgery.schedule import Step
from surgery.stages import Context
from surgery.stages import plan as planning

NAME = "emit"


def directory(ctx: Context) -> Path:
    return ctx.run_dir / EMIT_DIR


def uses_student(assembly: Assembly) -> bool:
    return STUDENT in {r.side for r in assembly.layers} | {assembly.embeddings, assembly.final}


def inputs(ctx: Context, steps: tuple[Step, ...] | None = None) -> dict:
    steps = planning.steps(ctx) if steps is None else steps
    return {"recipe": ctx.section("emit"), "steps": [sorted(s.assembly.patched) for s in steps],
            "student": ctx.student_files(), "teacher": ctx.teacher_files()}


def build(ctx: Context, assembly: Assembly, out: Path, *, force: bool = False) -> Path:
    """Write one model; the student is checked first when the model takes any of its layers."""
    from surgery.materialize import write_model
    from surgery.materialize.teacher import teacher_weights

    teacher_weights(ctx.compiled)  # the teacher's files first: every model reads them
    if uses_student(assembly):
        ctx.student()
    return write_model(ctx.compiled, assembly, out, force=force)


def run(ctx: Context, *, force: bool = False):
    """Every size of the schedule (the plan's, for an order that measures). A model already
    built from the same inputs is left alone, so an interrupted emit resumes."""
    if ctx.recipe.emit is None:
        raise ctx.error("the recipe has no `emit` block", hint='add e.g. `emit "runs/models/{layers}L" { dtype bf16 }`')
    from surgery.materialize import emit
    from surgery.materialize.teacher import teacher_weights

    steps = planning.steps(ctx)
    teacher_weights(ctx.compiled)  # the teacher's files first: every model reads them
    if any(uses_student(s.assembly) for s in steps):
        ctx.student()
    with ctx.counter("emit", len(steps)) as each:
        made = emit(dataclasses.replace(ctx.compiled, steps=steps), force=force, each=each)
    models = [{"step": s.k, "patched": sorted(s.assembly.patched), "dir": str(path),
               "files": ctx.digests.model_dir(path)} for s, path in zip(steps, made)]
    return ctx.write_artifact(directory(ctx), NAME, inputs(ctx, steps), models=models)


def intact(ctx: Context, found) -> bool:
    """The emitted models are all still there, unchanged."""
    return all(Path(m["dir"]).is_dir() and ctx.digests.model_dir(Path(m["dir"])) == m["files"]
               for m in found.manifest["outputs"]["models"])


def emitted(ctx: Context) -> list[tuple[Assembly, Path]]:
    """What emit wrote, checked: made from this recipe's schedule, student and teacher, unchanged since."""
    if ctx.recipe.emit is None:
        return []
    found = ctx.require(directory(ctx), NAME, inputs(ctx))
    if not intact(ctx, found):
        raise ctx.error(f"an emitted model changed or went missing since `surgery emit` wrote it "
                        f"({directory(ctx)} lists them)", hint=f"run `surgery emit {ctx.recipe.path}` again")
    return [(ctx.graph.assemble(m["patched"]), Path(m["dir"])) for m in found.manifest["outputs"]["models"]]


# ---------------------------------------------------------------------------- choosing one model
def pick(ctx: Context, *, patch: str | None = None, step: int | None = None, layers: int | None = None,
         params: float | None = None) -> Assembly:
    """The model `surgery build` names: patched layers, a step of the schedule, or the largest
    model of the schedule within a depth or parameter count."""
    from surgery import schedule
    from surgery.errors import SurgeryError
    from surgery.recipe.ast import Sizes

    graph = ctx.graph
    if patch is not None:
        return graph.assemble(_patched(patch, graph))
    if step is not None:
        steps = {s.k: s for s in planning.steps(ctx)} if planning.measured(ctx) else None
        if steps is not None:
            if step not in steps:
                raise SurgeryError(f"the plan has no step {step}", hint=f"planned steps: {sorted(steps)}")
            return steps[step].assembly
        n = schedule.steps_available(graph, ctx.recipe.patch.order)
        if not 0 <= step <= n:
            raise SurgeryError(f"no step {step}", hint=f"the recipe's order has steps 0..{n}")
        return schedule.assembly_for(graph, ctx.recipe.patch.order, step)
    kind, value = ("layers", layers) if layers is not None else ("params", params)
    if planning.measured(ctx):  # the largest planned model that fits
        planned = [graph.student, *(s.assembly for s in planning.steps(ctx))]
        fits = [a for a in planned if schedule.size_of(graph, a, kind, ctx.compiled.emit_dtype) <= value]
        if not fits:
            raise SurgeryError(f"no planned model fits --{kind} {value:g}", hint="ask for a larger size")
        return max(fits, key=lambda a: (a.depth, graph.size(a).params))
    patch_block = dataclasses.replace(ctx.recipe.patch, sizes=Sizes(kind, (value,)))
    return schedule.resolve(graph, patch_block, ctx.compiled.emit_dtype)[0].assembly


def _patched(text: str, graph) -> tuple[int, ...]:
    from surgery.errors import SurgeryError

    if text == "none":
        return ()
    if text == "all":
        return tuple(range(graph.n_student))
    layers = []
    for item in text.split(","):
        item = item.strip().removeprefix("s")
        if not item.isdigit():
            raise SurgeryError(f"--patch: `{text}` is not a list of student layers",
                               hint="write e.g. --patch 3,4,7 (or s3,s4,s7), none or all")
        layers.append(int(item))
    return tuple(layers)
