"""The tensor copy list: an Assembly on the layer graph -> every output tensor, named, with the file
range it comes from.

The teacher's files are the reference: they say which tensors a layer, the embeddings and the
final part hold, and their shapes. Tensors taken from the student are checked against it, so
a student of another shape fails here, naming the file and tensor, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from surgery.arch import Architecture
from surgery.errors import SurgeryError
from surgery.graph import TEACHER, Assembly, LayerGraph
from surgery.materialize.safetensors_io import TensorEntry, TensorIndex


@dataclass(frozen=True)
class Planned:
    name: str  # the tensor's name in the output
    source: TensorEntry
    side: str  # the model it comes from (for the manifest)


@dataclass(frozen=True)
class CopyList:
    tensors: tuple[Planned, ...]
    origins: tuple[int, ...]  # per output layer, the teacher layer it stands for (per-layer config lists)
    tied: bool  # the output ties its head to its embeddings
    # What the written files must hold, taken from the teacher's files, not from `tensors`:
    expected: Mapping[str, tuple[int, ...]]  # every tensor but the head
    head_names: frozenset[str]  # the spellings a head may have
    head_shape: tuple[int, ...]


@dataclass(frozen=True)
class Parts:
    """One model's tensors by part: layer index -> {name after the layer prefix: entry}, and by name."""

    where: str  # the file, or the directory of a sharded model, for messages
    layers: Mapping[int, Mapping[str, TensorEntry]]
    embeddings: Mapping[str, TensorEntry]
    final: Mapping[str, TensorEntry]


def split(index: TensorIndex, arch: Architecture) -> Parts:
    layers: dict[int, dict[str, TensorEntry]] = {}
    embeddings, final = {}, {}
    for name, entry in index.tensors.items():
        try:
            part = arch.part_of(name)
        except SurgeryError as err:
            raise SurgeryError(f"{entry.file}: {err.message}", hint=err.hint) from None
        if part == "layer":
            i = arch.layer_of(name)
            layers.setdefault(i, {})[name[len(arch.layer_prefix(i)):]] = entry
        else:
            (embeddings if part == "embeddings" else final)[name] = entry
    where = str(index.files[0] if len(index.files) == 1 else index.directory)
    return Parts(where, layers, embeddings, final)


def copy_list(graph: LayerGraph, assembly: Assembly, sources: Mapping[str, TensorIndex], reference: TensorIndex,
              *, student_layer: Callable[[int], int] = lambda i: i) -> CopyList:
    """The output tensors of `assembly`, read from `sources[side]`.

    `student_layer` maps a student layer to the layer of `sources['student']` that holds it:
    the identity for a student directory; `graph.init_of` when the pruned student is read
    straight from the teacher's files.
    """
    arch = graph.arch
    ref = split(reference, arch)
    parts = {side: split(index, arch) for side, index in sources.items()}
    heads = frozenset({arch.head_weight, *arch.head_aliases})
    tied = graph.tied and assembly.embeddings == assembly.final
    out: list[Planned] = []
    expected: dict[str, tuple[int, ...]] = {}

    first = parts[assembly.embeddings]
    _check(first.embeddings, ref.embeddings, assembly.embeddings, first.where, lambda k: k)
    out += [Planned(name, e, assembly.embeddings) for name, e in first.embeddings.items()]
    expected.update({name: e.shape for name, e in ref.embeddings.items()})

    origins = []
    for j, r in enumerate(assembly.layers):
        origin = r.index if r.side == TEACHER else graph.init_of(r.index)
        held = r.index if r.side == TEACHER else student_layer(r.index)
        if origin not in ref.layers:
            raise SurgeryError(f"{ref.where}: the teacher has no tensors under `{arch.layer_prefix(origin)}`",
                               hint=f"its config says {graph.n_teacher} layers; are the files complete?")
        side = parts[r.side]
        got = side.layers.get(held, {})
        _check(got, ref.layers[origin], r.side, side.where, lambda k, i=held: arch.layer_prefix(i) + k)
        out += [Planned(arch.layer_prefix(j) + k, e, r.side) for k, e in got.items()]
        expected.update({arch.layer_prefix(j) + k: e.shape for k, e in ref.layers[origin].items()})
        origins.append(origin)

    last = parts[assembly.final]
    ref_final = {n: e for n, e in ref.final.items() if n not in heads}
    final = {n: e for n, e in last.final.items() if n not in heads}
    _check(final, ref_final, assembly.final, last.where, lambda k: k)
    out += [Planned(name, e, assembly.final) for name, e in final.items()]
    expected.update({name: e.shape for name, e in ref_final.items()})

    head_shape = _head(ref, arch, heads).shape
    head = _head(last, arch, heads, required=not tied, synthesize=graph.tied, side=assembly.final)
    if head is not None:
        name = head.name if head.name in heads else arch.head_weight
        if head.shape != head_shape:
            raise SurgeryError(f"{head.file}: tensor `{head.name}` has shape {list(head.shape)}, "
                               f"but the teacher's head has {list(head_shape)}")
        out.append(Planned(name, head, assembly.final))
    return CopyList(tuple(out), tuple(origins), tied, expected, heads, head_shape)


def _head(parts: Parts, arch: Architecture, heads: frozenset[str], *, required: bool = True,
          synthesize: bool = True, side: str = TEACHER) -> TensorEntry | None:
    """The model's head tensor; for a tied model that stores none, its embedding matrix.

    With `required` false (a tied output), only a head the files actually store is returned.
    """
    stored = [e for n, e in parts.final.items() if n in heads]
    if len(stored) > 1:
        raise SurgeryError(f"{stored[1].file}: the {side} stores its head twice, as `{stored[0].name}` "
                           f"and `{stored[1].name}`")
    if stored or not required:
        return stored[0] if stored else None
    if synthesize and arch.embedding_weight in parts.embeddings:
        return parts.embeddings[arch.embedding_weight]
    raise SurgeryError(f"{parts.where}: the {side} has no tensor `{arch.head_weight}`",
                       hint="an untied model stores its LM head; was the file written completely?")


def _check(got: Mapping[str, TensorEntry], want: Mapping[str, TensorEntry], side: str, where: str,
           source_name: Callable[[str], str]) -> None:
    """`got` must hold the same tensors as the teacher's `want`, with the same shapes."""
    for key, ref in want.items():
        if key not in got:
            raise SurgeryError(f"{where}: the {side} has no tensor `{source_name(key)}`",
                               hint=f"the teacher's `{ref.name}` needs a counterpart; is it the same architecture?")
        if got[key].shape != ref.shape:
            e = got[key]
            raise SurgeryError(f"{e.file}: tensor `{e.name}` has shape {list(e.shape)}, "
                               f"but the teacher's `{ref.name}` has {list(ref.shape)}",
                               hint="the student must keep the teacher's layer shapes")
    for key in got.keys() - want.keys():
        e = got[key]
        raise SurgeryError(f"{e.file}: tensor `{e.name}` has no counterpart in the teacher",
                           hint="is the student the same architecture as the teacher?")
