"""PatchSchedule the patch schedule: which patched set each size gets, and how close each is to the teacher.

Every order gives a menu of candidate models, each with the step it stands for (patchable
layers patched) and a score, lower being better:

- `last_to_first`, `first_to_last`, an explicit list: one model per step; the schedule in
  `surgery.schedule` already picked the recipe's sizes from them (the most steps that fit).
- `klpatch`: the greedy chain, scored by measured KL.
- `optimal`: the best measured set of every model size, among the cheapest sets under the
  additive model (`optimal`), scored by measured KL.

For a measured order, `sizes all` and patched counts take the best model of each step, and a
`layers`/`params`/`bytes` target takes the best model that fits it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from surgery import schedule
from surgery.compile import Compiled
from surgery.errors import SurgeryError
from surgery.graph import LayerGraph
from surgery.planning import greedy, optimal
from surgery.recipe.ast import Sizes

SEQUENTIAL = ("last_to_first", "first_to_last")
ORDERS = SEQUENTIAL + schedule.MEASURED_ORDERS

Measure = Callable[[Sequence[frozenset[int]]], list[float]]


@dataclass(frozen=True)
class Candidate:
    patched: frozenset[int]
    step: int
    score: float  # lower is better: KL, or -step for orders that measure nothing
    predicted: float | None = None  # the additive model's cost (order `optimal`)


@dataclass(frozen=True)
class Entry:
    """One planned model, as `surgery plan` prints and writes it."""

    step: int
    patched: tuple[int, ...]
    depth: int
    params: int
    params_untied: int
    tied: bool
    bytes: int
    kl: float | None = None  # measured KL(teacher || model) per token on the calibration rows
    predicted: float | None = None  # the additive model's cost (order `optimal`)


@dataclass(frozen=True)
class PatchSchedule:
    recipe: str
    order: str
    dtype: str  # the emit dtype, for bytes
    steps: tuple[Entry, ...]
    curves: dict[str, tuple[Entry, ...]] = field(default_factory=dict)  # order -> every step, measured
    calibration: dict | None = None  # rows, seq, device, forward passes spent
    note: str | None = None  # why nothing was measured
    optimal: optimal.Search | None = None  # what `optimal` measured, where it ran

    def to_json(self) -> dict:
        return {
            "recipe": self.recipe, "order": self.order, "dtype": self.dtype,
            "steps": [asdict(e) for e in self.steps],
            "curves": {name: [asdict(e) for e in entries] for name, entries in self.curves.items()},
            "calibration": self.calibration, "note": self.note,
            "optimal": self.optimal.to_json() if self.optimal else None,
        }


def label(order) -> str:
    return order if isinstance(order, str) else "[" + ", ".join(f"s{i}" for i in order) + "]"


def layers_text(patched) -> str:
    """(0, 2, 3, 4, 5) -> 's0,s2..s5': runs of three or more as ranges; '-' for none."""
    runs: list[list[int]] = []
    for i in sorted(patched):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"s{r[0]}..s{r[-1]}" if len(r) > 2 else ",".join(f"s{i}" for i in r) for r in runs) or "-"


def entry(graph: LayerGraph, patched, step: int, dtype: str, kl: float | None = None,
          predicted: float | None = None) -> Entry:
    assembly = graph.assemble(patched)
    size = graph.size(assembly)
    return Entry(step, tuple(sorted(assembly.patched)), assembly.depth, size.params, size.params_untied,
                 size.tied, size.bytes(dtype), kl, predicted)


def optimal_report(found: optimal.Search) -> list[str]:
    """What `surgery plan` prints about `optimal`'s search: a header, then one line per size."""
    head = (f"optimal measured {found.models} models: {found.probes} for the additive model, then the "
            f"{found.candidates} cheapest sets of each size, or all of them where a size has at most "
            f"{found.exhaustive}")
    return [head] + [optimal_line(s) for s in found.sizes]


def optimal_line(size: optimal.SizeSearch) -> str:
    """One size in one line: how much of it was measured, the pick, and the model's rank of it."""
    from surgery.recipe.units import format_count

    shape = f"{size.depth} layers, {format_count(size.params)}{'' if size.tied else ' untied'} (step {size.step})"
    scope = (f"{len(size.candidates)} of {size.sets} measured" if not size.exhaustive
             else f"all {size.sets} sets measured" if size.sets > 1 else "its only set measured")
    pick = size.pick
    line = f"  {shape}: {scope}; pick {layers_text(pick.patched)}, KL {pick.kl:.4f}, the model's #{size.rank}"
    if size.rank > 1:
        first = size.candidates[0]
        line += f"; its #1 {layers_text(first.patched)} measures {first.kl:.4f}"
    return line


# ---------------------------------------------------------------------- menus
def menu(graph: LayerGraph, order, measure: Measure | None) -> list[Candidate]:
    """Every model the order can give, with its step and score (`optimal` with default settings)."""
    if order not in schedule.MEASURED_ORDERS:
        n = schedule.steps_available(graph, order)
        return [Candidate(schedule.assembly_for(graph, order, k).patched, k, -k) for k in range(n + 1)]
    if order == "klpatch":
        return [Candidate(s, schedule.step_of(graph, s), kl) for s, kl in greedy.klpatch(graph.n_student, measure)]
    return searched(optimal.search(graph, measure))


def searched(found: optimal.Search) -> list[Candidate]:
    """`optimal`'s menu: the pick of every size, scored by its measured KL."""
    return [Candidate(s.pick.patched, s.step, s.pick.kl, s.pick.predicted) for s in found.sizes]


def best_per_step(candidates: list[Candidate]) -> dict[int, Candidate]:
    out: dict[int, Candidate] = {}
    for c in candidates:
        if c.step not in out or (c.score, sorted(c.patched)) < (out[c.step].score, sorted(out[c.step].patched)):
            out[c.step] = c
    return out


def select(graph: LayerGraph, candidates: list[Candidate], sizes: Sizes, dtype: str, n: int) -> list[Candidate]:
    """The candidates the recipe's `sizes` ask for, by step (as the schedule orders them)."""
    per_step = best_per_step(candidates)
    if sizes.kind in ("all", "patched"):
        ks = range(1, n + 1) if sizes.kind == "all" else [int(v) for v in sizes.values]
        chosen = [per_step[k] for k in ks]
    else:
        chosen = []
        for target in sizes.values:
            fits = [c for c in candidates
                    if schedule.size_of(graph, graph.assemble(c.patched), sizes.kind, dtype) <= target]
            chosen.append(min(fits, key=lambda c: (c.score, -c.step, sorted(c.patched))))
    unique = {c.patched: c for c in chosen}.values()
    return sorted(unique, key=lambda c: (c.step, graph.size(graph.assemble(c.patched)).params))


# ---------------------------------------------------------------------- the patch schedule
def choose(compiled: Compiled, measure: Measure | None = None, compare: Sequence = ORDERS,
         calibration: dict | None = None, note: str | None = None) -> PatchSchedule:
    """The recipe's schedule; with `measure`, KL for each model and a curve per compared order."""
    graph, recipe, dtype = compiled.graph, compiled.recipe, compiled.emit_dtype
    order = recipe.patch.order
    menus: dict[str, list[Candidate]] = {}
    found: list[optimal.Search] = []  # `optimal`'s evidence, once it has run

    def menu_of(o) -> list[Candidate]:
        if label(o) not in menus and o == "optimal":
            found.append(optimal.search(graph, measure, recipe.patch.candidates, recipe.patch.exhaustive))
            menus[o] = searched(found[0])
        elif label(o) not in menus:
            menus[label(o)] = menu(graph, o, measure)
        return menus[label(o)]

    if order in schedule.MEASURED_ORDERS:
        if measure is None:
            raise SurgeryError(f"`order {order}` chooses layers by measuring KL, and cannot here: {note}",
                               hint="it needs the teacher's and the distilled student's weights and calibration text")
        n = schedule.steps_available(graph, order)
        chosen = select(graph, menu_of(order), recipe.patch.sizes, dtype, n)
        steps = [(c.patched, c.step, c.predicted) for c in chosen]
    else:
        steps = [(s.assembly.patched, s.k, None) for s in compiled.steps]

    curves: dict[str, list[tuple]] = {}
    if measure is not None:
        for o in dict.fromkeys([*compare, order], None):
            per_step = best_per_step(menu_of(o))
            curves[label(o)] = [(c.patched, k, c.predicted) for k, c in sorted(per_step.items())]

    everything = [p for p, _, _ in steps] + [p for rows in curves.values() for p, _, _ in rows]
    kl = dict(zip(everything, measure(everything))) if measure is not None else {}
    build = lambda rows: tuple(entry(graph, p, k, dtype, kl.get(p), pred) for p, k, pred in rows)  # noqa: E731
    return PatchSchedule(str(recipe.path), label(order), dtype, build(steps),
                {name: build(rows) for name, rows in curves.items()}, calibration, note, found[0] if found else None)

