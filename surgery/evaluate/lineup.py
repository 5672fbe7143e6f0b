"""The models a recipe's evaluation covers, and the evaluation record the report renders.

The line-up is the student, every emitted size and the teacher, shallowest first, each with its
naive-pruning counterpart of the same size when the recipe asks for the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.graph import Assembly


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "student" | "interpolated" | "teacher"
    assembly: Assembly
    directory: Path
    naive: Path | None  # the naive-pruning model of the same size; None for the teacher or without baseline


def lineup(compiled, emitted: list[tuple[Assembly, Path]], teacher_dir: Path, baseline_run: Path | None) -> list[Entry]:
    """Student, emitted sizes and teacher. `baseline_run` is the run directory when the
    naive-pruning baseline is wanted (its models live there), else None."""
    from surgery.evaluate.baseline import naive_dir
    from surgery.outputs import PRUNED_STUDENT

    g = compiled.graph
    models = {frozenset(): (g.student, compiled.student_dir)}
    models.update({a.patched: (a, Path(d)) for a, d in emitted})
    models.setdefault(g.teacher.patched, (g.teacher, Path(teacher_dir)))
    entries = []
    for patched, (assembly, directory) in sorted(models.items(), key=lambda kv: (kv[1][0].depth, g.size(kv[1][0]).params)):
        kind = "student" if not patched else "teacher" if patched == g.teacher.patched else "interpolated"
        naive = None
        if baseline_run is not None and kind != "teacher":
            naive = baseline_run / PRUNED_STUDENT if kind == "student" else naive_dir(baseline_run, assembly)
        name = kind if kind != "interpolated" else f"{assembly.depth}L"
        entries.append(Entry(name, kind, assembly, directory, naive))
    return entries


def evaluation_record(compiled, entries: list[Entry], scores: dict[Path, dict], evaluator) -> dict:
    """The plain-JSON record surgery.evaluate.report renders (its docstring gives the schema)."""
    g, block = compiled.graph, evaluator.block
    models = []
    for e in entries:
        size = g.size(e.assembly)
        models.append({
            "name": e.name, "kind": e.kind, "depth": e.assembly.depth, "patched": sorted(e.assembly.patched),
            "params": size.params, "bytes": size.bytes(compiled.emit_dtype), "dir": str(e.directory),
            "scores": scores[e.directory],
            "naive": None if e.naive is None else {"dir": str(e.naive), "scores": scores[e.naive]},
        })
    perplexity = None
    if block.perplexity is not None:
        perplexity = {"files": [str(p) for p in evaluator.text_files], "seq": block.perplexity.seq,
                      "stride": block.perplexity.stride}
    return {"recipe": str(compiled.recipe.path), "teacher": compiled.teacher.spec, "dtype": compiled.emit_dtype,
            "perplexity": perplexity, "tasks": list(block.tasks), "limit": block.limit, "models": models}
