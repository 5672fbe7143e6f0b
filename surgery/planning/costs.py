"""The additive cost model `optimal` ranks patched sets with, and the measurements it is built from.

Write U for the student layers a model keeps (the blocks not patched) and K(U) for its KL to
the teacher on the calibration data, so K(empty) = 0 (the teacher itself). The model is the
expansion of K around the teacher, truncated after the interactions of neighbouring blocks:

    cost(U) = sum over i in U of K({i})
            + sum over i with i-1 and i both in U of [K({i-1, i}) - K({i-1}) - K({i})]

It needs 2M - 1 measured models (every single student layer in the teacher, and every adjacent
pair), and it is exact for the teacher, for every model with one student layer and for every
model whose student layers are one adjacent pair. It is additive along the stack: each term
depends on one block and the block before it, which is the edge cost of the DAG in `dag`. It
approximates true KL where student layers are far apart (it adds their KLs, dropping the cross
term of their errors) and along runs of three or more student layers.
"""

from __future__ import annotations

from dataclasses import dataclass


def probes(n_student: int) -> list[frozenset[int]]:
    """The patched sets to measure: the teacher with student layer i, or with i-1 and i."""
    every = frozenset(range(n_student))
    out = [every - {i} for i in range(n_student)]
    out += [every - {i - 1, i} for i in range(1, n_student)]
    return out


@dataclass(frozen=True)
class AdditiveCosts:
    single: tuple[float, ...]  # K({i})
    pair: tuple[float, ...]  # pair[i] = K({i-1, i}) - K({i-1}) - K({i}); pair[0] = 0

    @classmethod
    def from_measured(cls, n_student: int, kl: dict[frozenset[int], float]) -> "AdditiveCosts":
        every = frozenset(range(n_student))
        single = tuple(kl[every - {i}] for i in range(n_student))
        pair = (0.0,) + tuple(kl[every - {i - 1, i}] - single[i - 1] - single[i] for i in range(1, n_student))
        return cls(single, pair)

    def edge(self, i: int, previous_patched: bool | None, patched: bool) -> float:
        """The cost of block i's choice, given the choice for block i-1 (None before block 0)."""
        if patched:
            return 0.0
        return self.single[i] + (self.pair[i] if previous_patched is False else 0.0)

    def total(self, patched: frozenset[int]) -> float:
        previous = None
        out = 0.0
        for i in range(len(self.single)):
            out += self.edge(i, previous, i in patched)
            previous = i in patched
        return out
