"""Patched models in memory, built from a loaded teacher and student by sharing their modules.

Nothing is copied: the result is a shallow copy of the teacher's container modules (the
CausalLM wrapper and its base model) whose layer list, embeddings, final norm and head point
at the modules of the side the layer graph names. The embeddings come from the side of the
first block, the final norm and head from the side of the last block, so a tied head follows
its side's embedding matrix, as the written (untied) model would. The config copy gets the new
depth and per-layer lists, so the stock transformers forward runs it unchanged.

Run these models with `use_cache=False`: the shared attention modules keep the layer index of
their own model, which only the KV cache reads.

`segment` builds the pieces the planner chains for prefix sharing: one run of layers that takes
a hidden state in and gives the raw (un-normed) hidden state out.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from surgery.graph import STUDENT, TEACHER, Assembly, LayerGraph, LayerRef


def assemble(teacher: nn.Module, student: nn.Module, graph: LayerGraph, assembly: Assembly) -> nn.Module:
    """The model `assembly` names, sharing the teacher's and student's modules."""
    return _build(teacher, student, graph, assembly.layers, assembly.embeddings, assembly.final,
                  tied=graph.size(assembly).tied)


def segment(teacher: nn.Module, student: nn.Module, graph: LayerGraph, layers: tuple[LayerRef, ...],
            embeddings: str | None, final: str | None) -> nn.Module:
    """A model that runs `layers` only: a piece of a patched model, for chaining.

    With `embeddings` set (a side), it takes `input_ids` and embeds them with that side's
    embeddings. With None it takes a hidden state as `inputs_embeds`, and position tables that
    the architecture adds to the input (GPT-2's `wpe`) are replaced by zeros. With `final` set,
    its logits come from that side's final norm and head; with None the final norm is an
    identity, so `.base_model(...).last_hidden_state` is the raw output of the last layer.
    """
    return _build(teacher, student, graph, layers, embeddings, final, tied=False)


def _build(teacher, student, graph: LayerGraph, layers, embeddings: str | None, final: str | None,
           tied: bool) -> nn.Module:
    arch = graph.arch
    models = {TEACHER: teacher, STUDENT: student}
    layers_path = arch.layers.split(".{i}")[0]  # "model.layers"
    root = _shallow_path(teacher, layers_path)
    stack = [models[r.side].get_submodule(layers_path)[r.index] for r in layers]
    _set(root, layers_path, nn.ModuleList(stack))

    token_embedding = _path_of(teacher, teacher.get_input_embeddings())
    for path in _present(teacher, arch.embeddings):
        if embeddings is not None:
            _set(root, path, models[embeddings].get_submodule(path))
        elif path != token_embedding:  # added to inputs_embeds by the forward: make it add nothing
            _set(root, path, _Zeros(teacher.get_submodule(path)))
    head = _path_of(teacher, teacher.get_output_embeddings())
    for path in _present(teacher, arch.final):
        if final is not None:
            _set(root, path, models[final].get_submodule(path))
        elif path != head:
            _set(root, path, nn.Identity())

    config = copy.deepcopy(teacher.config)
    setattr(config, arch.depth, len(layers))
    configs = {TEACHER: teacher.config, STUDENT: student.config}
    for key in arch.per_layer:
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, [getattr(configs[r.side], key)[r.index] for r in layers])
    setattr(config, arch.tie, tied)
    for module in _containers(root, layers_path):
        if hasattr(module, "config"):
            module.config = config
    return root


class _Zeros(nn.Module):
    """Stands in for a position table: returns zeros of its shape, so adding it is exact."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.dim, self.dtype = table.embedding_dim, table.weight.dtype

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.new_zeros(*positions.shape, self.dim, dtype=self.dtype)


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object whose child, parameter and buffer tables can change independently."""
    out = copy.copy(module)
    for table in ("_modules", "_parameters", "_buffers"):
        out.__dict__[table] = dict(module.__dict__[table])
    return out


def _shallow_path(model: nn.Module, path: str) -> nn.Module:
    """Shallow-copy the model and every container on `path`, linking the copies together."""
    root = _shallow(model)
    parent = root
    for name in path.split(".")[:-1]:
        child = _shallow(parent.get_submodule(name))
        setattr(parent, name, child)
        parent = child
    return root


def _containers(root: nn.Module, path: str):
    """The root and every container module on `path` (the ones `_shallow_path` copied)."""
    yield root
    for name in path.split(".")[:-1]:
        root = getattr(root, name)
        yield root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _present(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Module paths of the registry prefixes that exist in this model (`lm_head.`, not `embed_out.`)."""
    out = []
    for prefix in prefixes:
        path = prefix.rstrip(".")
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        out.append(path)
    return out


def _path_of(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None
