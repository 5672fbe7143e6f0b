"""The patch schedule: which patched set each requested size gets, for the orders known
without measurement (`last_to_first`, `first_to_last`, an explicit list).

`klpatch` and `optimal` choose their sets from calibration measurements (surgery.planning);
for those the schedule here fixes the step counts only.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgery.errors import SurgeryError
from surgery.graph import Assembly, LayerGraph
from surgery.recipe.ast import Patch, Sizes
from surgery.recipe.units import format_bytes, format_count

MEASURED_ORDERS = ("klpatch", "optimal")


@dataclass(frozen=True)
class Step:
    k: int  # patch steps taken
    assembly: Assembly | None  # None for measured orders until they are planned


def steps_available(graph: LayerGraph, order) -> int:
    return len(order) if isinstance(order, tuple) else len(graph.patchable)


def assembly_for(graph: LayerGraph, order, k: int) -> Assembly | None:
    """The patched model after k steps of a non-measured order; None for measured ones."""
    if isinstance(order, tuple):
        return graph.assemble(order[:k])
    if order in MEASURED_ORDERS:
        return None
    return graph.sequential(order, k)


def check_order(graph: LayerGraph, patch: Patch) -> None:
    if isinstance(patch.order, tuple):
        for layer in patch.order:
            if layer >= graph.n_student:
                raise SurgeryError(f"the order names s{layer}, but the student has {graph.n_student} layers",
                                   pos=patch.pos, hint=f"student layers are s0..s{graph.n_student - 1}")
    elif patch.order in MEASURED_ORDERS and patch.calibration is None:
        raise SurgeryError(f"`order {patch.order}` measures KL on calibration data, and none is given",
                           pos=patch.pos, hint='add `calibration text "held-out/*.txt"` to the patch block')


def resolve(graph: LayerGraph, patch: Patch, dtype: str) -> tuple[Step, ...]:
    """The steps the recipe's `sizes` ask for, in increasing size."""
    check_order(graph, patch)
    sizes, order = patch.sizes, patch.order
    n = steps_available(graph, order)
    if sizes.kind == "all":
        ks = list(range(1, n + 1))
    elif sizes.kind == "patched":
        ks = [int(v) for v in sizes.values]
        for k in ks:
            if k > n:
                raise SurgeryError(f"sizes ask for {k} patched layers, but there are only {n} patch steps",
                                   pos=sizes.pos, hint=f"use counts from 0 to {n}")
    else:
        ks = [_fit(graph, order, n, sizes, target, dtype) for target in sizes.values]
    return tuple(Step(k, assembly_for(graph, order, k)) for k in sorted(set(ks)))


def _measure(graph: LayerGraph, order, k: int, kind: str, dtype: str) -> float:
    assembly = assembly_for(graph, order, k)
    if assembly is None:  # measured orders patch patchable blocks only; depth and size follow from k
        assembly = graph.assemble(graph.patchable[len(graph.patchable) - k:]) if k else graph.student
    if kind == "layers":
        return assembly.depth
    size = graph.size(assembly)
    return size.params if kind == "params" else size.bytes(dtype)


def _fit(graph: LayerGraph, order, n: int, sizes: Sizes, target: float, dtype: str) -> int:
    """The largest step whose model fits within `target` (layers, params or bytes)."""
    fitting = [k for k in range(n + 1) if _measure(graph, order, k, sizes.kind, dtype) <= target]
    if not fitting:
        smallest = _measure(graph, order, 0, sizes.kind, dtype)
        shown = {"layers": lambda v: f"{int(v)} layers", "params": format_count, "bytes": format_bytes}[sizes.kind]
        raise SurgeryError(f"no model fits `{sizes.kind} {shown(target)}`: the student alone is {shown(smallest)}",
                           pos=sizes.pos, hint="ask for a size at least as large as the student")
    return max(fitting)
