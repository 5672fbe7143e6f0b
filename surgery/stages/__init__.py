"""The pipeline's stages: one function per stage, called by its command and by `surgery run` alike.

    check -> init-student -> distill -> plan -> emit -> evaluate -> report

Each stage module declares what it reads (`inputs(ctx)`: digests of recipe sections and of the
files it consumes) and writes one artifact, a directory holding `manifest.json`
(surgery.artifact) with those inputs in it. A stage that consumes another's artifact calls
`require`, which finds a missing or stale artifact and says so in one line, so the commands
compose by hand: `surgery plan R` then `surgery emit R` emits the planned sizes, and
`surgery evaluate R` scores what `emit` wrote.

`surgery run` (surgery.pipeline) runs the stages in order and skips those whose recorded
inputs still match.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from surgery import artifact
from surgery.compile import Compiled
from surgery.errors import Pos, SurgeryError
from surgery.fingerprint import Digests, canonical, digest_bytes, digest_value
from surgery.materialize.writer import STUDENT_CONFIG
from surgery.outputs import DIGESTS
from surgery.durable import write_atomic


@dataclass
class Context:
    """One recipe's stages: the compiled recipe, where its artifacts go, a digest memo, a console."""

    compiled: Compiled
    given_console: object = None  # a rich Console; stderr by default
    device: str = "auto"
    digests: Digests = field(init=False)

    def __post_init__(self):
        self.digests = Digests(self.run_dir / DIGESTS)

    @cached_property
    def console(self):
        """The console, made when first used: importing rich costs a tenth of a `surgery build`'s start."""
        if self.given_console is not None:
            return self.given_console
        from rich.console import Console

        return Console(stderr=True)

    @property
    def recipe(self):
        return self.compiled.recipe

    @property
    def graph(self):
        return self.compiled.graph

    @property
    def run_dir(self) -> Path:
        return self.compiled.run_dir

    @property
    def report_dir(self) -> Path:
        return self.compiled.report_dir

    @property
    def teacher_dir(self) -> Path:
        from surgery.source import weights_dir

        return weights_dir(self.compiled.teacher)

    @contextmanager
    def counter(self, verb: str, total: int):
        """A bar on the console, cleared when done, for work done one model at a time: in
        `with ctx.counter("emit", n) as each:`, `with each(name):` wraps each model. Only on a
        terminal: in a log it would leave a blank line, before an error's one line too."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True, disable=not self.console.is_terminal) as bar:
            task = bar.add_task(verb, total=total)

            @contextmanager
            def each(name: str):
                bar.update(task, description=f"{verb} {name}")
                yield
                bar.advance(task)

            yield each

    # ---------------------------------------------------------------- digests of what stages read
    def recipe_sha256(self) -> str:
        return digest_bytes(self.recipe.path.read_bytes())

    def section(self, *names: str) -> str:
        """A digest of some blocks of the recipe, so a stage reruns only when those change."""
        return digest_value({n: getattr(self.recipe, n) for n in names})

    def teacher_files(self) -> str:
        return self.digests.model_dir(self.teacher_dir)

    def student_files(self) -> str | None:
        d = self.compiled.student_dir
        return self.digests.model_dir(d) if d.is_dir() else None

    def glob_files(self, pattern: str) -> str:
        """The digest of the files a recipe glob names now (none is a digest too: the stage reports it)."""
        from surgery.globs import matching

        return self.digests.files(matching(self.recipe.resolve(pattern)))

    # ---------------------------------------------------------------- errors and artifacts
    def error(self, message: str, *, pos: Pos | None = None, hint: str | None = None) -> SurgeryError:
        """An error placed in the recipe, with the caret line when `pos` is given."""
        err = SurgeryError(message, pos=pos, hint=hint)
        return err.located(self.recipe.path, self.recipe.path.read_text(encoding="utf-8"))

    def write_artifact(self, directory: Path, stage: str, inputs: dict, **outputs) -> artifact.Artifact:
        """Record `directory` as `stage`'s artifact, made from `inputs`; written last, so a
        directory whose manifest is there is complete."""
        directory.mkdir(parents=True, exist_ok=True)
        made = artifact.manifest(stage, recipe_path=self.recipe.path, recipe_sha256=self.recipe_sha256(),
                                 inputs=canonical(inputs), outputs=canonical(outputs))
        write_atomic(directory / artifact.MANIFEST, json.dumps(made, indent=1) + "\n")
        self.digests.save()
        return artifact.Artifact(directory, made)

    def require(self, directory: Path, stage: str, inputs: dict, *, command: str | None = None) -> artifact.Artifact:
        """`stage`'s artifact at `directory`, made from `inputs`; a one-line error when it is
        missing or was made from something else (another recipe, teacher or student)."""
        rerun = f"run `surgery {command or stage} {self.recipe.path}`"
        found = artifact.read(directory)
        if found is None or found.stage != stage:
            raise self.error(f"no {stage} output at {directory}", hint=f"{rerun} first")
        changed = _changed(found, inputs)
        if changed:
            raise self.error(f"the {stage} output at {directory} is stale: it was made from another "
                             f"{_input_names(changed)}", hint=f"{rerun} again")
        return found

    def fresh(self, directory: Path, stage: str, inputs: dict) -> artifact.Artifact | None:
        """`stage`'s artifact at `directory` when it was made from `inputs`, else None."""
        found = artifact.read(directory)
        return found if found is not None and found.stage == stage and not _changed(found, inputs) else None

    # ---------------------------------------------------------------- the student
    def student(self) -> Path:
        """The recipe's student directory, checked to hold the teacher layers the recipe keeps.

        Every stage that reads an existing student calls this. The check reads
        `student_config.json`, which surgery and the authors' code both write.
        """
        from surgery import durable

        d = self.compiled.student_dir
        durable.recover(d)  # a crash between the two renames of a swap leaves the student aside
        recipe, graph = self.recipe, self.graph
        where = recipe.student.layers.pos or recipe.student.pos
        if not (d / "config.json").is_file():
            raise self.error(f"no student in {d}", pos=recipe.student.pos,
                             hint=f"run `surgery init-student {recipe.path}` first")
        if not any(d.glob("*.safetensors")):
            raise self.error(f"{d} has no *.safetensors weights", pos=recipe.student.pos,
                             hint="an interrupted copy? rerun `surgery init-student` (and distill), or copy it again")
        path = d / STUDENT_CONFIG
        from surgery.source import read_config

        record = read_config(path, "student") if path.is_file() else None
        copied = record.get("copied_teacher_layers") if record else None
        if not isinstance(copied, list):
            raise self.error(f"{path} does not say which teacher layers the student holds", pos=where,
                             hint=f"make the student with `surgery init-student {recipe.path}`, or write "
                                  f"`copied_teacher_layers` into {STUDENT_CONFIG}")
        pruned = record.get("pruned_teacher_layers")
        if copied != list(graph.kept) or (pruned is not None and pruned != list(graph.pruned)):
            raise self.error(f"the student in {d} was made from teacher layers {_layers(copied)}, but the recipe "
                             f"keeps {_layers(graph.kept)}", pos=where,
                             hint="point `student` at a directory of its own, or rerun `surgery init-student` "
                                  "to start again from this recipe's layers")
        return d


def _changed(found: artifact.Artifact, inputs: dict) -> list[str]:
    now = canonical(inputs)
    return [k for k in sorted(set(now) | set(found.inputs)) if now.get(k) != found.inputs.get(k)]


def _layers(layers) -> str:
    return "[" + ", ".join(map(str, layers)) + "]"


_INPUT_NAMES = {"recipe": "recipe", "teacher": "teacher", "student": "student", "steps": "patch schedule",
                "schedule": "patch schedule", "models": "set of models", "emitted": "set of models"}


def _input_names(keys) -> str:
    names = dict.fromkeys(_INPUT_NAMES.get(k, k.replace("_", " ")) for k in keys)
    return " and ".join(names)
