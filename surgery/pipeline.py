"""`surgery run`: check -> init-student -> distill -> plan -> emit -> evaluate -> report.

Each stage records what it consumed (digests of its recipe sections and of the files it
reads) and what it produced, in the run directory's `state.json`. A stage is skipped when it
is done, its inputs are unchanged and its outputs are still there as recorded; otherwise it
runs. A stage that was interrupted (recorded as `running` with the same inputs) resumes:
distillation from its last checkpoint, emission and evaluation from what they finished.

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
from surgery.commands._output import write_atomic
from surgery.compile import Compiled
from surgery.errors import SurgeryError
from surgery.fingerprint import Digests, canonical, digest_bytes, digest_value
from surgery.graph import Assembly
from surgery.schedule import MEASURED_ORDERS, Step

STAGES = ("check", "init-student", "distill", "plan", "emit", "evaluate", "report")
STATE, PLAN, METRICS, EVALUATION = "state.json", "plan.yaml", "metrics.jsonl", "evaluation.json"


def run_dir(compiled: Compiled) -> Path:
    return compiled.student_dir.parent


def report_dir(compiled: Compiled) -> Path:
    block = compiled.recipe.evaluate
    return compiled.recipe.resolve(block.report) if block and block.report else run_dir(compiled) / "report"


class Run:
    """One pipeline run: the compiled recipe, its run directory, the recorded state."""

    def __init__(self, compiled: Compiled, *, console=None):
        from rich.console import Console

        self.compiled = compiled
        self.recipe = compiled.recipe
        self.dir = run_dir(compiled)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.digests = Digests(self.dir / "digests.json")
        self.console = console or Console(stderr=True)
        self.state = _read_json(self.dir / STATE) or {"stages": {}}
        self.steps: tuple[Step, ...] = compiled.steps  # replaced by the plan stage's choice

    # ------------------------------------------------------------------ records
    def record(self, stage: str) -> dict:
        return self.state["stages"].get(stage, {})

    def save(self) -> None:
        write_atomic(self.dir / STATE, json.dumps(self.state, indent=1) + "\n")
        self.digests.save()

    def log(self, event: dict) -> None:
        """Append one line to metrics.jsonl (distillation writes its own lines there too)."""
        line = json.dumps({"time": _now(), **event})
        with open(self.dir / METRICS, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # ------------------------------------------------------------------ what stages read
    def section(self, *names: str) -> str:
        return digest_value({n: getattr(self.recipe, n) for n in names})

    @property
    def teacher_dir(self) -> Path:
        from surgery.source import weights_dir

        return weights_dir(self.compiled.teacher)

    def teacher_files(self) -> str:
        return self.digests.model_dir(self.teacher_dir)

    def student_files(self) -> str | None:
        d = self.compiled.student_dir
        return self.digests.model_dir(d) if d.is_dir() else None

    @property
    def emitted(self) -> list[tuple[Assembly, Path]]:
        if self.recipe.emit is None:
            return []
        return [(s.assembly, self.compiled.emit_dir(s.assembly)) for s in self.steps if s.assembly is not None]


@dataclass(frozen=True)
class Stage:
    name: str
    skip_reason: Callable[[Run], str | None]  # why the recipe has no such stage, or None
    inputs: Callable[[Run], dict]
    execute: Callable[[Run, bool], dict]  # (run, resuming) -> outputs to record
    intact: Callable[[Run, dict], bool]  # are the recorded outputs still there, unchanged?


# ---------------------------------------------------------------------------- check
def _check_inputs(run: Run) -> dict:
    return {"recipe": digest_bytes(run.recipe.path.read_bytes()),
            "teacher_config": digest_value(run.compiled.teacher.config)}


def _check(run: Run, resuming: bool) -> dict:
    g = run.compiled.graph
    run.console.print(f"    {g.n_teacher} -> {g.n_student} layers, {len(g.patchable)} patch steps, "
                      f"{len(run.compiled.steps)} sizes")
    return {}


# ---------------------------------------------------------------------------- init-student
def _init_inputs(run: Run) -> dict:
    return {"recipe": run.section("teacher", "student"), "teacher": run.teacher_files()}


def _init(run: Run, resuming: bool) -> dict:
    from surgery.materialize import init_student

    init_student(run.compiled, force=True)
    return {"student": run.student_files()}


def _init_intact(run: Run, outputs: dict) -> bool:
    # Distillation rewrites the student directory, so only its presence is required here.
    return run.compiled.student_dir.is_dir()


# ---------------------------------------------------------------------------- distill
def _distill_inputs(run: Run) -> dict:
    return {"recipe": run.section("teacher", "student", "distill"), "teacher": run.teacher_files(),
            "init": run.record("init-student").get("outputs", {}).get("student"),
            "data": _data_digest(run)}


def _data_digest(run: Run) -> dict:
    """Digests of the local files the distill block reads (hub datasets count by name only)."""
    d = run.recipe.distill
    patterns = [s.path for s in d.data if s.kind != "hf"] + ([d.validation.text] if d.validation.text else [])
    return {pattern: _glob_digest(run, pattern) for pattern in patterns}


def _glob_digest(run: Run, pattern: str) -> str:
    """The digest of the files a recipe glob names now (none is a digest too: the stage reports it)."""
    import glob

    files = [Path(p) for p in glob.glob(str(run.recipe.resolve(pattern)), recursive=True) if Path(p).is_file()]
    return run.digests.files(files)


def _distill(run: Run, resuming: bool) -> dict:
    from surgery.distill import distill

    if not resuming:  # a fresh start: drop checkpoints of other settings, restore the untrained student
        _clear_checkpoints(run)
        from surgery.materialize import init_student

        init_student(run.compiled, force=True)
    distill(run.compiled, progress=True)
    return {"student": run.student_files()}


def _clear_checkpoints(run: Run) -> None:
    import shutil

    from surgery.distill import checkpoint

    shutil.rmtree(checkpoint.directory(run.compiled.student_dir), ignore_errors=True)


def _student_intact(run: Run, outputs: dict) -> bool:
    return run.student_files() == outputs.get("student")


# ---------------------------------------------------------------------------- plan
def _plan_inputs(run: Run) -> dict:
    patch = run.recipe.patch
    out = {"recipe": run.section("patch"), "dtype": run.compiled.emit_dtype,
           "schedule": [sorted(s.assembly.patched) if s.assembly else s.k for s in run.compiled.steps]}
    if patch.order in MEASURED_ORDERS:  # the choice depends on measurements of the weights
        out.update(student=run.student_files(), teacher=run.teacher_files(),
                   calibration=_glob_digest(run, patch.calibration.text))
    return out


def _plan(run: Run, resuming: bool) -> dict:
    from surgery.planning import models
    from surgery.planning.plan import plan

    compiled = run.compiled
    measure = info = None
    if compiled.recipe.patch.order in MEASURED_ORDERS:
        note = models.missing(compiled)
        if note is not None:
            raise SurgeryError(f"cannot plan `order {compiled.recipe.patch.order}`: {note}", file=compiled.recipe.path,
                               pos=compiled.recipe.patch.pos)
        loaded = models.load(compiled)
        measure, info = loaded.measurer.kl, loaded.info
    # Only the recipe's order is planned here; `surgery plan` compares orders.
    result = plan(compiled, measure, (), info)
    out = run.dir / "plan"
    out.mkdir(exist_ok=True)
    write_atomic(out / "plan.json", json.dumps(result.to_json(), indent=1) + "\n")
    run.console.print("    sizes: " + ", ".join(f"{e.depth}L" for e in result.steps))
    return {"steps": [[e.step, sorted(e.patched)] for e in result.steps]}


def _planned_steps(run: Run) -> tuple[Step, ...]:
    recorded = run.record("plan").get("outputs", {}).get("steps")
    if recorded is None:
        return run.compiled.steps
    return tuple(Step(k, run.compiled.graph.assemble(p)) for k, p in recorded)


def _always(run: Run, outputs: dict) -> bool:
    return True


# ---------------------------------------------------------------------------- emit
def _emit_inputs(run: Run) -> dict:
    return {"recipe": run.section("emit"), "steps": [sorted(s.assembly.patched) for s in run.steps],
            "student": run.student_files(), "teacher": run.teacher_files()}


def _emit(run: Run, resuming: bool) -> dict:
    from surgery.materialize import emit

    # The materializer leaves an output built from the same inputs alone, so a resumed emit
    # writes only the models it had not finished.
    paths = emit(dataclasses.replace(run.compiled, steps=run.steps), force=True)
    return {"models": {str(p): run.digests.model_dir(p) for p in paths}}


def _emit_intact(run: Run, outputs: dict) -> bool:
    return all(Path(p).is_dir() and run.digests.model_dir(Path(p)) == d for p, d in outputs["models"].items())


# ---------------------------------------------------------------------------- evaluate
def _wants_baseline(run: Run) -> bool:
    return bool(run.recipe.evaluate and run.recipe.evaluate.baseline == "naive_pruning")


def _pruned_dir(run: Run) -> Path:
    from surgery.evaluate.baseline import PRUNED_STUDENT

    return run.dir / PRUNED_STUDENT


def _evaluator(run: Run):
    from surgery.evaluate.cache import ResultCache
    from surgery.evaluate.suite import Evaluator

    return Evaluator(run.recipe, ResultCache(run.dir / "eval-cache"), run.digests)


def _evaluate_skip(run: Run) -> str | None:
    block = run.recipe.evaluate
    if block is None or (block.perplexity is None and not block.tasks):
        return "no perplexity or tasks in the recipe"
    return None


def _evaluate_inputs(run: Run) -> dict:
    from surgery.evaluate.lineup import lineup

    block = dataclasses.replace(run.recipe.evaluate, report=None)
    entries = lineup(run.compiled, run.emitted, run.teacher_dir, run.dir if _wants_baseline(run) else None)
    models = {e.name: run.digests.model_dir(e.directory) if e.directory.is_dir() else None for e in entries}
    # The naive-pruning models are built from the teacher alone, as the student block lays it out.
    baseline = {"teacher": run.teacher_files(), "student": run.section("student")} if _wants_baseline(run) else None
    return {"recipe": digest_value(block), "models": models, "data": _evaluator(run).inputs(), "baseline": baseline}


def _evaluate(run: Run, resuming: bool) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from surgery.evaluate.lineup import evaluation_record, lineup

    evaluator = _evaluator(run)
    entries = lineup(run.compiled, run.emitted, run.teacher_dir, run.dir if _wants_baseline(run) else None)
    for e in entries:
        if not e.directory.is_dir():
            raise SurgeryError(f"no {e.name} model at {e.directory}", file=run.recipe.path,
                               hint="run `surgery run RECIPE` to make every model first")
    if _wants_baseline(run):  # the untrained student, then each size built from it; up-to-date ones are left alone
        from surgery.evaluate.baseline import write_naive, write_pruned_student

        write_pruned_student(run.compiled, _pruned_dir(run))
        for e in entries:
            if e.kind == "interpolated":
                write_naive(run.compiled, e.assembly, _pruned_dir(run), run.dir)
    jobs = [(e.name, e.directory) for e in entries] + [(f"{e.name} (naive pruning)", e.naive)
                                                        for e in entries if e.naive is not None]
    scores = {}
    with Progress(TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=run.console, transient=True) as bar:
        task = bar.add_task("evaluate", total=len(jobs))
        for name, directory in jobs:
            bar.update(task, description=f"evaluate {name}")
            scores[directory] = evaluator.score(directory).as_dict()
            run.log({"stage": "evaluate", "model": name, "dir": str(directory), **scores[directory]})
            bar.advance(task)
    record = evaluation_record(run.compiled, entries, scores, evaluator)
    path = run.dir / EVALUATION
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return {"evaluation": run.digests.file(path)}


def _evaluate_intact(run: Run, outputs: dict) -> bool:
    path = run.dir / EVALUATION
    return path.is_file() and run.digests.file(path) == outputs.get("evaluation")


# ---------------------------------------------------------------------------- report
def _report_inputs(run: Run) -> dict:
    path = run.dir / EVALUATION
    return {"evaluation": run.digests.file(path) if path.is_file() else None, "out": str(report_dir(run.compiled))}


def _report(run: Run, resuming: bool) -> dict:
    from surgery.evaluate import report

    evaluation = _read_json(run.dir / EVALUATION)
    paths = report.write(evaluation, report_dir(run.compiled))
    for p in paths:
        run.console.print(f"    wrote {p}")
    return {"files": {str(p): run.digests.file(p) for p in paths}}


def _report_intact(run: Run, outputs: dict) -> bool:
    return all(Path(p).is_file() and run.digests.file(Path(p)) == d for p, d in outputs["files"].items())


def _no_skip(run: Run) -> str | None:
    return None


PIPELINE = (
    Stage("check", _no_skip, _check_inputs, _check, _always),
    Stage("init-student", _no_skip, _init_inputs, _init, _init_intact),
    Stage("distill", lambda run: None if run.recipe.distill else "no distill block: the student stays untrained",
          _distill_inputs, _distill, _student_intact),
    Stage("plan", _no_skip, _plan_inputs, _plan, _always),
    Stage("emit", lambda run: None if run.recipe.emit else "no emit block", _emit_inputs, _emit, _emit_intact),
    Stage("evaluate", _evaluate_skip, _evaluate_inputs, _evaluate, _evaluate_intact),
    Stage("report", _evaluate_skip, _report_inputs, _report, _report_intact),
)


# ---------------------------------------------------------------------------- the driver
def run_pipeline(compiled: Compiled, *, start: str | None = None, force: bool = False, only=STAGES,
                 console=None) -> Run:
    """Run every stage that is not done and valid; stages from `start` on (all with `force`) rerun.

    `only` limits the run to some stages; the others are neither checked nor run, and their
    recorded outputs (the planned sizes) are used as they are.
    """
    if start is not None and start not in STAGES:
        raise SurgeryError(f"no stage `{start}`", hint="stages: " + ", ".join(STAGES))
    run = Run(compiled, console=console)
    forced = set(STAGES if force else STAGES[STAGES.index(start):] if start else ())
    pipeline = [stage for stage in PIPELINE if stage.name in only]
    run.console.print(f"{compiled.recipe.path}  (run directory {run.dir})")
    started = time.monotonic()
    run.steps = _planned_steps(run)
    # Stages with long work show their own progress bars (distill, evaluate) under these lines;
    # one live display per stage keeps them from fighting over the terminal.
    try:
        for number, stage in enumerate(pipeline, 1):
            _run_stage(run, stage, f"[{number}/{len(pipeline)}]", stage.name in forced)
            if stage.name == "plan":
                run.steps = _planned_steps(run)
    finally:
        write_plan_yaml(run)
        run.save()
    run.console.print(f"done in {time.monotonic() - started:.1f}s; report in {report_dir(compiled)}"
                      if not _evaluate_skip(run) else f"done in {time.monotonic() - started:.1f}s")
    return run


def _run_stage(run: Run, stage: Stage, number: str, forced: bool) -> None:
    label = f"{number} {stage.name:<13}"
    reason = stage.skip_reason(run)
    if reason is not None:
        run.console.print(f"  {label} - {reason}")
        return
    inputs = canonical(stage.inputs(run))
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


# ---------------------------------------------------------------------------- plan.yaml
def write_plan_yaml(run: Run) -> None:
    """The resolved recipe, layer map, schedule, versions and hashes: what this run is."""
    c, g = run.compiled, run.compiled.graph
    doc = {
        "surgery": __version__,
        "recipe": {"path": str(c.recipe.path), "sha256": digest_bytes(c.recipe.path.read_bytes()),
                   "resolved": canonical(dataclasses.replace(c.recipe, path=str(c.recipe.path)))},
        "paths": {"run": str(run.dir), "teacher": str(c.teacher.directory or c.teacher.spec),
                  "student": str(c.student_dir), "report": str(report_dir(c))},
        "teacher": {"source": c.teacher.spec, "origin": c.teacher.origin, "layers": g.n_teacher,
                    "params": g.size(g.teacher).params, "config_sha256": digest_value(c.teacher.config)},
        "layer_map": [{"student": b.student, "teacher": list(b.teacher), "init": b.init, "patchable": b.patchable}
                      for b in g.blocks],
        "aligned_pairs": [list(p) for p in g.aligned_pairs],
        "schedule": [_step_row(c, s) for s in run.steps],
        "versions": _versions(),
        "stages": run.state["stages"],
    }
    write_atomic(run.dir / PLAN, yaml.safe_dump(doc, sort_keys=False, width=120))


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
