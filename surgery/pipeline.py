"""`surgery run`: check -> init-student -> prepare -> distill -> plan -> emit -> evaluate -> report.

Each stage is one function in surgery.stages, the same one its command calls. This driver
records what each stage consumed (its declared inputs) and produced in the run directory's
`state.json`. A stage is skipped when it is done, its inputs are unchanged and its outputs are
still there as recorded; otherwise it runs. A stage that was interrupted (recorded as
`running` with the same inputs) resumes: distillation from its last checkpoint, emission and
evaluation from what they finished.

The run directory is the parent of the recipe's student directory (`runs/NAME` for
`student "runs/NAME/student"`); docs/pipeline.md describes its layout.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import yaml

from surgery import __version__
from surgery.durable import write_atomic
from surgery.compile import Compiled
from surgery.errors import SurgeryError
from surgery.fingerprint import canonical, digest_bytes, digest_value
from surgery.outputs import METRICS, RUN_RECORD, STATE
from surgery.schedule import Step
from surgery.stages import Context, distill, emit, evaluate, init_student, plan, prepare, report

STAGES = ("check", "init-student", "prepare", "distill", "plan", "emit", "evaluate", "report")


class Run:
    """One pipeline run: the stages' context and the recorded state."""

    def __init__(self, compiled: Compiled, *, console=None):
        self.ctx = Context(compiled, console)
        self.compiled = compiled
        self.dir = self.ctx.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console = self.ctx.console
        self.state = _read_json(self.dir / STATE) or {"stages": {}}

    def record(self, stage: str) -> dict:
        return self.state["stages"].get(stage, {})

    def save(self) -> None:
        write_atomic(self.dir / STATE, json.dumps(self.state, indent=1) + "\n")
        self.ctx.digests.save()

    def log(self, event: dict) -> None:
        """Append one line to metrics.jsonl (distillation writes its own lines there too)."""
        line = json.dumps({"time": _now(), **event})
        with open(self.dir / METRICS, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@dataclass(frozen=True)
class Stage:
    name: str
    skip_reason: Callable[[Context], str | None]  # why the recipe has no such stage, or None
    inputs: Callable[[Context], dict]
    execute: Callable[[Run, bool], dict]  # (run, resuming) -> outputs to record
    intact: Callable[[Run, dict], bool]  # are the recorded outputs still there, unchanged?


def _check_inputs(ctx: Context) -> dict:
    return {"recipe": ctx.recipe_sha256(), "teacher_config": digest_value(ctx.compiled.teacher.config)}


def _check(run: Run, resuming: bool) -> dict:
    if evaluate.skip_reason(run.ctx) is None:  # found now, not after distillation
        evaluate.evaluator(run.ctx).cache.require_writable()
    g = run.compiled.graph
    run.console.print(f"    {g.n_teacher} -> {g.n_student} layers, {len(g.patchable)} patch steps, "
                      f"{len(run.compiled.steps)} sizes")
    return {}


def _init(run: Run, resuming: bool) -> dict:
    init_student.run(run.ctx, force=True)
    return {"student": run.ctx.student_files()}


def _prepare(run: Run, resuming: bool) -> dict:
    return {"directories": [str(d) for d in prepare.run(run.ctx)]}


def _distill(run: Run, resuming: bool) -> dict:
    # A fresh start drops checkpoints of other settings and restores the untrained student.
    distill.run(run.ctx, restart=not resuming)
    return {"student": run.ctx.student_files()}


def _student_intact(run: Run, outputs: dict) -> bool:
    return run.ctx.student_files() == outputs.get("student")


def _plan(run: Run, resuming: bool) -> dict:
    made, result = plan.run(run.ctx)  # the recipe's order only; `surgery plan` also compares orders
    run.console.print("    sizes: " + ", ".join(f"{e.depth}L" for e in result.steps))
    return {"manifest": run.ctx.digests.file(made.path / "manifest.json")}


def _emit(run: Run, resuming: bool) -> dict:
    made = emit.run(run.ctx, force=True)
    return {"manifest": run.ctx.digests.file(made.path / "manifest.json")}


def _artifact_intact(stage) -> Callable[[Run, dict], bool]:
    """The stage's artifact still holds the manifest recorded, and its outputs are unchanged."""
    from surgery import artifact

    def intact(run: Run, outputs: dict) -> bool:
        path = stage.directory(run.ctx) / artifact.MANIFEST
        if not path.is_file() or run.ctx.digests.file(path) != outputs.get("manifest"):
            return False
        check = getattr(stage, "intact", None)
        return check is None or check(run.ctx, artifact.read(path.parent))

    return intact


def _evaluate(run: Run, resuming: bool) -> dict:
    made = evaluate.run(run.ctx, log=run.log)
    return {"manifest": run.ctx.digests.file(made.path / "manifest.json")}


def _report(run: Run, resuming: bool) -> dict:
    paths = report.run(run.ctx)
    for p in paths:
        run.console.print(f"    wrote {p}")
    return {"files": {str(p): run.ctx.digests.file(p) for p in paths}}


def _report_intact(run: Run, outputs: dict) -> bool:
    return all(Path(p).is_file() and run.ctx.digests.file(Path(p)) == d for p, d in outputs["files"].items())


def _always(run: Run, outputs: dict) -> bool:
    return True


def _no_skip(ctx: Context) -> str | None:
    return None


PIPELINE = (
    Stage("check", _no_skip, _check_inputs, _check, _always),
    # Distillation rewrites the student directory, so only its presence is required after init.
    Stage("init-student", _no_skip, init_student.inputs, _init, lambda run, o: run.compiled.student_dir.is_dir()),
    Stage("prepare", prepare.skip_reason, prepare.inputs, _prepare, lambda run, o: prepare.intact(run.ctx)),
    Stage("distill", lambda ctx: None if ctx.recipe.distill else "no distill block: the student stays untrained",
          distill.inputs, _distill, _student_intact),
    Stage("plan", _no_skip, plan.inputs, _plan, _artifact_intact(plan)),
    Stage("emit", lambda ctx: None if ctx.recipe.emit else "no emit block", emit.inputs, _emit,
          _artifact_intact(emit)),
    Stage("evaluate", evaluate.skip_reason, evaluate.inputs, _evaluate, _artifact_intact(evaluate)),
    Stage("report", report.skip_reason, report.inputs, _report, _report_intact),
)


# ---------------------------------------------------------------------------- the driver
def run_pipeline(compiled: Compiled, *, start: str | None = None, force: bool = False, console=None) -> Run:
    """Run every stage that is not done and valid; stages from `start` on (all with `force`) rerun."""
    if start is not None and start not in STAGES:
        raise SurgeryError(f"no stage `{start}`", hint="stages: " + ", ".join(STAGES))
    run = Run(compiled, console=console)
    forced = set(STAGES if force else STAGES[STAGES.index(start):] if start else ())
    run.console.print(f"{compiled.recipe.path}  (run directory {run.dir})")
    started = time.monotonic()
    # Stages with long work show their own progress bars (distill, evaluate) under these lines;
    # one live display per stage keeps them from fighting over the terminal.
    try:
        for number, stage in enumerate(PIPELINE, 1):
            _run_stage(run, stage, f"[{number}/{len(PIPELINE)}]", stage.name in forced)
    finally:
        write_run_record(run)
        run.save()
    took = f"done in {time.monotonic() - started:.1f}s"
    run.console.print(took if evaluate.skip_reason(run.ctx) else f"{took}; report in {compiled.report_dir}")
    return run


def _run_stage(run: Run, stage: Stage, number: str, forced: bool) -> None:
    label = f"{number} {stage.name:<13}"
    reason = stage.skip_reason(run.ctx)
    if reason is not None:
        run.console.print(f"  {label} - {reason}")
        return
    inputs = canonical(stage.inputs(run.ctx))
    rec = run.record(stage.name)
    same = rec.get("inputs") == inputs
    if not forced and same and rec.get("status") == "done" and stage.intact(run, rec.get("outputs", {})):
        run.console.print(f"  {label} ✓ up to date")
        return
    resuming = not forced and same and rec.get("status") == "running"
    run.console.print(f"  {label} {'resuming' if resuming else 'running'} ...")
    run.state["stages"][stage.name] = {"status": "running", "inputs": inputs, "started": _now()}
    run.save()
    t0 = time.monotonic()
    outputs = canonical(stage.execute(run, resuming))
    seconds = round(time.monotonic() - t0, 2)
    run.state["stages"][stage.name] = {"status": "done", "inputs": inputs, "outputs": outputs,
                                       "started": run.state["stages"][stage.name]["started"], "seconds": seconds}
    run.save()
    run.log({"stage": stage.name, "event": "done", "seconds": seconds})
    run.console.print(f"  {label} ✓ {seconds:.1f}s")


# ---------------------------------------------------------------------------- run.yaml
def write_run_record(run: Run) -> None:
    """The resolved recipe, layer map, schedule, versions and hashes: what this run is."""
    c, g = run.compiled, run.compiled.graph
    try:
        steps = plan.steps(run.ctx)
    except SurgeryError:  # not planned yet: the record shows what the recipe alone fixes
        steps = c.steps
    doc = {
        "surgery": __version__,
        "recipe": {"path": str(c.recipe.path), "sha256": digest_bytes(c.recipe.path.read_bytes()),
                   "resolved": canonical(dataclasses.replace(c.recipe, path=str(c.recipe.path)))},
        "paths": {"run": str(run.dir), "teacher": str(c.teacher.directory or c.teacher.spec),
                  "student": str(c.student_dir), "report": str(c.report_dir)},
        "teacher": {"source": c.teacher.spec, "origin": c.teacher.origin, "layers": g.n_teacher,
                    "params": g.size(g.teacher).params, "config_sha256": digest_value(c.teacher.config)},
        "layer_map": [{"student": b.student, "teacher": list(b.teacher), "init": b.init, "patchable": b.patchable}
                      for b in g.blocks],
        "aligned_pairs": [list(p) for p in g.aligned_pairs],
        "schedule": [_step_row(c, s) for s in steps],
        "versions": _versions(),
        "stages": run.state["stages"],
    }
    write_atomic(run.dir / RUN_RECORD, yaml.safe_dump(doc, sort_keys=False, width=120))


def _step_row(c: Compiled, step: Step) -> dict:
    if step.assembly is None:
        return {"step": step.k, "patched": "chosen by measurement"}
    a = step.assembly
    size = c.graph.size(a)
    row = {"step": step.k, "patched": sorted(a.patched), "depth": a.depth, "params": size.params,
           "bytes": size.bytes(c.emit_dtype), "tied": size.tied}
    if c.recipe.emit:
        row["dir"] = str(c.emit_dir(a))
    return row


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "safetensors", "tokenizers", "lm_eval"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
