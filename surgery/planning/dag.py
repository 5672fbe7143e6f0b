"""Exact searches over a layered DAG of partial models: the cheapest path, and the k cheapest
sets, of every model size.

A path picks, block by block, the student layer or the teacher block. A node is the state
after the first i blocks: (i, patchable layers patched so far, layers added so far, the side of
the first block when the head is tied, the side of the last block). The last side is there
because an edge's cost may depend on the block before it (see `costs`); the first side and
the layer counts are there so that every end state has one size. The end states of the DAG are
then every distinct model size, each reached by its cheapest path.

A one-layer block is a free choice: patching it changes weights, not size.

Edge costs may be negative. Every full path crosses each stage once, so shifting all edges of
a stage by the same constant shifts every full path's cost equally: that makes the weights
non-negative for Dijkstra without changing which path is shortest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from surgery.graph import LayerGraph

# cost(block i, was block i-1 patched (None for i = 0), is block i patched)
EdgeCost = Callable[[int, "bool | None", bool], float]

SOURCE = "start"


@dataclass(frozen=True)
class Choice:
    """The cheapest model of one end state."""

    patched: frozenset[int]
    cost: float


def build(graph: LayerGraph, cost: EdgeCost) -> nx.DiGraph:
    """The layered DAG; edges carry `weight` (shifted, >= 0), `cost` and `patched`."""
    dag = nx.DiGraph()
    frontier = {SOURCE}
    for block in graph.blocks:
        i = block.student
        edges = []
        for u in frontier:
            for patched in (False, True):
                edges.append((u, _next(graph, u, i, patched), patched, cost(i, _last(u), patched)))
        shift = min(c for *_, c in edges)
        for u, v, patched, c in edges:
            dag.add_edge(u, v, weight=c - shift, cost=c, patched=patched)
        frontier = {v for _, v, _, _ in edges}
    return dag


def _last(state) -> bool | None:
    return None if state == SOURCE else state[4]


def _next(graph: LayerGraph, state, i: int, patched: bool) -> tuple:
    _, k, added, first, _ = (0, 0, 0, None, None) if state == SOURCE else state
    block = graph.blocks[i]
    if patched and block.patchable:
        k, added = k + 1, added + len(block.teacher) - 1
    if i == 0 and graph.tied:
        first = patched
    return (i + 1, k, added, first, patched)


def choices(graph: LayerGraph, cost: EdgeCost) -> list[Choice]:
    """The cheapest path to every end state of the DAG, with its exact (unshifted) cost."""
    dag = build(graph, cost)
    _, paths = nx.single_source_dijkstra(dag, SOURCE, weight="weight")
    out = []
    for end, path in paths.items():
        if end == SOURCE or end[0] != graph.n_student:
            continue
        edges = [dag.edges[u, v] for u, v in zip(path, path[1:])]
        patched = frozenset(i for i, e in enumerate(edges) if e["patched"])
        out.append(Choice(patched, sum(e["cost"] for e in edges)))
    return sorted(out, key=lambda c: (len(c.patched), sorted(c.patched)))


@dataclass(frozen=True)
class SizeSets:
    """The cheapest sets of one model size, in increasing cost, and how many sets that size has."""

    key: tuple[int, int, bool]  # (patchable layers patched, layers added, tied head)
    count: int
    cheapest: tuple[Choice, ...]


def cheapest_sets(graph: LayerGraph, cost: EdgeCost, k: int) -> list[SizeSets]:
    """The k cheapest sets of every model size, exactly, with their unshifted costs.

    A k-best search by dynamic programming over the DAG's layers: every node keeps the k
    cheapest paths into it. That is exact because a node's future does not depend on how it was
    reached, so a path among the k cheapest into an end node has a prefix among the k cheapest
    into each node it crosses. An end state with at most k paths therefore gets all of them.
    Ties in cost go to the lexicographically smaller set, so the result is deterministic.
    """
    dag = build(graph, cost)
    best: dict = {SOURCE: [(0.0, ())]}
    count: dict = {SOURCE: 1}
    for u in nx.topological_sort(dag):
        i = 0 if u == SOURCE else u[0]
        for v, data in dag.succ[u].items():
            extended = [(c + data["cost"], p + (i,) if data["patched"] else p) for c, p in best[u]]
            best[v] = sorted(best.get(v, []) + extended)[:k]
            count[v] = count.get(v, 0) + count[u]
    sizes: dict[tuple, tuple[int, list]] = {}
    for end in dag:
        if end != SOURCE and end[0] == graph.n_student:
            _, steps, added, first, last = end
            key = (steps, added, graph.tied and first == last)
            n, paths = sizes.get(key, (0, []))
            sizes[key] = (n + count[end], paths + best[end])
    return [SizeSets(key, n, tuple(Choice(frozenset(p), c) for c, p in sorted(paths)[:k]))
            for key, (n, paths) in sorted(sizes.items())]
