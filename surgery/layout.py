"""Teacher layers -> student blocks: the one place where `keep` and `map` get their meaning.

Student layer i is initialised from the first teacher layer of block i and stands in for the
whole block. Blocks cover the teacher's layers in order, with no gaps and no overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgery.errors import Pos, SurgeryError
from surgery.recipe.ast import KeepList, KeepRule, LayerMap, LayerSpan, LayerSpec


@dataclass(frozen=True)
class Block:
    """A student layer and the run of teacher layers it stands for."""

    student: int  # the student layer standing for this block
    teacher: tuple[int, ...]  # the teacher layers of the block, in order

    @property
    def init(self) -> int:
        """The teacher layer the student layer is copied from."""
        return self.teacher[0]

    @property
    def last(self) -> int:
        """The teacher layer whose output the student layer's output is aligned with."""
        return self.teacher[-1]

    @property
    def patchable(self) -> bool:
        """A one-layer block is not a size step: patching it changes weights, not depth."""
        return len(self.teacher) > 1


def kept_by_rule(first: int, every: int, last: int, n_teacher: int) -> tuple[int, ...]:
    """The paper's (first, every, last) rule, exactly as the authors' `get_layer_mappings` applies it.

    Marks layers first+every-1, first+2*every-1, ... up to and including n_teacher-last, and
    cuts the every-1 layers just before each mark. Everything else is kept, so when the marks
    stop short of n_teacher-last the tail keeps more than `last` one-layer blocks
    (12 layers, first 1 every 3 last 1: 0, 3, 6, 9, 10, 11).
    """
    marks = range(first + every - 1, n_teacher - last + 1, every)
    cut = {mark - i for mark in marks for i in range(1, every)}
    return tuple(layer for layer in range(n_teacher) if layer not in cut)


def authors_aligned_pairs(first: int, every: int, last: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """The (student, teacher) hidden-state pairs the authors' `get_layer_mappings` aligns for a rule.

    Equal to the layer graph's pairs when the marks reach n_teacher-last. When they stop short,
    the authors' tail loop still starts at n_teacher-last+1, so it leaves pairs out and shifts
    the ones it keeps (docs/language.md lists both cases). Used to show the difference in audits.
    """
    marks = range(first + every - 1, n_teacher - last + 1, every)
    pairs = [(i, i) for i in range(first)] + [(first + j, mark) for j, mark in enumerate(marks)]
    student = first + len(marks) - 1 if len(marks) else 0
    for teacher in range(n_teacher - last + 1, n_teacher):
        student += 1
        pairs.append((student, teacher))
    pairs.append((len(kept_by_rule(first, every, last, n_teacher)), n_teacher))  # final <-> final
    return tuple(pairs)


def _layers(first: int, last: int) -> str:
    """'layer 2' or 'layers 2..4', for messages."""
    return f"layer {first}" if first == last else f"layers {first}..{last}"


def _range_hint(n: int) -> str:
    return f"the teacher has {n} layers ({0}..{n - 1})"


def blocks(spec: LayerSpec, n_teacher: int) -> tuple[Block, ...]:
    """The student's blocks for a `keep` list, `keep` rule or `map`. Errors carry positions."""
    if isinstance(spec, KeepRule):
        if spec.first < 1:
            raise SurgeryError("`first` must be at least 1: the student starts with teacher layer 0",
                               pos=spec.pos)
        kept = kept_by_rule(spec.first, spec.every, spec.last, n_teacher)
        result = _blocks_from_kept(kept, [spec.pos] * len(kept), n_teacher, spec.pos)
    elif isinstance(spec, KeepList):
        kept, positions = [], []
        for span in spec.spans:
            _check_span(span, n_teacher)
            for layer in span.layers():
                kept.append(layer)
                positions.append(span.pos)
        result = _blocks_from_kept(tuple(kept), positions, n_teacher, spec.pos)
    elif isinstance(spec, LayerMap):
        result = _blocks_from_map(spec, n_teacher)
    else:  # pragma: no cover - the parser builds only the three kinds
        raise TypeError(spec)
    _check_depth(result, n_teacher, spec.pos)
    return result


def _check_span(span: LayerSpan, n_teacher: int) -> None:
    """The first layer of `span` past the teacher's, found without listing the span (`0..10**12`)."""
    if span.stop < n_teacher:
        return
    first_out = span.start if span.start >= n_teacher else \
        span.start + -(-(n_teacher - span.start) // span.step) * span.step
    if first_out <= span.stop:
        raise SurgeryError(f"layer {first_out} is out of range", pos=span.pos, hint=_range_hint(n_teacher))


def _blocks_from_kept(kept: tuple[int, ...], positions: list, n_teacher: int, pos: Pos | None) -> tuple[Block, ...]:
    if not kept:
        raise SurgeryError("the student has no layers", pos=pos, hint="keep at least one teacher layer")
    for i, (layer, where) in enumerate(zip(kept, positions)):
        if layer >= n_teacher:
            raise SurgeryError(f"layer {layer} is out of range", pos=where, hint=_range_hint(n_teacher))
        if i and layer == kept[i - 1]:
            raise SurgeryError(f"layer {layer} is kept twice", pos=where, hint="each teacher layer starts one block")
        if i and layer < kept[i - 1]:
            raise SurgeryError(f"kept layers must be in order: {layer} comes after {kept[i - 1]}", pos=where,
                               hint="list teacher layers from first to last")
    if kept[0] != 0:
        raise SurgeryError(f"the first kept layer is {kept[0]}, so no block holds teacher {_layers(0, kept[0] - 1)}",
                           pos=positions[0], hint="keep layer 0: every block starts at a kept layer")
    bounds = list(kept) + [n_teacher]
    return tuple(Block(i, tuple(range(bounds[i], bounds[i + 1]))) for i in range(len(kept)))


def _blocks_from_map(spec: LayerMap, n_teacher: int) -> tuple[Block, ...]:
    if not spec.entries:
        raise SurgeryError("the student has no layers", pos=spec.pos, hint="add entries like `0 <- 0..1`")
    out: list[Block] = []
    expected_teacher = 0
    for i, entry in enumerate(spec.entries):
        if entry.student != i:
            raise SurgeryError(f"student layer {entry.student} is listed where layer {i} belongs", pos=entry.pos,
                               hint="list student layers 0, 1, 2, ... in order")
        if entry.block.step != 1:
            raise SurgeryError("a block is a contiguous range; `step` does not apply in `map`", pos=entry.block.pos)
        if entry.block.stop >= n_teacher:
            raise SurgeryError(f"layer {entry.block.stop} is out of range", pos=entry.block.pos,
                               hint=_range_hint(n_teacher))
        layers = entry.block.layers()
        if layers[0] < expected_teacher:
            raise SurgeryError(f"block {entry.block.start}..{entry.block.stop} overlaps the block before it",
                               pos=entry.block.pos, hint=f"this block should start at layer {expected_teacher}")
        if layers[0] > expected_teacher:
            raise SurgeryError(f"no block holds teacher {_layers(expected_teacher, layers[0] - 1)}",
                               pos=entry.block.pos, hint=f"this block should start at layer {expected_teacher}")
        out.append(Block(i, layers))
        expected_teacher = layers[-1] + 1
    if expected_teacher != n_teacher:
        raise SurgeryError(f"no block holds teacher {_layers(expected_teacher, n_teacher - 1)}",
                           pos=spec.entries[-1].pos, hint=f"the last block should end at layer {n_teacher - 1}")
    return tuple(out)


def _check_depth(result: tuple[Block, ...], n_teacher: int, pos: Pos | None) -> None:
    if len(result) >= n_teacher:
        raise SurgeryError(f"the student keeps all {n_teacher} teacher layers, so nothing is pruned",
                           pos=pos, hint="keep fewer layers, e.g. `keep first 1 every 2 last 1`")


def layer_ranges(layers, prefix: str = "") -> str:
    """(0, 1, 2, 5) -> '0..2, 5', as `keep` writes layers; with prefix 's': 's0..s2, s5'."""
    runs: list[list[int]] = []
    for x in sorted(layers):
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(f"{prefix}{a}" if a == b else f"{prefix}{a}..{prefix}{b}" for a, b in runs) or "none"
