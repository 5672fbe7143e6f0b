"""The planners on synthetic objectives: the DAG against brute force, KLPatch's greedy chain."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest

from surgery.arch import registry
from surgery.graph import LayerGraph
from surgery.layout import Block
from surgery.planning import costs, dag, greedy
from surgery.planning.choose import best_per_step, menu


def graph_of(lengths, tied=False) -> LayerGraph:
    """A layer graph with blocks of the given lengths (no weights, no shapes needed)."""
    blocks, start = [], 0
    for i, n in enumerate(lengths):
        blocks.append(Block(i, tuple(range(start, start + n))))
        start += n
    config = {"model_type": "qwen3", "num_hidden_layers": start, "tie_word_embeddings": tied}
    return LayerGraph(registry()["qwen3"], config, tuple(blocks), teacher_shapes={})


def end_state(graph, patched):
    """What a DAG end node records: steps, layers added, first side (tied only), last side."""
    k = sum(1 for b in graph.blocks if b.student in patched and b.patchable)
    added = sum(len(b.teacher) - 1 for b in graph.blocks if b.student in patched)
    first = (0 in patched) if graph.tied else None
    return (k, added, first, graph.n_student - 1 in patched)


def path_cost(table, patched, n):
    total, before = 0.0, None
    for i in range(n):
        total += table[i][(before, i in patched)]
        before = i in patched
    return total


@pytest.mark.parametrize("seed", range(40))
def test_dag_matches_brute_force_on_random_costs(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 2, 3]) for _ in range(rng.randint(1, 8))]
    graph = graph_of(lengths, tied=rng.random() < 0.5)
    n = graph.n_student
    # Any cost per (block, previous choice, choice), negative ones included.
    table = [{(b, p): rng.uniform(-1, 2) for b in ((None,) if i == 0 else (False, True)) for p in (False, True)}
             for i in range(n)]
    best: dict[tuple, float] = {}
    for bits in itertools.product((False, True), repeat=n):
        patched = frozenset(i for i in range(n) if bits[i])
        state = end_state(graph, patched)
        best[state] = min(best.get(state, float("inf")), path_cost(table, patched, n))

    found = dag.choices(graph, lambda i, before, p: table[i][(before, p)])
    assert len(found) == len(best)  # one choice per end state, and every end state reached
    for choice in found:
        state = end_state(graph, choice.patched)
        assert choice.cost == pytest.approx(path_cost(table, choice.patched, n), abs=1e-9)
        assert choice.cost == pytest.approx(best[state], abs=1e-9)


def test_additive_model_is_exact_on_its_probes_and_equals_the_path_cost():
    n = 6
    truth = {}  # a synthetic "true KL" that is not additive
    for bits in itertools.product((False, True), repeat=n):
        student = [i for i in range(n) if not bits[i]]
        truth[frozenset(i for i in range(n) if bits[i])] = sum(0.1 + 0.05 * i for i in student) ** 1.5
    model = costs.AdditiveCosts.from_measured(n, truth)
    for probe in costs.probes(n):
        assert model.total(probe) == pytest.approx(truth[probe])
    assert model.total(frozenset(range(n))) == 0.0
    graph = graph_of([2] * n)
    for choice in dag.choices(graph, model.edge):
        assert choice.cost == pytest.approx(model.total(choice.patched))
    far_apart = frozenset(range(n)) - {0, 3}  # two student layers that are not neighbours
    assert model.total(far_apart) == pytest.approx(truth[frozenset(range(n)) - {0}] + truth[frozenset(range(n)) - {3}])
    assert model.total(far_apart) != pytest.approx(truth[far_apart])  # the approximation it makes


def test_optimal_menu_is_the_best_of_each_step_under_its_model():
    graph = graph_of([2, 2, 1, 2, 2, 1])
    n = graph.n_student
    rng = random.Random(7)
    weights = [rng.uniform(0.1, 1.0) for _ in range(n)]

    def measure(sets):  # additive in the student layers left, so the model is exact
        return [sum(w for i, w in enumerate(weights) if i not in s) for s in sets]

    per_step = best_per_step(menu(graph, "optimal", measure))
    for k, chosen in per_step.items():
        options = [frozenset(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)
                   if len(set(c) & set(graph.patchable)) == k]
        assert chosen.score == pytest.approx(min(measure(options)))


def test_klpatch_follows_the_greedy_choice_not_the_optimum():
    # Three layers; patching s0 alone helps most, but s1 and s2 together help more than s0 and either.
    def kl(s):
        return 10 - 5 * (0 in s) - 3 * (1 in s) - 3 * (2 in s) - 4 * ({1, 2} <= s) + 0.5 * len(s) ** 2

    calls = []

    def measure(sets):
        calls.append(list(sets))
        return [kl(s) for s in sets]

    chain = greedy.klpatch(3, measure)
    assert [sorted(s) for s, _ in chain] == [[], [0], [0, 1], [0, 1, 2]]
    assert [v for _, v in chain] == [kl(s) for s, _ in chain]
    assert kl(frozenset({1, 2})) < kl(frozenset({0, 1}))  # the greedy chain misses the best pair
    assert [len(c) for c in calls] == [1, 3, 2, 1]  # M(M+1)/2 candidates after the start


def test_klpatch_breaks_ties_by_the_lowest_layer():
    chain = greedy.klpatch(3, lambda sets: [1.0 for _ in sets])
    assert [sorted(s) for s, _ in chain] == [[], [0], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize("seed", range(30))
def test_cheapest_sets_are_the_k_cheapest_of_every_size_by_brute_force(seed):
    rng = random.Random(100 + seed)
    lengths = [rng.choice([1, 2, 2, 3]) for _ in range(rng.randint(1, 8))]
    graph = graph_of(lengths, tied=rng.random() < 0.5)
    n, k = graph.n_student, rng.choice([1, 2, 3, 5, 40])
    table = [{(b, p): rng.uniform(-1, 2) for b in ((None,) if i == 0 else (False, True)) for p in (False, True)}
             for i in range(n)]
    by_size: dict[tuple, list] = {}
    for bits in itertools.product((False, True), repeat=n):
        patched = frozenset(i for i in range(n) if bits[i])
        size = graph.size(graph.assemble(patched))
        key = (end_state(graph, patched)[0], graph.assemble(patched).depth, size.tied)
        by_size.setdefault(key, []).append((path_cost(table, patched, n), sorted(patched)))

    found = dag.cheapest_sets(graph, lambda i, before, p: table[i][(before, p)], k)
    assert len(found) == len(by_size)  # one entry per distinct model size
    for size in found:
        first = size.cheapest[0].patched
        key = (size.key[0], graph.assemble(first).depth, graph.size(graph.assemble(first)).tied)
        everything = sorted(by_size[key])
        assert size.count == len(everything)
        assert [sorted(c.patched) for c in size.cheapest] == [p for _, p in everything[:k]]
        assert [c.cost for c in size.cheapest] == pytest.approx([c for c, _ in everything[:k]], abs=1e-9)


def test_cheapest_sets_agree_with_networkx_k_shortest_simple_paths():
    graph = graph_of([2, 3, 2, 1, 2, 2], tied=True)
    rng = random.Random(5)
    table = [{(b, p): rng.uniform(0, 1) for b in ((None,) if i == 0 else (False, True)) for p in (False, True)}
             for i in range(graph.n_student)]
    cost = lambda i, before, p: table[i][(before, p)]  # noqa: E731
    g = dag.build(graph, cost)
    for size in dag.cheapest_sets(graph, cost, 4):
        steps, added, tied = size.key
        sink = ("size", size.key)
        for end in [v for v in g if v != dag.SOURCE and v[0] == graph.n_student and v[1:3] == (steps, added)
                    and (graph.tied and v[3] == v[4]) == tied]:
            g.add_edge(end, sink, weight=0.0)
        paths = itertools.islice(nx.shortest_simple_paths(g, dag.SOURCE, sink, weight="weight"), 4)
        yen = [frozenset(i for i, (u, v) in enumerate(zip(p, p[1:-1])) if g.edges[u, v]["patched"]) for p in paths]
        assert [c.patched for c in size.cheapest] == yen
