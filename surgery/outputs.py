"""Where surgery may write, and what it may replace.

No output may be, or hold, what a recipe reads or names: the recipe file, the teacher's
directory, the student's directory and its checkpoints. An existing output is replaced (with
`--force`) only when it is a directory surgery made, as its manifest shows. `compile` applies
the path rules to the student and every emit path, the materializer again to every directory it
writes, so an output path given on the command line is covered too.
"""

from __future__ import annotations

import json
from pathlib import Path

from surgery import artifact
from surgery.errors import SurgeryError
from surgery.graph import Assembly
from surgery.recipe.ast import Pos


# What a run keeps in its run directory (the student's parent) besides the student: the stages'
# folders, and files that `_written_by_surgery` tells from a user's (the folder may hold others).
SCHEDULE_DIR, EMIT_DIR, EVALUATION_DIR = "schedule", "emit", "evaluation"
PRUNED_STUDENT, NAIVE_DIR = "pruned-student", "naive-pruning"  # the naive-pruning baseline's models
STATE, RUN_RECORD, METRICS, DIGESTS = "state.json", "run.yaml", "metrics.jsonl", "digests.json"


def _written_by_surgery(path: Path) -> bool:
    """Whether the run file at `path` has the shape surgery writes it in."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            if path.name == RUN_RECORD:
                return f.readline().startswith("surgery: ")
            if path.name == METRICS:  # possibly long: its first lines
                lines = [json.loads(line) for line, _ in zip(f, range(3))]
                return all(isinstance(line, dict) and "time" in line for line in lines)
            data = json.load(f)
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    if path.name == STATE:
        return isinstance(data, dict) and isinstance(data.get("stages"), dict)
    return isinstance(data, dict) and all(isinstance(v, list) and len(v) == 4 for v in data.values())  # DIGESTS


def resolved(path) -> Path:
    """`path` absolute, `~` expanded and every link followed: where a write would really land."""
    return Path(path).expanduser().resolve()


def check_output(compiled, path, *, what: str = "the output", pos: Pos | None = None,
                 also: tuple[tuple[str, Path], ...] = ()) -> Path:
    """`path` resolved, or a SurgeryError (at `pos` of the recipe) when a model written there, or
    replaced with `--force`, would destroy an input: the recipe, the teacher, the student, or any
    directory named in `also` as (what it is, path)."""
    return _check(resolved(path), _guarded(compiled, also), compiled, what, pos)


def emit_paths(compiled, steps=None) -> list[tuple[Assembly, Path]]:
    """Each size of `steps` (default: the compiled schedule) that has an assembly, with its emit path,
    checked; two sizes on one path are an error, since one model would silently replace the other."""
    emit = compiled.recipe.emit
    guarded = _guarded(compiled, ())
    seen: dict[Path, Assembly] = {}
    for step in compiled.steps if steps is None else steps:
        if step.assembly is None:
            continue
        out = _check(resolved(compiled.emit_dir(step.assembly)), guarded, compiled, "the emit path", emit.pos)
        other = seen.setdefault(out, step.assembly)
        if other != step.assembly:
            raise SurgeryError(f"two sizes resolve to the emit path {out}: {_size(other)} and {_size(step.assembly)}",
                               file=compiled.recipe.path, pos=emit.pos,
                               hint="add a placeholder that tells them apart, e.g. {patched}")
    return [(assembly, out) for out, assembly in seen.items()]


def check_run_files(compiled) -> None:
    """Refuse a run directory holding a file by the name of one a run keeps there, which surgery
    did not write: it would be overwritten."""
    run = compiled.run_dir
    for name in (RUN_RECORD, STATE, METRICS, DIGESTS):
        path = run / name
        if (path.exists() or path.is_symlink()) and not _written_by_surgery(path):
            raise SurgeryError(f"the run directory {run} holds a {name} that surgery did not write, and a run "
                               f"writes its own {name} there", file=compiled.recipe.path,
                               pos=compiled.recipe.student.pos,
                               hint='give the student a folder of its own, e.g. `student "runs/NAME/student"`: '
                                    "the student's parent is the run directory")


def check_student(compiled, also: tuple[tuple[str, Path], ...] = ()) -> Path:
    """The student's directory, resolved; it is replaced whole, so it may not be or hold the
    recipe or the teacher."""
    out = compiled.student_dir.resolve()
    guarded = [("recipe", compiled.recipe.path.resolve()), *_teacher(compiled), *also]
    _refuse_over(out, guarded, "the student directory", compiled.recipe.student.pos, compiled.recipe.path)
    return out


def check_report(compiled, emitted=()) -> Path:
    """The report directory, resolved, or a SurgeryError at the `evaluate` block. The report is
    written as a whole directory, like a model, so it may not be or hold what the recipe reads or
    an emit path, nor be inside the student's directory, a model or a stage's folder in the run
    directory. One already there must be surgery's."""
    pos, file = compiled.recipe.evaluate.pos, compiled.recipe.path
    out = _check(resolved(compiled.report_dir), _guarded(compiled, tuple(("emit path", p) for p in emitted)),
                 compiled, "the report directory", pos)
    for model in emitted:
        if model in out.parents:
            raise SurgeryError(f"the report directory {out} is inside the emit path {model}", file=file, pos=pos,
                               hint="write it into a directory of its own")
    run = compiled.run_dir.resolve()
    for name in (SCHEDULE_DIR, EMIT_DIR, EVALUATION_DIR, PRUNED_STUDENT, NAIVE_DIR):
        if out == run / name or run / name in out.parents:
            raise SurgeryError(f"the report directory {out} is {'' if out == run / name else 'inside '}the run "
                               f"directory's `{name}` folder, where a stage keeps its output", file=file, pos=pos,
                               hint=f"leave `report` out to use {run / 'report'}")
    check_own_folder(out, "report", "the report directory", file=file, pos=pos,
                     hint="name a new or empty folder in `report`")
    return out


def check_own_folder(out: Path, stage: str, what: str, *, file: Path | None = None, pos: Pos | None = None,
                     hint: str = "name a new or empty folder") -> None:
    """Refuse `out`, which `stage` replaces whole, when it is there and is neither empty nor what
    `stage` wrote before (its manifest says so)."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink():
        found = artifact.read(out)
        if (found is not None and found.stage == stage) or not any(out.iterdir()):
            return
        kind = "a folder surgery did not write"
    else:
        kind = "a symbolic link" if out.is_symlink() else "a file"
    raise SurgeryError(f"{what} {out} is {kind}, and {stage} replaces it whole", file=file, pos=pos, hint=hint)


def check_replaceable(out: Path) -> None:
    """Refuse to replace `out` unless surgery made it (`--force` never deletes anything else)."""
    if not artifact.made_by_surgery(out):
        kind = "a symbolic link" if out.is_symlink() else "a directory" if out.is_dir() else "a file"
        raise SurgeryError(f"{out} is {kind} without surgery's {artifact.MANIFEST}: surgery did not make it, "
                           "so --force will not replace it", hint="move it away, or write somewhere else")


def _size(assembly: Assembly) -> str:
    return f"{assembly.name} ({assembly.depth} layers)"


def _teacher(compiled) -> list[tuple[str, Path]]:
    directory = compiled.teacher.directory
    return [] if directory is None else [("teacher's directory", directory.resolve())]


def _guarded(compiled, also) -> list[tuple[str, Path]]:
    student = compiled.student_dir.resolve()
    return [("recipe", compiled.recipe.path.resolve()), *_teacher(compiled), ("student's directory", student),
            ("student's checkpoints", student.with_name(student.name + ".checkpoints")), *also]


def _check(out: Path, guarded, compiled, what: str, pos: Pos | None) -> Path:
    _refuse_over(out, guarded, what, pos, compiled.recipe.path)
    if compiled.student_dir.resolve() in out.parents:
        # init-student --force and distillation replace the student's directory whole.
        raise SurgeryError(f"{what} {out} is inside the student's directory, which init-student and distill "
                           "replace whole", file=compiled.recipe.path if pos else None, pos=pos,
                           hint="write it into a directory of its own")
    return out


def _refuse_over(out: Path, guarded: list[tuple[str, Path]], what: str, pos: Pos | None, file: Path) -> None:
    for name, path in guarded:
        if out == path or out in path.parents:
            raise SurgeryError(f"{what} is the {name} ({path})" if out == path else
                               f"{what} {out} holds the {name} ({path})", file=file if pos else None, pos=pos,
                               hint="an output is replaced whole; write it into a directory of its own")
