"""The layer graph: the single source of truth for mapping, alignment, init and patching.

Nodes are named `T.embed`, `T.L3`, `T.final`, `S.embed`, `S.L1`, `S.final` (`final` is the
final norm with the head). Edges are keyed by kind, so as networkx sees it (`LayerGraph.graph`)
the graph is a `MultiDiGraph`:

- `flow`: forward order. Within each model, plus the crossings at block boundaries, so that
  every path from an `embed` node to a `final` node is a model the engine can build.
- `replaces`: student layer -> each teacher layer of its block.
- `aligns`: a student output -> the teacher output it is pulled towards by the cosine loss
  (`hidden` holds the two hidden-state indices, 0 = the embedding output).
- `init`: teacher tensor -> the student tensor copied from it.

Each path from embed to final picks, for every block, the student layer or the teacher block:
`Assembly` names one such path by its set of patched student layers. The engine reads the
graph, not the blocks: a model to build is a `path`, its tensor copy list follows the path,
the loss's aligned pairs are the `aligns` edges and student init follows the `init` edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from surgery.arch import Architecture
from surgery.dtypes import DTYPES
from surgery.errors import SurgeryError
from surgery.layout import Block
from surgery.shapes import numel, tensor_shapes

if TYPE_CHECKING:
    import networkx as nx

TEACHER, STUDENT = "teacher", "student"
_SIDE_PREFIX = {TEACHER: "T", STUDENT: "S"}


def node(side: str, what: str | int) -> str:
    """Node name: node('teacher', 3) -> 'T.L3'; node('student', 'embed') -> 'S.embed'."""
    return f"{_SIDE_PREFIX[side]}.{'L' + str(what) if isinstance(what, int) else what}"


@dataclass(frozen=True)
class LayerRef:
    """A layer of the teacher or the student."""

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
        return self.params * DTYPES[dtype].bytes




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

    # ------------------------------------------------------------------ structure
    @cached_property
    def patchable(self) -> tuple[int, ...]:
        """Student layers whose block has more than one teacher layer: the size steps."""
        return tuple(b.student for b in self.blocks if b.patchable)

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(self.init_of(i) for i in range(self.n_student))

    @property
    def pruned(self) -> tuple[int, ...]:
        kept = set(self.kept)
        return tuple(i for i in range(self.n_teacher) if i not in kept)

    @cached_property
    def _parts(self) -> tuple[dict[str, dict], tuple[tuple[str, str, str, dict], ...]]:
        """The nodes (name -> attributes) and edges (from, to, kind, attributes), from the blocks:
        the one place the blocks are read; every query below reads these. Plain data, so that
        `surgery check` need not import networkx (which takes longer than all of check)."""
        nodes: dict[str, dict] = {}
        edges: list[tuple[str, str, str, dict]] = []
        for side, depth in ((TEACHER, self.n_teacher), (STUDENT, self.n_student)):
            nodes[node(side, "embed")] = {"side": side, "kind": "embed"}
            for i in range(depth):
                nodes[node(side, i)] = {"side": side, "kind": "layer", "index": i}
            nodes[node(side, "final")] = {"side": side, "kind": "final"}
            chain = [node(side, "embed")] + [node(side, i) for i in range(depth)] + [node(side, "final")]
            edges += [(u, v, "flow", {}) for u, v in zip(chain, chain[1:])]
        for b in self.blocks:
            nodes[node(STUDENT, b.student)]["block"] = b.teacher
            for t in b.teacher:
                nodes[node(TEACHER, t)]["block_of"] = b.student
                edges.append((node(STUDENT, b.student), node(TEACHER, t), "replaces", {}))
            edges.append((node(TEACHER, b.init), node(STUDENT, b.student), "init", {}))
        edges.append((node(TEACHER, "embed"), node(STUDENT, "embed"), "init", {}))
        edges.append((node(TEACHER, "final"), node(STUDENT, "final"), "init", {}))
        # Crossings between the two stacks at block boundaries.
        for prev, nxt in zip(self.blocks, self.blocks[1:]):
            edges.append((node(STUDENT, prev.student), node(TEACHER, nxt.init), "flow", {}))
            edges.append((node(TEACHER, prev.last), node(STUDENT, nxt.student), "flow", {}))
        # Alignment: student hidden state 0 (the embedding output) with the teacher's; the output
        # of student layer i with the output of the last teacher layer of its block; final with final.
        edges.append((node(STUDENT, "embed"), node(TEACHER, "embed"), "aligns", {"hidden": (0, 0)}))
        edges += [(node(STUDENT, b.student), node(TEACHER, b.last), "aligns", {"hidden": (b.student + 1, b.last + 1)})
                  for b in self.blocks[:-1]]
        edges.append((node(STUDENT, "final"), node(TEACHER, "final"), "aligns",
                      {"hidden": (self.n_student, self.n_teacher)}))
        return nodes, tuple(edges)

    @property
    def nodes(self) -> dict[str, dict]:
        return self._parts[0]

    def edges(self, kind: str):
        """(from, to, attributes) of every edge of one kind."""
        return ((u, v, data) for u, v, k, data in self._parts[1] if k == kind)

    @cached_property
    def graph(self) -> nx.MultiDiGraph:
        """The same nodes and edges as a networkx MultiDiGraph (edges keyed by kind), for
        drawings, dumps and graph algorithms."""
        import networkx as nx

        g = nx.MultiDiGraph(name="layer graph")
        g.add_nodes_from(self.nodes.items())
        g.add_edges_from((u, v, k, data) for u, v, k, data in self._parts[1])
        return g

    @cached_property
    def aligned_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student hidden index, teacher hidden index) pairs for the cosine loss: the `aligns` edges."""
        return tuple(sorted(data["hidden"] for _, _, data in self.edges("aligns")))

    @cached_property
    def _init(self) -> dict[int, int]:
        """Student layer -> the teacher layer it is initialised from: the `init` edges between layers."""
        nodes = self.nodes
        return {nodes[v]["index"]: nodes[u]["index"] for u, v, _ in self.edges("init") if "index" in nodes[v]}

    def init_of(self, student_layer: int) -> int:
        return self._init[student_layer]

    @cached_property
    def _flow(self) -> dict[str, list[str]]:
        """Each node's successors along `flow` edges: the walk below runs once per model."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for u, v, _ in self.edges("flow"):
            out[u].append(v)
        return out

    def flow_graph(self) -> nx.DiGraph:
        """The forward-order edges alone: its embed->final paths are the buildable models."""
        import networkx as nx

        return nx.DiGraph([(u, v) for u, v, _ in self.edges("flow")])

    # ------------------------------------------------------------------ models on the graph
    def assemble(self, patched) -> Assembly:
        """The model with the student layers in `patched` replaced by their teacher blocks: the
        path from an embed node to a final node that enters teacher block i exactly for the i
        in `patched`."""
        patched = frozenset(patched)
        bad = sorted(i for i in patched if not 0 <= i < self.n_student)
        if bad:
            raise SurgeryError(f"no student layer s{bad[0]}",
                               hint=f"the student has {self.n_student} layers (s0..s{self.n_student - 1})")
        path = self.path(patched)
        layers = tuple(self._refs[n] for n in path[1:-1])
        return Assembly(patched, layers, self.nodes[path[0]]["side"], self.nodes[path[-1]]["side"])

    @cached_property
    def _refs(self) -> dict[str, LayerRef]:
        """One LayerRef per layer node, shared by every assembly: a schedule holds a model per
        step, each as deep as the teacher, so building them must be cheap."""
        return {n: LayerRef(d["side"], d["index"]) for n, d in self.nodes.items() if d["kind"] == "layer"}

    def path(self, patched) -> list[str]:
        """The flow-graph path of the model patching `patched`: at every fork take the node whose
        side is the one its block is on in this model."""
        nodes, last = self.nodes, self.n_student - 1

        def wanted(n: str) -> bool:
            data = nodes[n]
            block = data.get("block_of", data.get("index")) if data["kind"] == "layer" else \
                (0 if data["kind"] == "embed" else last)
            return data["side"] == (TEACHER if block in patched else STUDENT)

        here = node(TEACHER if 0 in patched else STUDENT, "embed")
        path = [here]
        while nodes[here]["kind"] != "final":
            here = next(v for v in self._flow[here] if wanted(v))
            path.append(here)
        return path

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
        layers = sum(per_layer[r.index if r.side == TEACHER else self.init_of(r.index)] for r in assembly.layers)
        untied = layers + embeddings + final + head
        tied = self.tied and assembly.embeddings == assembly.final
        return Size(params=untied - head if tied else untied, params_untied=untied, tied=tied)
