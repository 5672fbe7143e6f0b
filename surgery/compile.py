"""Compile a recipe against its teacher's config into a layer graph and a patch schedule.

Needs `config.json` only: a directory holding nothing else is enough. Every check that can
fail on user input happens here, before anything is downloaded or loaded.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from surgery import arch as arch_registry
from surgery import layout, outputs, schedule, source
from surgery.errors import SurgeryError
from surgery.graph import LayerGraph
from surgery.recipe.ast import Recipe
from surgery.recipe.parse import load
from surgery.recipe.units import format_count

PLACEHOLDERS = ("layers", "params", "patched")


@dataclass(frozen=True)
class Compiled:
    """A recipe checked against its teacher: the layer graph and the patch schedule."""

    recipe: Recipe
    teacher: source.ModelSource
    graph: LayerGraph
    steps: tuple[schedule.Step, ...]

    @property
    def student_dir(self) -> Path:
        return self.recipe.resolve(self.recipe.student.path)

    @property
    def run_dir(self) -> Path:
        """Where the recipe's run keeps its artifacts: the parent of its student directory."""
        return self.student_dir.parent

    @property
    def report_dir(self) -> Path:
        block = self.recipe.evaluate
        return self.recipe.resolve(block.report) if block and block.report else self.run_dir / "report"

    @property
    def emit_dtype(self) -> str:
        return self.recipe.emit.dtype if self.recipe.emit else self.recipe.teacher.dtype

    def emit_dir(self, assembly) -> Path:
        """Where the emit template puts a model."""
        template = self.recipe.emit.template
        params = format_count(self.graph.size(assembly).params) if "{params}" in template else ""
        name = template.format(
            layers=assembly.depth, params=params,
            patched="none" if not assembly.patched else "-".join(f"s{i}" for i in sorted(assembly.patched)),
        )
        return self.recipe.resolve(name)


def compile_recipe(recipe: Recipe) -> Compiled:
    """Resolve the teacher config, build the layer graph and resolve the schedule."""
    file = recipe.path
    teacher = source.resolve(recipe.teacher.source, base=file.parent, revision=recipe.teacher.revision,
                             file=file, pos=recipe.teacher.pos)
    config = teacher.config
    _check_remote_code(recipe, config)
    try:
        arch = arch_registry.for_config(config)
        n_teacher = arch.depth_of(config)
    except SurgeryError as err:
        raise SurgeryError(err.message, file=file, pos=recipe.teacher.pos, hint=err.hint) from None
    _check_positions(recipe, arch, config)
    blocks = layout.blocks(recipe.student.layers, n_teacher)
    graph = LayerGraph(arch, config, blocks)
    compiled_dtype = recipe.emit.dtype if recipe.emit else recipe.teacher.dtype
    compiled = Compiled(recipe, teacher, graph, schedule.resolve(graph, recipe.patch, compiled_dtype))
    _check_paths(compiled)
    return compiled


def compile_file(path: str | Path) -> Compiled:
    """Load and compile a recipe file; every error is located in that file."""
    path = Path(path)
    recipe = load(path)
    try:
        return compile_recipe(recipe)
    except SurgeryError as err:
        if err.file is not None and err.file != str(recipe.path):
            raise
        # Errors about the recipe itself name it as the user wrote it, with the caret line.
        raise err.located(path, path.read_text(encoding="utf-8")) from None


def _check_remote_code(recipe: Recipe, config: dict) -> None:
    if config.get("model_type") in arch_registry.registry():
        return
    if "auto_map" in config and not recipe.teacher.trust_remote_code:
        raise SurgeryError(f"the teacher's `{config.get('model_type')}` architecture runs code from its repository",
                           pos=recipe.teacher.pos,
                           hint="read that code, then add `trust_remote_code yes` to the teacher block")


def _check_positions(recipe: Recipe, arch, config: dict) -> None:
    """Every sequence length the recipe asks for, written or by default, fits in the teacher's positions."""
    limit = config.get(arch.positions)
    if isinstance(limit, bool) or not isinstance(limit, int):
        return  # no limit stated: transformers decides
    lengths = []
    if recipe.distill is not None:
        d = recipe.distill
        written = "seq" in d.setting_pos
        lengths.append(("seq" if written else "seq (the default)", d.seq, d.setting_pos.get("seq", d.pos)))
    if recipe.patch.calibration is not None:
        lengths.append(("calibration seq", recipe.patch.calibration.seq, recipe.patch.calibration.pos))
    if recipe.evaluate is not None and recipe.evaluate.perplexity is not None:
        lengths.append(("perplexity seq", recipe.evaluate.perplexity.seq, recipe.evaluate.perplexity.pos))
    for what, seq, pos in lengths:
        if seq > limit:
            raise SurgeryError(f"{what} {seq} is longer than the teacher's {limit:,} positions", pos=pos,
                               hint=f"`{arch.positions}` in its config.json is {limit}; write `seq {limit}` or less")


def _placeholders(emit) -> set[str]:
    """The placeholders of the emit template; anything `str.format` would not fill is an error."""
    hint = "placeholders are {layers}, {params}, {patched}; write {{ or }} for a literal brace"
    try:
        parts = list(string.Formatter().parse(emit.template))
    except ValueError as err:
        raise SurgeryError(f"the emit path is not a valid template: {err}", pos=emit.pos, hint=hint) from None
    fields = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise SurgeryError(f"unknown placeholder `{{{written}}}` in the emit path", pos=emit.pos, hint=hint)
        fields.add(name)
    return fields


def _check_paths(compiled: Compiled) -> None:
    outputs.check_student(compiled)
    outputs.check_run_files(compiled)
    emit = compiled.recipe.emit
    emitted = []
    if emit is not None:
        fields = _placeholders(emit)
        if len(compiled.steps) > 1 and not fields:
            raise SurgeryError(f"the emit path has no placeholder, but {len(compiled.steps)} sizes are emitted",
                               pos=emit.pos, hint='add one, e.g. "runs/models/{layers}L"')
        emitted = [path for _, path in outputs.emit_paths(compiled)]
    if compiled.recipe.evaluate is not None:
        outputs.check_report(compiled, emitted)
