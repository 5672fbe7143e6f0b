"""The recipe AST: typed, frozen dataclasses built in one pass from the parse tree.

Values are normalised here (units applied, defaults filled), so every later stage reads one
internal form. Each node keeps the `Pos` of the statement it came from, for located errors.
Paths are kept as written; `Recipe.resolve` turns them into absolute paths against the
recipe's directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from surgery.errors import Pos
from surgery.source import expand_user

Dtype = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class LayerSpan:
    """`a`, or `a..b`, or `a..b step s` (inclusive)."""

    start: int
    stop: int
    step: int = 1
    pos: Pos | None = dataclasses.field(default=None, compare=False)

    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop + 1, self.step))


@dataclass(frozen=True)
class KeepList:
    """`keep 0, 2..34 step 2, 35`: teacher layers copied into the student, in order."""

    spans: tuple[LayerSpan, ...]
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class KeepRule:
    """`keep first F every E last L`: the paper's rule."""

    first: int
    every: int
    last: int
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class MapEntry:
    """`i <- a..b`: student layer i stands for teacher block a..b."""

    student: int
    block: LayerSpan
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class LayerMap:
    """`map { ... }`: each student layer's teacher block, written out."""

    entries: tuple[MapEntry, ...]
    pos: Pos | None = dataclasses.field(default=None, compare=False)


LayerSpec = KeepList | KeepRule | LayerMap


@dataclass(frozen=True)
class Teacher:
    """The `teacher` block: the model the student is cut from."""

    source: str
    dtype: Dtype = "bf16"
    revision: str | None = None
    trust_remote_code: bool = False
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Student:
    """The `student` block: where it is written, its layers and how they start."""

    path: str
    layers: LayerSpec
    init: Literal["teacher", "random"] = "teacher"
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class DataSource:
    """A `data` line of `distill`: one weighted source of training text."""

    kind: Literal["hf", "text", "jsonl"]
    path: str
    field: str = "text"
    split: str = "train"
    config: str | None = None
    weight: float = 1.0
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Validation:
    """Either a held-out fraction of the training stream or a separate text glob."""

    fraction: float | None = None
    text: str | None = None
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Optimizer:
    """The `optimizer` line of `distill`."""

    name: Literal["adamw"] = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    clip: float = 1.0
    eps: float = 1e-8
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Schedule:
    """The `schedule` line of `distill`: the learning-rate shape."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = 0.01  # a fraction of all steps when < 1, else a step count
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Loss:
    """A `loss` line of `distill`: one weighted term."""

    kind: Literal["ce", "kl", "reverse_kl", "jsd", "cosine", "mse"]
    weight: float
    temperature: float = 1.0
    beta: float = 0.5
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Distill:
    """The `distill` block: data, losses and the training run."""

    data: tuple[DataSource, ...]
    validation: Validation = Validation(fraction=0.005)
    seq: int = 2048
    pack: bool = True
    tokens: int | None = None
    steps: int | None = None
    batch: int = 8
    micro_batch: int = 1
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    losses: tuple[Loss, ...] = (Loss("ce", 1.0), Loss("kl", 0.1), Loss("cosine", 2.0))
    precision: Dtype = "bf16"
    checkpoint_every: int = 50
    eval_every: int | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool | Literal["step"] = False  # "step": whole models and the loss, no waits (docs/distill.md)
    activation_checkpointing: bool = False
    pos: Pos | None = dataclasses.field(default=None, compare=False)
    # Where each setting was written (`seq` -> its line), for errors found once the teacher is known.
    setting_pos: Mapping[str, Pos] = dataclasses.field(default_factory=dict, compare=False, repr=False)


OrderName = Literal["last_to_first", "first_to_last", "klpatch", "optimal"]


@dataclass(frozen=True)
class Sizes:
    """Which sizes to produce.

    kind `all`: every patch step; `patched`: counts of patched layers; `layers`: total depth;
    `params`: parameter budgets; `bytes`: file-size budgets in the emit dtype.
    """

    kind: Literal["all", "patched", "layers", "params", "bytes"] = "all"
    values: tuple[float, ...] = ()
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Calibration:
    """The `calibration` line of `patch`: text for measured orders."""

    text: str
    samples: int = 64
    seq: int = 512
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Patch:
    """The `patch` block: which student layers are swapped for their teacher blocks, in what order."""

    order: OrderName | tuple[int, ...] = "last_to_first"
    sizes: Sizes = Sizes()
    calibration: Calibration | None = None
    candidates: int = 8  # optimal: measure the additive model's cheapest N sets of each size
    exhaustive: int = 64  # optimal: measure every set of a size that has at most N
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Emit:
    """The `emit` block: where and how each size is written."""

    template: str
    dtype: Dtype = "bf16"
    shard: int = 5 * 10**9
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Perplexity:
    """The `perplexity` line of `evaluate`."""

    text: str
    seq: int = 512
    stride: int = 256
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Evaluate:
    """The `evaluate` block: what is scored, and where the report goes."""

    perplexity: Perplexity | None = None
    tasks: tuple[str, ...] = ()
    tasks_path: str | None = None
    limit: int | None = None
    baseline: Literal["naive_pruning"] | None = None
    report: str | None = None
    pos: Pos | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Recipe:
    """A whole `.boom` file."""

    path: Path  # the recipe file; relative paths inside resolve against its directory
    version: int
    teacher: Teacher
    student: Student
    distill: Distill | None = None
    patch: Patch = Patch()
    emit: Emit | None = None
    evaluate: Evaluate | None = None

    def resolve(self, p: str) -> Path:
        """A path written in the recipe, made absolute against the recipe's directory."""
        path = expand_user(p)
        return path if path.is_absolute() else (self.path.parent / path).resolve()
