"""The distillation step schedule: what the `distill` block means on this machine, before anything loads.

Steps, tokens, gradient accumulation, device and precision, the learning-rate schedule and a
memory estimate per device. `--dry-run` prints it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from surgery.errors import SurgeryError
from surgery.recipe.units import format_bytes, format_count

GiB = 2**30
MAX_VALIDATION_ROWS = 256
# Tokens per head-loss chunk (surgery.distill.losses): enough that one fp32 [chunk × vocab]
# tensor holds about 2^27 floats (512 MB), whatever the vocabulary. A chunk's math keeps a
# handful of those alive. It lives here, not beside the losses, so the schedule needs no torch.
CHUNK_ELEMENTS = 2**27


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


@dataclass(frozen=True)
class StepSchedule:
    steps: int
    seq: int
    batch: int  # rows per optimizer step, over all processes
    micro_batch: int  # rows per forward pass on one process
    world: int  # processes
    device: str  # "cuda", "mps" or "cpu"
    precision: str  # the student's compute precision: "bf16", "fp16" (autocast, fp32 weights) or "fp32"
    teacher_dtype: str
    warmup: int  # warmup steps
    schedule: str
    lr: float
    checkpoint_every: int
    eval_every: int
    student_params: int
    teacher_params: int
    hidden: int
    intermediate: int
    vocab: int
    student_layers: int
    pairs: int
    activation_checkpointing: bool

    @property
    def accumulation(self) -> int:
        """Micro-batches per process per optimizer step."""
        return self.batch // (self.micro_batch * self.world)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def validation_rows(self, fraction: float | None) -> int:
        """Rows to validate on: at most 256, and at most a quarter of the rows trained between two
        validations (a forward pass over them costs about 1/12 of that training); for a held-out
        `fraction`, also at most that fraction of all planned rows."""
        rows = min(MAX_VALIDATION_ROWS, max(self.micro_batch, self.batch * self.eval_every // 4))
        if fraction is not None:
            rows = min(rows, max(1, math.ceil(fraction * self.steps * self.batch)))
        return rows

    def lr_at(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based): linear warmup, then the schedule."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        if self.schedule == "linear":
            return self.lr * (1 - progress)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def memory(self, sharded: bool = False) -> dict[str, int]:
        """Bytes per device: weights, optimizer, activations, loss buffers.

        The activation figures are fitted to peaks measured on an H200 at Qwen3-0.6B shapes
        (bench/distill_throughput.py): about 84 KB per token per student layer under bf16
        autocast, and with activation checkpointing each layer's fp32 input plus one layer.
        """
        shards = self.world if sharded else 1
        low = 4 if self.precision == "fp32" else 2
        tokens = self.micro_batch * self.seq
        per_layer_token = low * (12 * self.hidden + 6 * self.intermediate) + 4 * 6 * self.hidden
        if self.activation_checkpointing:
            activations = tokens * (self.student_layers * 4 * self.hidden + per_layer_token)
        else:
            activations = tokens * self.student_layers * per_layer_token
        chunk = min(tokens, chunk_tokens(self.vocab))
        teacher_bytes = 4 if self.teacher_dtype == "fp32" else 2
        return {
            "student weights (fp32)": 4 * self.student_params // shards,
            "gradients (fp32)": 4 * self.student_params // shards,
            "AdamW state (fp32)": 8 * self.student_params // shards,
            f"teacher weights ({self.teacher_dtype})": teacher_bytes * self.teacher_params,
            "activations": activations,
            "aligned states and their loss": tokens * self.hidden * (teacher_bytes + 4) * self.pairs,
            "head-loss chunks": 6 * chunk * self.vocab * 4 + 4 * self.vocab * self.hidden,
        }

    def memory_total(self, sharded: bool = False) -> int:
        return sum(self.memory(sharded).values())



def make(compiled, world: int, device: str) -> StepSchedule:
    """The schedule for a compiled recipe on `world` processes of kind `device`."""
    recipe = compiled.recipe
    d = recipe.distill
    where = dict(file=recipe.path)
    if d is None:
        raise SurgeryError("the recipe has no `distill` block", hint="add one: see docs/distill.md", **where)
    if d.steps is None and d.tokens is None:
        raise SurgeryError("the distill block needs `tokens` or `steps`", pos=d.pos,
                           hint="e.g. `tokens 2.1B` or `steps 500`", **where)
    if d.batch % (d.micro_batch * world):
        raise SurgeryError(f"batch {d.batch} does not split into micro_batch {d.micro_batch} on {world} processes",
                           pos=d.pos, hint=f"make batch a multiple of {d.micro_batch * world}", **where)
    steps = d.steps if d.steps is not None else math.ceil(d.tokens / (d.batch * d.seq))
    warmup = d.schedule.warmup
    warmup = math.ceil(warmup * steps) if warmup < 1 else int(warmup)
    cfg = compiled.teacher.config
    graph = compiled.graph
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    intermediate = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden
    has_hidden_terms = any(x.kind in ("cosine", "mse") for x in d.losses)
    return StepSchedule(
        steps=steps, seq=d.seq, batch=d.batch, micro_batch=d.micro_batch, world=world, device=device,
        precision="fp32" if device == "cpu" else d.precision,
        teacher_dtype="fp32" if device == "cpu" else recipe.teacher.dtype,
        warmup=min(warmup, steps), schedule=d.schedule.kind, lr=d.optimizer.lr,
        checkpoint_every=d.checkpoint_every, eval_every=d.eval_every or d.checkpoint_every,
        student_params=graph.size(graph.student).params, teacher_params=graph.size(graph.teacher).params,
        hidden=hidden, intermediate=intermediate, vocab=cfg["vocab_size"], student_layers=graph.n_student,
        pairs=len(graph.aligned_pairs) if has_hidden_terms else 0,
        activation_checkpointing=d.activation_checkpointing,
    )


def describe(schedule: StepSchedule, compiled, sources: list[str], strategy: str) -> str:
    g = compiled.graph
    lines = [
        f"teacher  {compiled.recipe.teacher.source}: {g.n_teacher} layers, {format_count(schedule.teacher_params)} "
        f"params, {schedule.teacher_dtype}",
        f"student  {compiled.student_dir}: {g.n_student} layers (kept {', '.join(map(str, g.kept))}), "
        f"{format_count(schedule.student_params)} params",
        *[f"data     {s}" for s in sources],
        f"tokens   {format_count(schedule.tokens)} = {schedule.steps} steps x {schedule.batch} rows x "
        f"{schedule.seq} tokens",
        f"batch    {schedule.micro_batch} rows per micro-batch x {schedule.accumulation} accumulation x "
        f"{schedule.world} "
        f"process{'es' if schedule.world > 1 else ''} ({strategy})",
        f"device   {_DEVICE_TEXT.get(schedule.device, schedule.device)}, student {schedule.precision}"
        + (" autocast with fp32 master weights" if schedule.precision != "fp32" else ""),
        f"schedule {schedule.schedule}, lr {schedule.lr:g}, warmup {schedule.warmup} steps; checkpoint every "
        f"{schedule.checkpoint_every} steps, validation every {schedule.eval_every}",
        f"memory   about {format_bytes(schedule.memory_total(strategy == 'fsdp'))} per device (estimate):",
    ]
    lines += [f"           {name}: {format_bytes(n)}" for name, n in schedule.memory(strategy == "fsdp").items()]
    return "\n".join(lines)


_DEVICE_TEXT = {"auto": "auto (cuda, else mps, else cpu, chosen when training starts; on cpu all trains in fp32)"}


def dry_run(compiled) -> str:
    """What `surgery distill --dry-run` prints. Nothing is loaded, opened or downloaded, and torch
    is not imported: the schedule is for the recipe's `device` setting as written (`auto` is chosen
    when training starts), local data globs are matched and hub data is named."""
    from surgery.distill.data import describe_sources

    recipe = compiled.recipe
    world = int(os.environ.get("WORLD_SIZE", "1"))
    schedule = make(compiled, world, recipe.distill.device if recipe.distill else "auto")
    strategy = "single" if world == 1 else os.environ.get("SURGERY_DISTILL_STRATEGY", "ddp or fsdp")
    lines = [describe(schedule, compiled, describe_sources(recipe), strategy)]
    if not (compiled.student_dir / "config.json").is_file():
        lines.append(f"note     no student in {compiled.student_dir} yet: "
                     f"run `surgery init-student {recipe.path}` first")
    return "\n".join(lines)
