"""What changes between two compiled recipes, in a reviewer's terms.

Sections: the teacher, the mapping (student layers and their teacher blocks), the losses,
the patch schedule (order, sizes and the models that come out), and every other setting.
Blocks are compared after compilation, so `keep first 1 every 2 last 2` and the explicit
`keep 0, 2..34 step 2, 35` are the same mapping.
"""

from __future__ import annotations

import dataclasses

from surgery import schedule
from surgery.audit import order_text, sizes_text
from surgery.layout import layer_ranges
from surgery.recipe import ast
from surgery.recipe.units import format_bytes, format_count

SECTIONS = ("teacher", "mapping", "losses", "schedule", "settings")


def diff(a, b) -> dict[str, list[str]]:
    """Changes from compiled recipe `a` to `b`, by section; empty lists where nothing changed."""
    return {
        "teacher": _teacher(a, b),
        "mapping": _mapping(a, b),
        "losses": _losses(a.recipe, b.recipe),
        "schedule": _schedule(a, b),
        "settings": _settings(a.recipe, b.recipe),
    }


def render(changes: dict[str, list[str]]) -> str:
    if not any(changes.values()):
        return "no differences in mapping, losses, schedule or settings\n"
    out = []
    for section in SECTIONS:
        if changes[section]:
            out.append(f"{section}:")
            out += [f"  {line}" for line in changes[section]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- values


def _show(value, name: str = "") -> str:
    """A setting's value as a recipe would write it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name in ("tokens",):
        return format_count(value)
    if name in ("shard",):
        return format_bytes(value)
    if name in ("fraction", "warmup") and isinstance(value, float) and value < 1:
        return f"{value * 100:g}%"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and name in _QUOTED:
        return f'"{value}"'
    if isinstance(value, tuple):
        return ", ".join(_show(v, name) for v in value) or "none"
    if dataclasses.is_dataclass(value):
        return _describe(value)
    return str(value)


_QUOTED = {"source", "path", "revision", "text", "template", "tasks_path", "report", "field", "split", "config"}
# AST field names that read differently in a recipe ("" leaves the word out).
_KEYWORD = {"checkpoint_every": "checkpoint every", "eval_every": "eval every", "template": "path",
            "kind": "", "fraction": ""}


def _describe(node) -> str:
    """One dataclass node (a data source, a loss) as its recipe line, roughly."""
    if isinstance(node, ast.DataSource):
        text = f'{node.kind} "{node.path}"'
        if node.kind == "hf":
            text += f' split "{node.split}"' + (f' config "{node.config}"' if node.config else "")
        if node.kind != "text":
            text += f' field "{node.field}"'
        return text + (f" weight {node.weight:g}" if node.weight != 1.0 else "")
    fields = [f for f in dataclasses.fields(node) if f.compare]  # positions are no part of a value
    return " ".join(f"{f.name} {_show(getattr(node, f.name), f.name)}" for f in fields)


def _walk(prefix: list[str], a, b, field: str = ""):
    """'name: old -> new' for each leaf that differs between two AST nodes (`field`: the leaf's)."""
    if a == b:
        return
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            if f.compare:
                yield from _walk(prefix + [_KEYWORD.get(f.name, f.name)], getattr(a, f.name), getattr(b, f.name),
                                 f.name)
        return
    name = " ".join(p for p in prefix if p)
    if isinstance(a, tuple) and isinstance(b, tuple) and name.endswith(("data", "tasks")):
        for x in b:
            if x not in a:
                yield f"{name}: added {_show(x, field)}"
        for x in a:
            if x not in b:
                yield f"{name}: removed {_show(x, field)}"
        return
    yield f"{name}: {_show(a, field)} -> {_show(b, field)}"


# --------------------------------------------------------------------------- sections


def _teacher(a, b) -> list[str]:
    lines = list(_walk(["teacher"], a.recipe.teacher, b.recipe.teacher))
    if a.graph.n_teacher != b.graph.n_teacher:
        lines.append(f"teacher depth: {a.graph.n_teacher} -> {b.graph.n_teacher} layers")
    return lines


def _spec(spec) -> str:
    if isinstance(spec, ast.KeepRule):
        return f"keep first {spec.first} every {spec.every} last {spec.last}"
    if isinstance(spec, ast.KeepList):
        spans = (f"{s.start}" if s.start == s.stop
                 else f"{s.start}..{s.stop}" + (f" step {s.step}" if s.step > 1 else "") for s in spec.spans)
        return "keep " + ", ".join(spans)
    return f"map of {len(spec.entries)} entries"


def _mapping(a, b) -> list[str]:
    lines = list(_walk(["student"], dataclasses.replace(a.recipe.student, layers=None),
                       dataclasses.replace(b.recipe.student, layers=None)))
    blocks_a = {blk.student: blk.teacher for blk in a.graph.blocks}
    blocks_b = {blk.student: blk.teacher for blk in b.graph.blocks}
    if a.graph.n_student != b.graph.n_student:
        lines.append(f"student depth: {a.graph.n_student} -> {b.graph.n_student} layers")
    for s in sorted(blocks_a.keys() | blocks_b.keys()):
        old, new = blocks_a.get(s), blocks_b.get(s)
        if old == new:
            continue
        if old is None:
            lines.append(f"student layer s{s}: added (block {layer_ranges(new)})")
        elif new is None:
            lines.append(f"student layer s{s}: removed (was block {layer_ranges(old)})")
        else:
            lines.append(f"student layer s{s}: block {layer_ranges(old)} -> {layer_ranges(new)}")
    if a.recipe.student.layers != b.recipe.student.layers and blocks_a == blocks_b:
        lines.append(f"layers written as `{_spec(a.recipe.student.layers)}` -> `{_spec(b.recipe.student.layers)}` "
                     "(same blocks)")
    return lines


def _losses(a: ast.Recipe, b: ast.Recipe) -> list[str]:
    old = {x.kind: x for x in (a.distill.losses if a.distill else ())}
    new = {x.kind: x for x in (b.distill.losses if b.distill else ())}
    lines = []
    for kind in list(old) + [k for k in new if k not in old]:
        if kind not in new:
            lines.append(f"loss {kind} removed (weight {old[kind].weight:g})")
        elif kind not in old:
            lines.append(f"loss {kind} added (weight {new[kind].weight:g})")
        else:
            lines += _walk([f"loss {kind}"], old[kind], new[kind])
    return lines


def _model(compiled, step) -> str:
    if step.assembly is None:
        depth = schedule.estimate(compiled.graph, compiled.recipe.patch.order, step.k).depth
        return f"chosen at plan time (~{depth} layers)"
    return f"{layer_ranges(step.assembly.patched, 's')} ({step.assembly.depth} layers)"


def _schedule(a, b) -> list[str]:
    pa, pb = a.recipe.patch, b.recipe.patch
    lines = []
    if pa.order != pb.order:
        lines.append(f"order {order_text(pa.order)} -> {order_text(pb.order)}")
    if pa.sizes != pb.sizes:
        lines.append(f"sizes {sizes_text(pa.sizes)} -> {sizes_text(pb.sizes)}")
    lines += _walk(["calibration"], pa.calibration, pb.calibration)
    lines += [f"{name} {getattr(pa, name)} -> {getattr(pb, name)}" for name in ("candidates", "exhaustive")
              if getattr(pa, name) != getattr(pb, name)]
    steps_a = {s.k: _model(a, s) for s in a.steps}
    steps_b = {s.k: _model(b, s) for s in b.steps}
    removed = sorted(steps_a.keys() - steps_b.keys())
    added = sorted(steps_b.keys() - steps_a.keys())
    if removed:
        lines.append(f"models no longer emitted: patched {layer_ranges(removed)}")
    if added:
        lines.append(f"models now emitted: patched {layer_ranges(added)}")
    for k in sorted(steps_a.keys() & steps_b.keys()):
        if steps_a[k] != steps_b[k]:
            lines.append(f"patched {k}: {steps_a[k]} -> {steps_b[k]}")
    return lines


def _settings(a: ast.Recipe, b: ast.Recipe) -> list[str]:
    lines = []
    for block in ("distill", "emit", "evaluate"):
        old, new = getattr(a, block), getattr(b, block)
        if old is None and new is not None:
            lines.append(f"{block} block added")
        elif new is None and old is not None:
            lines.append(f"{block} block removed")
        elif old is not None:
            if block == "distill":  # the losses have a section of their own
                old, new = dataclasses.replace(old, losses=()), dataclasses.replace(new, losses=())
            lines += _walk([block], old, new)
    return lines
