"""The teacher's weights, checked against its config before any work reads them.

Every other check compares a file with the teacher's files, so the teacher's own files must be
right: a tensor its config calls for and the files lack would be missing from every model
written (and transformers fills such a gap with random weights, silently), and a tensor of the
wrong shape gives models that cannot be loaded. The expected tensors are those of the model
the config describes, from the architecture registry (surgery/shapes.py, tested equal to a
transformers model built on the `meta` device): exact, with no weights and no torch.
"""

from __future__ import annotations

from surgery.errors import SurgeryError
from surgery.graph import LayerGraph
from surgery.materialize.safetensors_io import INDEX_NAME, TensorIndex
from surgery.source import weights_dir


def teacher_weights(compiled) -> TensorIndex:
    """The teacher's safetensors (`compiled`: a surgery.compile.Compiled), every tensor checked."""
    index = TensorIndex(weights_dir(compiled.teacher))
    check_teacher(compiled.graph, index)
    return index


def check_teacher(graph: LayerGraph, index: TensorIndex) -> None:
    """Every tensor the teacher's config implies is in `index`, with that shape; else one SurgeryError.

    A tied head need not be stored (save_pretrained leaves it out); an untied one must be, under
    any of the names the architecture gives it.
    """
    arch = graph.arch
    heads = {arch.head_weight, *arch.head_aliases}
    where = _where(index)
    missing = "its config.json calls for it; is the download complete?"
    mismatch = "is config.json the one these weights were saved with?"
    head_shape = None
    for name, shape in graph.shapes.items():
        if name in heads:
            head_shape = shape
            continue
        entry = index.tensors.get(name)
        if entry is None:
            raise SurgeryError(f"{where}: the teacher has no tensor `{name}`", hint=missing)
        if entry.shape != shape:
            raise SurgeryError(f"{entry.file}: the teacher's tensor `{name}` has shape {list(entry.shape)}, but its "
                               f"config.json implies {list(shape)}", hint=mismatch)
    if head_shape is None:
        return
    stored = [index.tensors[name] for name in sorted(heads) if name in index.tensors]
    if not stored and not graph.tied:
        raise SurgeryError(f"{where}: the teacher has no tensor `{arch.head_weight}` (its LM head)",
                           hint="an untied model stores its head; " + missing)
    for entry in stored:
        if entry.shape != head_shape:
            raise SurgeryError(f"{entry.file}: the teacher's tensor `{entry.name}` has shape {list(entry.shape)}, "
                               f"but its config.json implies {list(head_shape)}", hint=mismatch)


def _where(index: TensorIndex) -> str:
    """The file a missing tensor should have been in: the one file, or the shard index."""
    if len(index.files) == 1:
        return str(index.files[0])
    sharded = index.directory / INDEX_NAME
    return str(sharded if sharded.is_file() else index.directory)
