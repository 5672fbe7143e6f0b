"""KLPatch: patch one more layer at a time, each time the one whose model is closest to the teacher.

Every remaining student layer is a candidate move; a one-layer block is one too, since patching
it costs no size. The chain goes from the student to the teacher in M steps, each measuring the
remaining candidates in one batched call: M(M+1)/2 models in all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Measure = Callable[[Sequence[frozenset[int]]], list[float]]


def klpatch(n_student: int, measure: Measure) -> list[tuple[frozenset[int], float]]:
    """The greedy chain: (patched set, its KL) from the student (empty set) to the teacher."""
    current: frozenset[int] = frozenset()
    chain = [(current, measure([current])[0])]
    remaining = list(range(n_student))
    while remaining:
        candidates = [current | {i} for i in remaining]
        kls = measure(candidates)
        best = min(range(len(remaining)), key=lambda j: (kls[j], remaining[j]))  # ties: lowest layer
        current = candidates[best]
        chain.append((current, kls[best]))
        remaining.pop(best)
    return chain
