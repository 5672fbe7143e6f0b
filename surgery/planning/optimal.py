"""`order optimal`: the additive cost model proposes, measured KL decides.

The additive model in `costs` is exact for the DAG's shortest path but only approximates KL,
and its best set of a size is not always the measured best (docs/planning.md). So for every
model size (an end state of the DAG: patchable layers patched, depth, tied head) the model's
`candidates` cheapest sets are measured on the calibration rows, and the lowest measured KL is
the size's pick. A size with at most `exhaustive` sets has every set measured, so there the
pick is the true best. All candidates go to the measurer in one call, so models that share a
prefix share its forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from surgery.graph import LayerGraph
from surgery.planning import costs, dag
from surgery.recipe.ast import Patch
from surgery.schedule import step_of

CANDIDATES = Patch.candidates
EXHAUSTIVE = Patch.exhaustive

Measure = Callable[[Sequence[frozenset[int]]], list[float]]


@dataclass(frozen=True)
class Measured:
    patched: frozenset[int]
    predicted: float  # the additive model's cost
    kl: float  # measured KL(teacher || model) per token


@dataclass(frozen=True)
class SizeSearch:
    """What was measured for one model size."""

    step: int
    depth: int
    params: int
    tied: bool
    sets: int  # how many sets have this size
    exhaustive: bool  # every one of them was measured
    candidates: tuple[Measured, ...]  # in the additive model's order: rank 1 first

    @property
    def rank(self) -> int:
        """The pick's rank under the additive model, from 1."""
        return min(range(len(self.candidates)), key=lambda r: (self.candidates[r].kl, r)) + 1

    @property
    def pick(self) -> Measured:
        return self.candidates[self.rank - 1]


@dataclass(frozen=True)
class Search:
    candidates: int  # the settings it ran with
    exhaustive: int
    probes: int  # models measured to build the additive model
    models: int  # distinct models measured in all: probes and candidates
    sizes: tuple[SizeSearch, ...]

    def to_json(self) -> dict:
        def measured(m: Measured) -> dict:
            return {"patched": sorted(m.patched), "predicted": m.predicted, "kl": m.kl}

        return {"candidates": self.candidates, "exhaustive": self.exhaustive, "probes": self.probes,
                "models_measured": self.models,
                "sizes": [{"step": s.step, "depth": s.depth, "params": s.params, "tied": s.tied, "sets": s.sets,
                           "all_measured": s.exhaustive, "pick_rank": s.rank,
                           "candidates": [measured(m) for m in s.candidates]} for s in self.sizes]}


def search(graph: LayerGraph, measure: Measure, candidates: int = CANDIDATES,
           exhaustive: int = EXHAUSTIVE) -> Search:
    """Measure the additive model's probes, then each size's candidates; see the module doc."""
    n = graph.n_student
    probes = costs.probes(n)
    model = costs.AdditiveCosts.from_measured(n, dict(zip(probes, measure(probes))))
    found = dag.cheapest_sets(graph, model.edge, max(candidates, exhaustive))
    chosen = [s.cheapest if s.count <= exhaustive else s.cheapest[:candidates] for s in found]
    flat = [c.patched for group in chosen for c in group]
    kl = dict(zip(flat, measure(flat)))
    sizes = []
    for size, group in zip(found, chosen):
        assembly = graph.assemble(group[0].patched)  # every set of the group has this size
        measured = tuple(Measured(c.patched, c.cost, kl[c.patched]) for c in group)
        sizes.append(SizeSearch(step_of(graph, assembly.patched), assembly.depth, graph.size(assembly).params,
                                size.key[2], size.count, size.count <= exhaustive, measured))
    return Search(candidates, exhaustive, len(probes), len(set(probes) | set(flat)), tuple(sizes))

