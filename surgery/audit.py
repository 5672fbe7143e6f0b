"""The audit of a compiled recipe: the teacher, the student, its mapping and every patched size.

`build(compiled)` reads everything from the layer graph and the teacher's config (no weights);
`render(compiled, fmt)` writes it as a terminal table, review-ready markdown, JSON or YAML, or
has `surgery.drawing` draw the graph itself (DOT, Mermaid, SVG, PNG).

Parameter counts come in two flavours. *Training-time* counts a tied head once, the way the
paper quotes its students. *Untied* counts the head apart from the embeddings: what a model
carries once its embeddings and head come from different sides, as most patched models do.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from surgery import layout
from surgery.layout import layer_ranges
from surgery.recipe.ast import KeepRule
from surgery.recipe.units import format_bytes, format_count

if TYPE_CHECKING:  # the graph pulls in networkx; the CLI imports this module for FORMATS alone
    from surgery.graph import LayerGraph

PICTURES = ("dot", "mermaid", "svg", "png")  # drawings of the layer graph, by surgery.drawing
FORMATS = ("table", "markdown", "json", "yaml", *PICTURES)
BINARY_FORMATS = ("png",)


@dataclass(frozen=True)
class ModelCount:
    layers: int
    params: int  # training-time: a tied head counted once
    params_untied: int  # the head counted apart from the embeddings
    tied: bool


@dataclass(frozen=True)
class MappingRow:
    student: int
    block: tuple[int, ...]  # the teacher layers it stands for
    init: int  # the teacher layer it is copied from
    aligned: tuple[int, int]  # (student, teacher) hidden-state indices the cosine loss compares
    params: int  # the student layer
    block_params: int  # the teacher block: what patching this layer puts in its place


@dataclass(frozen=True)
class SizeRow:
    steps: int  # patch steps taken
    patched: tuple[int, ...] | None  # student layers replaced; None until a measured order plans
    depth: int
    params: int
    params_untied: int
    tied: bool
    bytes: int  # in the emit dtype
    emit: str | None  # the output directory, relative to the recipe


@dataclass(frozen=True)
class Audit:
    recipe: str
    teacher_source: str
    teacher_origin: str  # where its config came from: local | hf-cache | bundled | hub
    model_type: str
    teacher: ModelCount
    student_path: str
    student_init: str
    student: ModelCount
    embeddings_params: int
    final_norm_params: int
    head_params: int
    mapping: tuple[MappingRow, ...]
    embedding_pair: tuple[int, int]
    cosine_weight: float | None  # the cosine loss weight, split evenly over the aligned pairs
    order: str  # an order name, or "[s3, s1]" for an explicit list
    measured: bool  # klpatch / optimal: the patched sets are chosen at plan time
    sizes_spec: str
    emit_dtype: str
    sizes: tuple[SizeRow, ...]
    # The pairs the authors' get_layer_mappings aligns for this `keep first/every/last` rule,
    # when they differ from the graph's (docs/language.md says when and why); else None.
    authors_pairs: tuple[tuple[int, int], ...] | None = None


def _count(graph: LayerGraph, assembly) -> ModelCount:
    size = graph.size(assembly)
    return ModelCount(assembly.depth, size.params, size.params_untied, size.tied)


def sizes_text(sizes) -> str:
    """A `sizes` setting as written: 'all', '1, 4, 8', 'params 3B, 3.5B'."""
    if sizes.kind == "all":
        return "all"
    shown = {"params": format_count, "bytes": format_bytes}.get(sizes.kind, lambda v: str(int(v)))
    values = ", ".join(shown(v) for v in sizes.values)
    return values if sizes.kind == "patched" else f"{sizes.kind} {values}"


def order_text(order) -> str:
    """An `order` setting as written: a name, or '[s3, s1]'."""
    return order if isinstance(order, str) else "[" + ", ".join(f"s{i}" for i in order) + "]"


def build(compiled, name: str | None = None) -> Audit:
    """The audit of `compiled`; `name` is how to show the recipe path (default: as resolved)."""
    from surgery import schedule

    recipe, graph = compiled.recipe, compiled.graph
    per_layer, embeddings, final_norm, head = graph.part_params
    pairs = graph.aligned_pairs
    mapping = tuple(
        MappingRow(b.student, b.teacher, b.init, pairs[b.student + 1], per_layer[b.init],
                   sum(per_layer[t] for t in b.teacher))
        for b in graph.blocks
    )
    order = recipe.patch.order
    measured = order in schedule.MEASURED_ORDERS
    rows = []
    for step in compiled.steps:
        assembly = step.assembly or schedule.estimate(graph, order, step.k)
        size = graph.size(assembly)
        emit = None
        if recipe.emit is not None and step.assembly is not None:
            emit = os.path.relpath(compiled.emit_dir(step.assembly), recipe.path.parent)
        rows.append(SizeRow(step.k, None if step.assembly is None else tuple(sorted(step.assembly.patched)),
                            assembly.depth, size.params, size.params_untied, size.tied,
                            size.bytes(compiled.emit_dtype), emit))
    cosine = [loss.weight for loss in recipe.distill.losses if loss.kind == "cosine"] if recipe.distill else []
    authors = None
    if isinstance(recipe.student.layers, KeepRule):
        rule = recipe.student.layers
        authors = layout.authors_aligned_pairs(rule.first, rule.every, rule.last, graph.n_teacher)
        authors = None if set(authors) == set(pairs) else authors
    return Audit(
        recipe=name or str(recipe.path),
        teacher_source=recipe.teacher.source,
        teacher_origin=compiled.teacher.origin,
        model_type=str(graph.teacher_config.get("model_type")),
        teacher=_count(graph, graph.teacher),
        student_path=recipe.student.path,
        student_init=recipe.student.init,
        student=_count(graph, graph.student),
        embeddings_params=embeddings,
        final_norm_params=final_norm,
        head_params=head,
        mapping=mapping,
        embedding_pair=pairs[0],
        cosine_weight=cosine[0] if cosine else None,
        order=order_text(order),
        measured=measured,
        sizes_spec=sizes_text(recipe.patch.sizes),
        emit_dtype=compiled.emit_dtype,
        sizes=tuple(rows),
        authors_pairs=authors,
    )


def render(compiled, fmt: str, name: str | None = None) -> str | bytes:
    """The audit of `compiled` in format `fmt` (one of FORMATS); bytes for PNG."""
    if fmt in PICTURES:
        from surgery import drawing

        title = name or str(compiled.recipe.path)
        if fmt in ("svg", "png"):
            return drawing.draw(compiled.graph, fmt, title)
        return {"dot": drawing.to_dot, "mermaid": drawing.to_mermaid}[fmt](compiled.graph, title)
    audit = build(compiled, name)
    if fmt == "json":
        return json.dumps(to_dict(audit, compiled.graph), indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(to_dict(audit, compiled.graph))), sort_keys=False)
    if fmt == "markdown":
        return to_markdown(audit)
    if fmt == "table":
        return to_table(audit)
    raise ValueError(fmt)


# --------------------------------------------------------------------------- text forms


def _pair(pair: tuple[int, int]) -> str:
    return f"{pair[0]} ↔ {pair[1]}"


def _summary_rows(a: Audit) -> list[list[str]]:
    def row(what, count: ModelCount):
        return [what, str(count.layers), format_count(count.params), format_count(count.params_untied),
                "yes" if count.tied else "no"]

    return [row(f"teacher {a.teacher_source} ({a.model_type}, {a.teacher_origin} config)", a.teacher),
            row(f"student {a.student_path} (init {a.student_init})", a.student)]


_SUMMARY_HEAD = ["model", "layers", "params (training)", "params (untied)", "tied head"]


def _mapping_rows(a: Audit) -> list[list[str]]:
    last = len(a.mapping) - 1
    rows = [["embed", "embed", "embed", _pair(a.embedding_pair), format_count(a.embeddings_params), ""]]
    for r in a.mapping:
        aligned = _pair(r.aligned) + (" (after final norm)" if r.student == last else "")
        rows.append([f"s{r.student}", layer_ranges(r.block), str(r.init), aligned, format_count(r.params),
                     format_count(r.block_params)])
    rows.append(["final norm", "final norm", "final norm", "", format_count(a.final_norm_params), ""])
    tied = " (tied to embed)" if a.teacher.tied else ""
    rows.append([f"head{tied}", "head", "head", "", format_count(a.head_params), ""])
    return rows


_MAPPING_HEAD = ["student", "teacher block", "init from", "aligned pair (S ↔ T)", "params", "block params"]


def _size_rows(a: Audit) -> list[list[str]]:
    rows = []
    for r in a.sizes:
        approx = "~" if r.patched is None else ""
        patched = f"chosen by {a.order} at plan time" if r.patched is None else layer_ranges(r.patched, "s")
        row = [str(r.steps), patched, f"{approx}{r.depth}", approx + format_count(r.params),
               approx + format_bytes(r.bytes)]
        if a.teacher.tied:
            row.append("yes" if r.tied else "no")
        if any(s.emit for s in a.sizes):
            row.append(r.emit or "")
        rows.append(row)
    return rows


def _size_head(a: Audit) -> list[str]:
    head = ["steps", "student layers patched", "depth", "params", f"size ({a.emit_dtype})"]
    if a.teacher.tied:
        head.append("tied head")
    if any(s.emit for s in a.sizes):
        head.append("emit")
    return head


def _notes(a: Audit) -> dict[str, str]:
    pairs = len(a.mapping) + 1
    cosine = ""
    if a.cosine_weight is not None:
        cosine = f" The cosine loss weight {a.cosine_weight:g} is split over these {pairs} pairs " \
                 f"({a.cosine_weight / pairs:.3g} each)."
    notes = {
        "summary": "Training-time counts a tied head once (how the paper quotes its students); untied counts "
                   "it apart from the embeddings, as in a model whose embeddings and head come from "
                   "different sides.",
        "mapping": "Student layer i is copied from the first layer of its teacher block and stands in for "
                   "the whole block. Aligned pairs are hidden-state indices (0 = the embedding output)."
                   + cosine,
        "sizes": "",
    }
    if a.authors_pairs is not None:
        ours = {r.aligned for r in a.mapping} | {a.embedding_pair}
        theirs = set(a.authors_pairs)
        notes["mapping"] += (" The authors' get_layer_mappings aligns other pairs for this rule: it leaves out "
                             f"{_pairs(ours - theirs)}" + (f" and aligns {_pairs(theirs - ours)} instead"
                                                           if theirs - ours else "")
                             + "; surgery aligns every student output with the end of its own block "
                               "(docs/language.md).")
    if a.measured:
        notes["sizes"] = (f"`{a.order}` picks the patched layers at plan time, from calibration data. Depth and "
                          "size (~) are shown for the last patchable blocks, the estimate `sizes` is fitted with. "
                          "They hold for any choice when the patchable blocks have equal shapes, except that "
                          "a tied head is untied when the first block is patched and the last is not.")
    return notes


def _pairs(pairs) -> str:
    return ", ".join(_pair(p) for p in sorted(pairs))


def _schedule_title(a: Audit) -> str:
    return f"patch schedule: order {a.order}, sizes {a.sizes_spec} ({len(a.sizes)} sizes)"


def _text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    numeric = _numeric_columns(head, rows)
    line = lambda cells: "  ".join(c.rjust(w) if n else c.ljust(w)  # noqa: E731
                                    for c, w, n in zip(cells, widths, numeric)).rstrip()
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    numeric = _numeric_columns(head, rows)
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in head) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    return out + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]


def _numeric_columns(head: list[str], rows: list[list[str]]) -> list[bool]:
    """Columns holding only numbers (right-aligned)."""
    numeric = lambda c: c == "" or (c.lstrip("~")[:1].isdigit() and " " not in c)  # noqa: E731
    return [bool(rows) and all(numeric(r[i]) for r in rows) for i in range(len(head))]


def to_table(a: Audit) -> str:
    notes = _notes(a)
    out = [f"audit of {a.recipe}", ""]
    out += _text_table(_SUMMARY_HEAD, _summary_rows(a)) + ["", "mapping:"]
    out += _text_table(_MAPPING_HEAD, _mapping_rows(a))
    if a.authors_pairs is not None:
        out += ["", notes["mapping"]]
    out += ["", _schedule_title(a) + ":"]
    out += _text_table(_size_head(a), _size_rows(a))
    if notes["sizes"]:
        out += ["", notes["sizes"]]
    return "\n".join(out) + "\n"


def to_markdown(a: Audit) -> str:
    notes = _notes(a)
    out = [f"### Audit of `{a.recipe}`", ""]
    out += _md_table(_SUMMARY_HEAD, _summary_rows(a)) + ["", notes["summary"], "", "#### Mapping", ""]
    out += _md_table(_MAPPING_HEAD, _mapping_rows(a)) + ["", notes["mapping"], "",
                                                         f"#### {_schedule_title(a).capitalize()}", ""]
    out += _md_table(_size_head(a), _size_rows(a))
    if notes["sizes"]:
        out += ["", notes["sizes"]]
    return "\n".join(out) + "\n"


def to_dict(a: Audit, graph: LayerGraph) -> dict:
    """The audit as plain data, with the layer graph's nodes and edges."""
    out = asdict(a)
    out["graph"] = {
        "nodes": [{"id": n, **attrs} for n, attrs in graph.graph.nodes(data=True)],
        "edges": [{"from": u, "to": v, "kind": k, **attrs}
                  for u, v, k, attrs in graph.graph.edges(keys=True, data=True)],
    }
    return out
