"""Teacher and student as the engine uses them: loaded with SDPA attention, run through their
base model (no full-vocabulary logits), with forward hooks keeping just the aligned hidden
states.

Hidden-state index i follows the layer graph: 0 is the input of layer 0 (the embedding
output), i is the output of layer i-1, and the last index is the final normed output, which
the base model returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery.distill import losses
from surgery.errors import SurgeryError
from surgery.graph import LayerGraph


def load(directory: Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool, what: str):
    """A causal LM from a directory of safetensors, with SDPA attention."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa",
                                                     use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SurgeryError(f"cannot load the {what} from {directory}: {str(err).splitlines()[0]}",
                           hint="is it a complete Hugging Face model directory with safetensors?") from None
    model.config.use_cache = False
    return model.to(device)


def layer_list(model: nn.Module, graph: LayerGraph) -> nn.ModuleList:
    return model.get_submodule(graph.arch.layers.split(".{i}")[0])


class Capture:
    """Forward hooks that keep the hidden states at chosen indices while `active`.

    Only a forward pass inside `with capture:` records, so the re-run of a layer under
    activation checkpointing (during backward) leaves the recorded states alone.
    """

    def __init__(self, layers: nn.ModuleList, indices):
        self.states: dict[int, torch.Tensor] = {}
        self.active = False
        for i in sorted(set(indices)):
            if i == 0:
                layers[0].register_forward_pre_hook(self._input_hook, with_kwargs=True)
            elif i <= len(layers) - 1:
                layers[i - 1].register_forward_hook(self._output_hook(i))
            # i == len(layers): the final normed output, returned by the base model itself

    def _input_hook(self, module, args, kwargs):
        if self.active:
            self.states[0] = args[0] if args else kwargs["hidden_states"]

    def _output_hook(self, index: int):
        def hook(module, args, output):
            if self.active:
                self.states[index] = output[0] if isinstance(output, tuple) else output
        return hook

    def __enter__(self):
        self.states, self.active = {}, True
        return self

    def __exit__(self, *exc):
        self.active = False


@dataclass
class Batch:
    """A micro-batch on the device: token ids [B, S], next-token targets [B·S], and the attention
    mask [B, S] and token validity [B·S], both None when every token is real (packed rows)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    targets: torch.Tensor
    valid: torch.Tensor | None

    @classmethod
    def from_rows(cls, tokens, lengths, device) -> "Batch":
        ids = torch.as_tensor(tokens, dtype=torch.long)
        n = torch.as_tensor(lengths, dtype=torch.long)
        positions = torch.arange(ids.shape[1])
        mask = positions[None, :] < n[:, None]
        targets = torch.full_like(ids, losses.IGNORE)
        targets[:, :-1] = torch.where(mask[:, 1:], ids[:, 1:], losses.IGNORE)
        if bool(mask.all()):
            return cls(_to(ids, device), None, _to(targets.reshape(-1), device), None)
        return cls(_to(ids, device), _to(mask.long(), device), _to(targets.reshape(-1), device),
                   _to(mask.reshape(-1).float(), device))


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to the device without making the host wait for the GPU (pinned, non-blocking)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _head(model, hidden: torch.Tensor) -> losses.Head:
    head = model.get_output_embeddings()
    return losses.Head(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias,
                       getattr(model.config, "final_logit_softcapping", None))


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def base_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The base model's final normed hidden states (the capture hooks record the aligned ones).
    A plain function, so `torch.compile` can take it whole: embedding, every layer, the hooks
    and the final norm in one graph (and, for the student, its backward in one more)."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


class Teacher:
    """The frozen teacher: its final head inputs and its aligned hidden states for a batch."""

    def __init__(self, model, graph: LayerGraph, indices, forward=base_forward):
        self.model = model.eval().requires_grad_(False)
        self.final = graph.n_teacher
        self.capture = Capture(layer_list(model, graph), [i for i in indices if i != self.final])
        self.forward = forward  # base_forward, or it compiled

    def __call__(self, batch: Batch) -> tuple[losses.Head, dict[int, torch.Tensor]]:
        with torch.inference_mode(), self.capture:
            final = self.forward(self.model, batch.input_ids, batch.attention_mask)
            states = {**self.capture.states, self.final: final}
        # Clone outside inference mode: inference tensors cannot be saved for the student's backward.
        states = {i: _flat(s).clone() for i, s in states.items()}
        return _head(self.model, states[self.final]), states


@dataclass(frozen=True)
class Objective:
    """The recipe's loss lines, split into head and hidden terms, with the aligned pairs."""

    head_terms: tuple[losses.HeadTerm, ...]
    head_weights: tuple[float, ...]
    hidden_kinds: tuple[str, ...]
    hidden_weights: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def from_recipe(cls, recipe_losses, graph: LayerGraph) -> "Objective":
        head = [x for x in recipe_losses if x.kind in losses.HEAD_KINDS]
        hidden = [x for x in recipe_losses if x.kind in losses.HIDDEN_KINDS]
        return cls(tuple(losses.HeadTerm(x.kind, x.temperature, x.beta) for x in head),
                   tuple(x.weight for x in head), tuple(x.kind for x in hidden), tuple(x.weight for x in hidden),
                   graph.aligned_pairs if hidden else ())

    def with_ce(self) -> "Objective":
        """The same objective, measuring cross-entropy (at weight 0 if the recipe has none)."""
        if any(t.kind == "ce" for t in self.head_terms):
            return self
        return Objective((losses.HeadTerm("ce"), *self.head_terms), (0.0, *self.head_weights), self.hidden_kinds,
                         self.hidden_weights, self.pairs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.head_terms) + self.hidden_kinds

    def needs_teacher_logits(self) -> bool:
        return any(t.kind != "ce" for t in self.head_terms)

    def scales(self, n_targets: float, n_tokens: float, multiplier: float = 1.0) -> tuple[tuple, tuple]:
        """Per-term factors that turn sums into the weighted global token means."""
        head = tuple(w * multiplier / (n_targets if t.kind == "ce" else n_tokens)
                     for t, w in zip(self.head_terms, self.head_weights))
        hidden = tuple(w * multiplier / (n_tokens * len(self.pairs)) for w in self.hidden_weights)
        return head, hidden

    def means(self, sums: torch.Tensor, n_targets: float, n_tokens: float) -> dict[str, float]:
        """Each term's global mean from its summed value (hidden terms averaged over pairs)."""
        denominators = [n_targets if t.kind == "ce" else n_tokens for t in self.head_terms]
        denominators += [n_tokens * len(self.pairs)] * len(self.hidden_kinds)
        values = {name: float(s) / max(d, 1) for name, s, d in zip(self.names, sums.tolist(), denominators)}
        weights = self.head_weights + self.hidden_weights
        values["loss"] = sum(w * values[n] for w, n in zip(weights, self.names))
        return values


class Distiller(nn.Module):
    """The student and its loss: `forward` takes a micro-batch with the teacher's outputs and
    returns (the weighted loss, the term sums). Data-parallel wrappers wrap this module.

    `forward_fn` runs the student's base model (`base_forward`, or it compiled) and `chunk_fn`
    the head loss's per-chunk math (`losses.compiled_chunk()` compiles it)."""

    def __init__(self, student, graph: LayerGraph, objective: Objective, matmul_dtype: torch.dtype,
                 forward_fn=base_forward, chunk_fn=losses.chunk_loss):
        super().__init__()
        self.student = student
        self.objective = objective
        self.final = graph.n_student
        self.matmul_dtype = matmul_dtype
        self.forward_fn, self.chunk_fn = forward_fn, chunk_fn
        self.capture = Capture(layer_list(student, graph), [s for s, _ in objective.pairs if s != self.final])

    def forward(self, batch: Batch, teacher_head: losses.Head, teacher_states: dict, scales,
                objective: Objective | None = None):
        objective = objective or self.objective
        head_scales, hidden_scales = scales
        with self.capture:
            final = self.forward_fn(self.student, batch.input_ids, batch.attention_mask)
            states = {**self.capture.states, self.final: final}
        total = torch.zeros((), device=batch.input_ids.device)
        sums = []
        if objective.head_terms:
            head = _head(self.student, states[self.final])
            teacher = teacher_head if objective.needs_teacher_logits() else None
            loss, head_sums = losses.head_loss(head, teacher, batch.targets, batch.valid, objective.head_terms,
                                               head_scales, self.matmul_dtype, self.chunk_fn)
            total, sums = total + loss, [head_sums]
        if objective.hidden_kinds:
            pairs = objective.pairs
            loss, hidden_sums = losses.hidden_loss([_flat(states[s]) for s, _ in pairs],
                                                   [teacher_states[t] for _, t in pairs], batch.valid,
                                                   objective.hidden_kinds, hidden_scales)
            total, sums = total + loss, sums + [hidden_sums]
        return total, torch.cat(sums)


def teacher_indices(objective: Objective, graph: LayerGraph) -> list[int]:
    return sorted({t for _, t in objective.pairs} | {graph.n_teacher})
