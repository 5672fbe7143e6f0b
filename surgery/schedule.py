"""The patch schedule: which patched set each requested size gets, for the orders known
without measurement (`last_to_first`, `first_to_last`, an explicit list).

`klpatch` and `optimal` choose their sets from calibration measurements (surgery.planning);
for those the schedule here fixes the step counts only. For a size target that count is an
upper bound: the most steps for which some model fits, found from every end state of the
planner's DAG (exact with uneven blocks and with heads that become untied). The planner then
picks the best measured model that fits.
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
    """One step of the patch schedule: the model after `k` patches."""

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


def estimate(graph: LayerGraph, order, k: int) -> Assembly:
    """The model after k steps; for a measured order, the last k patchable blocks stand in.

    Measured orders patch patchable blocks only, so with blocks of equal shape the depth and
    size follow from k alone, whichever blocks the planner picks.
    """
    assembly = assembly_for(graph, order, k)
    if assembly is None:
        assembly = graph.assemble(graph.patchable[len(graph.patchable) - k:]) if k else graph.student
    return assembly


def size_of(graph: LayerGraph, assembly: Assembly, kind: str, dtype: str) -> float:
    """An assembly's size in a `sizes` unit: layers, params, or bytes in `dtype`."""
    if kind == "layers":
        return assembly.depth
    size = graph.size(assembly)
    return size.params if kind == "params" else size.bytes(dtype)


def step_of(graph: LayerGraph, patched) -> int:
    """The size step of a patched set: how many patchable layers it patches."""
    return len(set(patched) & set(graph.patchable))


def _smallest(graph: LayerGraph, order, n: int, kind: str, dtype: str) -> list[float]:
    """The smallest model each step count can give (the only one, for non-measured orders)."""
    if order not in MEASURED_ORDERS:
        return [size_of(graph, assembly_for(graph, order, k), kind, dtype) for k in range(n + 1)]
    from surgery.planning.dag import choices

    out = [float("inf")] * (n + 1)
    for end in choices(graph, lambda i, before, patched: 0.0):
        k = step_of(graph, end.patched)
        out[k] = min(out[k], size_of(graph, graph.assemble(end.patched), kind, dtype))
    return out


def _fit(graph: LayerGraph, order, n: int, sizes: Sizes, target: float, dtype: str) -> int:
    """The largest step with a model that fits within `target` (layers, params or bytes)."""
    smallest = _smallest(graph, order, n, sizes.kind, dtype)
    fitting = [k for k in range(n + 1) if smallest[k] <= target]
    if not fitting:
        written = {"layers": lambda v: str(int(v)), "params": format_count, "bytes": format_bytes}[sizes.kind]
        shown = {"layers": lambda v: f"{int(v)} layers", "params": format_count, "bytes": format_bytes}[sizes.kind]
        raise SurgeryError(f"no model fits `sizes {sizes.kind} {written(target)}`: the student alone is "
                           f"{shown(smallest[0])}",
                           pos=sizes.pos, hint="ask for a size at least as large as the student")
    return max(fitting)
