"""The layer graph: the single source of truth for mapping, alignment, init and patching.

Nodes are named `T.embed`, `T.L3`, `T.final`, `S.embed`, `S.L1`, `S.final` (`final` is the
final norm with the head). Edges are keyed by kind, so the graph is a `networkx.MultiDiGraph`
(a subclass of `DiGraph`):

- `flow`: forward order. Within each model, plus the crossings at block boundaries, so that
  every path from an `embed` node to a `final` node is a model the engine can build.
- `replaces`: student layer -> each teacher layer of its block.
- `aligns`: a student output -> the teacher output it is pulled towards by the cosine loss
  (`hidden` holds the two hidden-state indices, 0 = the embedding output).
- `init`: teacher tensor -> the student tensor copied from it.

Each path from embed to final picks, for every block, the student layer or the teacher block:
`Assembly` names one such path by its set of patched student layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from surgery.arch import Architecture
from surgery.errors import SurgeryError
from surgery.layout import Block
from surgery.shapes import numel

TEACHER, STUDENT = "teacher", "student"
_SIDE_PREFIX = {TEACHER: "T", STUDENT: "S"}


def node(side: str, what: str | int) -> str:
    """Node name: node('teacher', 3) -> 'T.L3'; node('student', 'embed') -> 'S.embed'."""
    return f"{_SIDE_PREFIX[side]}.{'L' + str(what) if isinstance(what, int) else what}"


@dataclass(frozen=True)
class LayerRef:
    side: str  # TEACHER or STUDENT
    index: int  # layer index in that model


@dataclass(frozen=True)
class Assembly:
    """One model on the graph: the student with the layers in `patched` replaced by their blocks."""

    patched: frozenset[int]
    layers: tuple[LayerRef, ...]
    embeddings: str  # the side supplying the embeddings (the first block's)
    final: str  # the side supplying the final norm and head (the last block's)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def name(self) -> str:
        if not self.patched:
            return "student"
        return "patched " + ",".join(f"s{i}" for i in sorted(self.patched))


@dataclass(frozen=True)
class Size:
    """Parameter and byte counts of one assembly."""

    params: int  # tied embeddings and head counted once when they stay tied
    params_untied: int  # the embeddings and head counted separately
    tied: bool  # whether the written model ties its head to its embeddings

    def bytes(self, dtype: str) -> int:
        return self.params * DTYPE_BYTES[dtype]


DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


class LayerGraph:
    """The compiled layer graph of a recipe, with the queries the engine needs."""

    def __init__(self, arch: Architecture, teacher_config: dict, blocks: tuple[Block, ...],
                 teacher_shapes: dict[str, tuple[int, ...]] | None = None):
        self.arch = arch
        self.teacher_config = teacher_config
        self.blocks = blocks
        self.n_teacher = arch.depth_of(teacher_config)
        self.n_student = len(blocks)
        self.tied = arch.is_tied(teacher_config)
        self._shapes = teacher_shapes
        self.graph = self._build()

    # ------------------------------------------------------------------ structure
    @cached_property
    def patchable(self) -> tuple[int, ...]:
        """Student layers whose block has more than one teacher layer: the size steps."""
        return tuple(b.student for b in self.blocks if b.patchable)

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(b.init for b in self.blocks)

    @property
    def pruned(self) -> tuple[int, ...]:
        kept = set(self.kept)
        return tuple(i for i in range(self.n_teacher) if i not in kept)

    @property
    def aligned_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student hidden index, teacher hidden index) pairs for the cosine loss.

        0 is the embedding output; student i is the output of student layer i-1, paired with
        the output of the last teacher layer of its block; the last pair is final <-> final.
        """
        pairs = [(0, 0)]
        pairs += [(b.student + 1, b.last + 1) for b in self.blocks[:-1]]
        pairs.append((self.n_student, self.n_teacher))
        return tuple(pairs)

    def _build(self) -> nx.MultiDiGraph:
        g = nx.MultiDiGraph(name="layer graph")
        for side, depth in ((TEACHER, self.n_teacher), (STUDENT, self.n_student)):
            g.add_node(node(side, "embed"), side=side, kind="embed")
            for i in range(depth):
                g.add_node(node(side, i), side=side, kind="layer", index=i)
            g.add_node(node(side, "final"), side=side, kind="final")
            chain = [node(side, "embed")] + [node(side, i) for i in range(depth)] + [node(side, "final")]
            for u, v in zip(chain, chain[1:]):
                g.add_edge(u, v, key="flow")
        for b in self.blocks:
            g.nodes[node(STUDENT, b.student)]["block"] = b.teacher
            for t in b.teacher:
                g.nodes[node(TEACHER, t)]["block_of"] = b.student
                g.add_edge(node(STUDENT, b.student), node(TEACHER, t), key="replaces")
            g.add_edge(node(TEACHER, b.init), node(STUDENT, b.student), key="init")
        g.add_edge(node(TEACHER, "embed"), node(STUDENT, "embed"), key="init")
        g.add_edge(node(TEACHER, "final"), node(STUDENT, "final"), key="init")
        # Crossings between the two stacks at block boundaries.
        for prev, nxt in zip(self.blocks, self.blocks[1:]):
            g.add_edge(node(STUDENT, prev.student), node(TEACHER, nxt.init), key="flow")
            g.add_edge(node(TEACHER, prev.last), node(STUDENT, nxt.student), key="flow")
        # Alignment pairs, as edges between the nodes whose outputs are compared.
        s_out = [node(STUDENT, "embed")] + [node(STUDENT, i) for i in range(self.n_student - 1)]
        t_out = [node(TEACHER, "embed")] + [node(TEACHER, b.last) for b in self.blocks[:-1]]
        for (s_idx, t_idx), s, t in zip(self.aligned_pairs, s_out, t_out):
            g.add_edge(s, t, key="aligns", hidden=(s_idx, t_idx))
        g.add_edge(node(STUDENT, "final"), node(TEACHER, "final"), key="aligns",
                   hidden=(self.n_student, self.n_teacher))
        return g

    def flow_graph(self) -> nx.DiGraph:
        """The forward-order edges alone: its embed->final paths are the buildable models."""
        return nx.DiGraph([(u, v) for u, v, k in self.graph.edges(keys=True) if k == "flow"])

    # ------------------------------------------------------------------ models on the graph
    def assemble(self, patched) -> Assembly:
        """The model with the student layers in `patched` replaced by their teacher blocks."""
        patched = frozenset(patched)
        bad = sorted(i for i in patched if not 0 <= i < self.n_student)
        if bad:
            raise SurgeryError(f"no student layer s{bad[0]}",
                               hint=f"the student has {self.n_student} layers (s0..s{self.n_student - 1})")
        teacher, student = self._refs
        layers: list[LayerRef] = []
        for b in self.blocks:
            if b.student in patched:
                layers.extend(teacher[b.teacher[0]:b.teacher[-1] + 1])  # a block is a contiguous run
            else:
                layers.append(student[b.student])
        side = lambda b: TEACHER if b.student in patched else STUDENT  # noqa: E731
        return Assembly(patched, tuple(layers), side(self.blocks[0]), side(self.blocks[-1]))

    @cached_property
    def _refs(self) -> tuple[tuple[LayerRef, ...], tuple[LayerRef, ...]]:
        """One LayerRef per teacher and per student layer, shared by every assembly: a schedule
        holds a model per step, each as deep as the teacher, so building them must be cheap."""
        return (tuple(LayerRef(TEACHER, t) for t in range(self.n_teacher)),
                tuple(LayerRef(STUDENT, s) for s in range(self.n_student)))

    def path(self, assembly: Assembly) -> list[str]:
        """The assembly as a path of node names through the flow graph."""
        nodes = [node(assembly.embeddings, "embed")]
        nodes += [node(r.side, r.index) for r in assembly.layers]
        nodes.append(node(assembly.final, "final"))
        return nodes

    def sequential(self, order: str, k: int) -> Assembly:
        """The authors' sequential patching with k patchable blocks patched.

        `last_to_first`: the authors cut the student right after the (k+1)-th patchable block
        from the end and take every teacher layer after the cut, so each one-layer block past
        that block becomes teacher layers too; with k equal to the number of steps the whole
        model is the teacher's. `first_to_last` mirrors it: everything before the (k+1)-th
        patchable block from the start.
        """
        steps = self.patchable
        if not 0 <= k <= len(steps):
            raise SurgeryError(f"cannot patch {k} layers", hint=f"this student has {len(steps)} patch steps (0..{len(steps)})")
        if k == 0:
            return self.assemble(())
        if order == "last_to_first":
            start = steps[-k - 1] + 1 if k < len(steps) else 0
            return self.assemble(range(start, self.n_student))
        if order == "first_to_last":
            stop = steps[k] if k < len(steps) else self.n_student
            return self.assemble(range(0, stop))
        raise ValueError(order)

    @property
    def student(self) -> Assembly:
        return self.assemble(())

    @property
    def teacher(self) -> Assembly:
        return self.assemble(range(self.n_student))

    # ------------------------------------------------------------------ sizes
    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            from surgery.shapes import tensor_shapes

            self._shapes = tensor_shapes(self.teacher_config)
        return self._shapes

    @cached_property
    def part_params(self) -> tuple[list[int], int, int, int]:
        """(params of each teacher layer, embeddings, final without head, head)."""
        per_layer = [0] * self.n_teacher
        embeddings = final = head = 0
        heads = {self.arch.head_weight, *self.arch.head_aliases}
        for name, shape in self.shapes.items():
            part = self.arch.part_of(name)
            n = numel(shape)
            if part == "layer":
                per_layer[self.arch.layer_of(name)] += n
            elif part == "embeddings":
                embeddings += n
            elif name in heads:
                head += n
            else:
                final += n
        return per_layer, embeddings, final, head

    def size(self, assembly: Assembly) -> Size:
        per_layer, embeddings, final, head = self.part_params
        layers = sum(per_layer[r.index if r.side == TEACHER else self.blocks[r.index].init] for r in assembly.layers)
        untied = layers + embeddings + final + head
        tied = self.tied and assembly.embeddings == assembly.final
        return Size(params=untied - head if tied else untied, params_untied=untied, tied=tied)
