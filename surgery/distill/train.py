"""The distillation loop.

One optimizer step takes `batch` rows of the data stream. Each process takes its slice and
runs it in micro-batches: the teacher (frozen, in its own dtype, under inference_mode) gives its
final hidden states and the aligned ones; the student (fp32 master weights under bf16 autocast,
or plain fp32 on CPU) gives its own, and the loss terms turn them into one scalar whose
gradients accumulate. Terms are normalised by the token counts of the whole global batch, so
the result does not depend on how the batch is split.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from surgery import devices, durable, source
from surgery.distill import checkpoint, data, feed, losses, models, parallel
from surgery.distill import steps
from surgery.distill.progress import Reporter
from surgery.dtypes import torch_dtype
from surgery.errors import SurgeryError
from surgery.materialize.teacher import teacher_weights


# Settings whose change makes a checkpoint meaningless for the new recipe. micro_batch, device,
# compile, activation_checkpointing and the checkpoint/eval intervals may change on resume.
FINGERPRINT_FIELDS = ("data", "validation", "seq", "pack", "tokens", "steps", "batch", "optimizer", "schedule",
                      "losses", "precision", "seed")
# ... except these, which only set the size of the steps to come: lowering them is how a run that
# diverged goes on from its last good checkpoint.
STEP_SIZE_FIELDS = {"optimizer": ("lr", "clip"), "schedule": ("kind", "warmup")}

# With `compile step`, step metrics stay on the device and are read every LOG_EVERY steps (and
# before each validation, checkpoint and stop), so the host never waits for the device mid-run.
LOG_EVERY = 10


def run(compiled, *, progress: bool = True, tensorboard: bool = False, stop_after: int | None = None) -> Path:
    """Distill the student of `compiled`; returns the student directory. See surgery.distill.
    (`--dry-run` needs none of this module: surgery.distill.steps.dry_run.)"""
    recipe = compiled.recipe
    student_dir = compiled.student_dir
    durable.recover(student_dir)
    if not (student_dir / "config.json").is_file():
        raise SurgeryError(f"no student in {student_dir}", file=recipe.path, pos=recipe.student.pos,
                           hint=f"run `surgery init-student {recipe.path}` first")
    d = recipe.distill
    device = devices.resolve(d.device if d is not None else "auto")
    schedule = steps.make(compiled, int(os.environ.get("WORLD_SIZE", "1")), device)
    world = parallel.start(device)
    try:
        return _train(compiled, schedule, world, progress=progress, tensorboard=tensorboard, stop_after=stop_after)
    finally:
        parallel.stop()


def fingerprint(recipe) -> dict:
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "pos"}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        return x

    return {name: plain(getattr(recipe.distill, name)) for name in FINGERPRINT_FIELDS}


def _check_student(directory: Path, compiled) -> dict:
    config = source.read_config(directory / "config.json", "student")
    graph = compiled.graph
    depth = config.get(graph.arch.depth)
    if depth != graph.n_student:
        raise SurgeryError(f"the student in {directory} has {depth} layers but the recipe's student has "
                           f"{graph.n_student}", hint="run `surgery init-student` again for this recipe")
    if config.get("vocab_size") != compiled.teacher.config.get("vocab_size"):
        raise SurgeryError(f"the student in {directory} has vocab_size {config.get('vocab_size')}, the teacher "
                           f"{compiled.teacher.config.get('vocab_size')}",
                           hint="student and teacher must share a tokenizer")
    return config


def _already_distilled(directory: Path, print_fn, mark: dict) -> bool:
    path = directory / "student_config.json"
    done = (source.read_config(path, "student") if path.is_file() else {}).get("distillation")
    if done is None:
        return False
    if done.get("fingerprint") != mark:
        raise SurgeryError(f"the student in {directory} was already distilled, by a different distill block",
                           hint="run `surgery init-student` again to start from the teacher")
    print_fn(f"{directory} is already distilled by this recipe; nothing to do")
    return True


def _optimizer(model, settings, device: torch.device):
    """AdamW; weight decay on matrices and embeddings, none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps,
                             fused=device.type == "cuda")


def _counts(rows: data.Rows) -> tuple[int, int]:
    """(positions with a next token to predict, real tokens) in a set of rows."""
    return int((rows.lengths - 1).clip(min=0).sum()), int(rows.lengths.sum())


def _checkpoint_activations(model) -> None:
    # Non-reentrant checkpointing keeps the layer outputs that the hooks record attached to the
    # graph. transformers renamed the method in 5.2x; both names take the same options.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _compile_layers(*models_and_layers, backend: str = "inductor") -> None:
    for layers in models_and_layers:
        for layer in layers:
            layer.forward = torch.compile(layer.forward, backend=backend)


@dataclasses.dataclass
class Pending:
    """An optimizer step's metrics still on the device (`Engine.step_deferred`)."""

    sums: torch.Tensor  # this process's term sums
    norm: torch.Tensor  # the global gradient norm
    n_targets: int
    n_tokens: int


class Engine:
    """The loaded models and the step and evaluation functions (shared with the benchmark)."""

    def __init__(self, teacher_model, student_model, graph, objective: models.Objective, schedule, world, *,
                 compile: bool | str = False, activation_checkpointing: bool = False, strategy: str = "single",
                 shard_teacher: bool = False, compile_backend: str = "inductor", cudagraphs: bool = False):
        """`compile`: False; True compiles each decoder layer; "step" compiles the teacher's and
        the student's base models whole and the head loss's chunk math, and makes `deferred`
        true: the loop should use `step_deferred`, which never waits for the device.
        `compile_backend` and `cudagraphs` (CUDA graphs for the whole-model graphs) are for
        tests and the benchmark."""
        self.schedule, self.world, self.strategy, self.objective = schedule, world, strategy, objective
        self.deferred = compile == "step"
        forwards, chunk_fn = (models.base_forward, models.base_forward), losses.chunk_loss
        if activation_checkpointing:
            _checkpoint_activations(student_model)
        if self.deferred and not (shard_teacher or strategy == "fsdp"):
            whole = {"mode": "reduce-overhead"} if cudagraphs else {}
            # Static shapes (packed rows): one graph per micro-batch size, no shape guards in it.
            forwards = tuple(torch.compile(models.base_forward, backend=compile_backend, dynamic=False, **whole)
                             for _ in range(2))
            chunk_fn = losses.compiled_chunk(compile_backend)
        elif compile:  # FSDP's per-layer hooks stay outside the graphs: compile layer by layer
            _compile_layers(models.layer_list(student_model, graph), models.layer_list(teacher_model, graph),
                            backend=compile_backend)
        self.cudagraphs = cudagraphs
        if shard_teacher:
            parallel.fully_shard_layers(teacher_model, models.layer_list(teacher_model, graph))
        self.teacher = models.Teacher(teacher_model, graph, models.teacher_indices(objective, graph), forwards[0])
        precision = schedule.precision
        self.distiller = models.Distiller(student_model, graph, objective, torch_dtype(precision), forwards[1],
                                          chunk_fn)
        self.student = student_model.train()
        self.model = parallel.wrap(self.distiller, world, strategy, models.layer_list(student_model, graph),
                                   find_unused=not objective.head_terms)
        self.autocast = (torch.autocast(world.device.type, dtype=torch_dtype(precision)) if precision != "fp32"
                         else nullcontext())
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=precision == "fp16")

    def step(self, rows: data.Rows, optimizer, clip: float) -> tuple[dict, float]:
        """One optimizer step on the global batch `rows`: (term means, gradient norm)."""
        sums, norm, n_targets, n_tokens = self._backward(rows, optimizer, clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        metrics = self.objective.means(parallel.sum_all(sums).cpu(), n_targets, n_tokens)
        error = self._not_finite(metrics, norm)
        if error is not None:
            optimizer.zero_grad(set_to_none=True)
            raise error
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return metrics, norm

    def step_deferred(self, rows: data.Rows, optimizer, clip: float) -> Pending:
        """`step` without reading anything from the device, so the host runs ahead into the next
        step: the update is queued whatever the loss, and `read` checks it later. So read every
        pending step before saving or evaluating anything. (fp16's loss scaler still reads its
        overflow flag here.)"""
        sums, norm, n_targets, n_tokens = self._backward(rows, optimizer, clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return Pending(sums, norm.full_tensor() if hasattr(norm, "full_tensor") else norm, n_targets, n_tokens)

    def read(self, pending: list[Pending]) -> list[tuple[dict, float]]:
        """(term means, gradient norm) of each pending step, in one wait for the device.
        Raises FloatingPointError, with `.index` the position in `pending`, at the first step
        whose loss or gradient norm is not finite."""
        sums = parallel.sum_all(torch.stack([p.sums for p in pending])).cpu()
        norms = torch.stack([p.norm.float() for p in pending]).cpu().tolist()
        out = []
        for i, (p, s, norm) in enumerate(zip(pending, sums, norms)):
            metrics = self.objective.means(s, p.n_targets, p.n_tokens)
            error = self._not_finite(metrics, norm)
            if error is not None:
                error.index = i
                raise error
            out.append((metrics, norm))
        return out

    def _not_finite(self, metrics: dict, norm: float) -> FloatingPointError | None:
        """The error for a step whose loss or gradient norm is not finite (fp16's loss scaler
        skips steps with an infinite norm itself)."""
        if math.isfinite(metrics["loss"]) and (math.isfinite(norm) or self.scaler.is_enabled()):
            return None
        return FloatingPointError(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + f", grad_norm {norm:.4g}")

    def _backward(self, rows: data.Rows, optimizer, clip: float):
        """Forward and backward passes over this process's share of `rows`, then the gradient
        clip: (this process's term sums, the gradient norm, targets, tokens), nothing read back
        from the device."""
        schedule, world = self.schedule, self.world
        mine = rows.part(world.rank, world.size)
        n_targets, n_tokens = _counts(rows)
        # DDP and FSDP average gradients over processes; scale up so the average is the global sum.
        scales = self.objective.scales(n_targets, n_tokens, multiplier=world.size)
        sums = torch.zeros(len(self.objective.names), device=world.device)
        for i in range(schedule.accumulation):
            part = mine[i * schedule.micro_batch:(i + 1) * schedule.micro_batch]
            batch = models.Batch.from_rows(part.tokens, part.lengths, world.device)
            if self.cudagraphs:  # a new iteration: the graphs' previous outputs are no longer read
                torch.compiler.cudagraph_mark_step_begin()
            teacher_head, teacher_states = self.teacher(batch)
            with parallel.gradient_sync(self.model, self.strategy, sync=i == schedule.accumulation - 1):
                with self.autocast:
                    loss, term_sums = self.model(batch, teacher_head, teacher_states, scales)
                self.scaler.scale(loss).backward()
            sums += term_sums.detach()
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip)
        return sums, norm, n_targets, n_tokens

    @torch.no_grad()
    def evaluate(self, rows: data.Rows) -> dict:
        """Validation metrics over `rows` (split over processes): each term, the loss, perplexity."""
        world, mb = self.world, self.schedule.micro_batch
        objective = self.objective.with_ce()
        n_targets, n_tokens = _counts(rows)
        ones = objective.scales(1, 1)
        mine = rows[world.rank::world.size]
        sums = torch.zeros(len(objective.names), device=world.device)
        self.distiller.eval()
        # Every process runs the same number of forward passes (FSDP gathers weights in each).
        for i in range(0, math.ceil(len(rows) / world.size), mb):
            part = mine[i:i + mb]
            if len(part) == 0:
                part, weight = rows[:1], 0.0
            else:
                weight = 1.0
            batch = models.Batch.from_rows(part.tokens, part.lengths, world.device)
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            teacher_head, teacher_states = self.teacher(batch)
            with self.autocast:
                sums += weight * self.distiller(batch, teacher_head, teacher_states, ones, objective)[1]
        self.distiller.train()
        metrics = objective.means(parallel.sum_all(sums).cpu(), n_targets, n_tokens)
        metrics["ppl"] = math.exp(min(metrics["ce"], 50.0))
        return metrics


def _train(compiled, schedule, world, *, progress: bool, tensorboard: bool, stop_after: int | None) -> Path:
    recipe, graph = compiled.recipe, compiled.graph
    d = recipe.distill
    student_dir = compiled.student_dir
    mark = fingerprint(recipe)
    student_config = _check_student(student_dir, compiled)
    if _already_distilled(student_dir, print if world.main else (lambda *_: None), mark):
        return student_dir
    torch.manual_seed(d.seed)
    teacher_dir = teacher_weights(compiled).directory  # every tensor checked before training starts
    trust = recipe.teacher.trust_remote_code
    rows_source = feed.open_rows(compiled, world)
    validation = rows_source.validation(schedule.validation_rows(d.validation.fraction if d.validation.text is None
                                                             else None))

    how = parallel.strategy(world, schedule)
    shard_teacher = parallel.shard_teacher(world, schedule)
    load_on = torch.device("cpu") if how == "fsdp" else world.device
    teacher_model = models.load(teacher_dir, torch_dtype(schedule.teacher_dtype),
                                torch.device("cpu") if shard_teacher else world.device, trust, "teacher")
    student_model = models.load(student_dir, torch.float32, load_on, trust, "student")
    engine = Engine(teacher_model, student_model, graph, models.Objective.from_recipe(d.losses, graph), schedule, world,
                    compile=d.compile, activation_checkpointing=d.activation_checkpointing, strategy=how,
                    shard_teacher=shard_teacher)
    optimizer = _optimizer(student_model, d.optimizer, world.device)

    root = checkpoint.directory(student_dir)
    if world.main:
        checkpoint.clean(root)
    step = tokens = 0
    last = checkpoint.latest(root)
    if last is not None:
        state = checkpoint.load(last, student_model, optimizer, world)
        changed, retuned = _changes(state["fingerprint"], mark)
        if changed:
            raise SurgeryError(f"checkpoint {last} was made with a different `{changed[0]}` in the distill block",
                               file=recipe.path, pos=d.pos,
                               hint=f"restore the setting, or delete {root} to start over")
        rows_source.load_state_dict(state["data"])
        step, tokens = state["step"], state["tokens"]

    reporter = Reporter(student_dir.parent, schedule.steps, step, resumed=last is not None, enabled=world.main,
                        bar=progress and sys.stderr.isatty(), tensorboard=tensorboard)
    if last is not None and retuned:
        reporter.say(f"note: resuming with a changed {', '.join(retuned)}")
    reporter.say(f"resuming from {last}" if last is not None else
                 f"distilling {graph.n_teacher} -> {graph.n_student} layers: {schedule.steps} steps on "
                 f"{schedule.world} x "
                 f"{schedule.device} ({how}), {schedule.precision}")
    reporter.say(f"data: {rows_source.describe}")
    final = None  # the latest validation metrics
    pending = []  # engine.deferred: (step, tokens, lr, step tokens, Pending, host time) not yet read
    batches = feed.Feed(rows_source, schedule.batch, schedule.steps - step, ahead=schedule.device != "cpu")
    try:
        if last is None:
            reporter.validation(0, engine.evaluate(validation))
        while step < schedule.steps:
            lr = schedule.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows, position = next(batches)
            stopping = stop_after is not None and step + 1 >= stop_after
            try:
                if engine.deferred:
                    n = int(rows.lengths.sum())
                    queued = engine.step_deferred(rows, optimizer, d.optimizer.clip)
                    pending.append((step + 1, tokens + n, lr, n, queued, time.perf_counter()))
                    if len(pending) >= LOG_EVERY or stopping or _boundary(step + 1, schedule):
                        _report_pending(engine, pending, reporter)
                else:
                    metrics, norm = engine.step(rows, optimizer, d.optimizer.clip)
            except FloatingPointError as err:
                bad = pending[err.index][0] if hasattr(err, "index") else step + 1
                raise _diverged(f"the loss is not finite at step {bad} ({err})", root, bad - 1, recipe,
                                world) from None
            step += 1
            tokens += int(rows.lengths.sum())
            if not engine.deferred:
                reporter.step(step, tokens, {**metrics, "lr": lr, "grad_norm": norm}, int(rows.lengths.sum()))
            if step % schedule.eval_every == 0 or step == schedule.steps:
                final = engine.evaluate(validation)
                reporter.validation(step, final)
                reporter.pause()
            if step % schedule.checkpoint_every == 0 or step == schedule.steps or stopping:
                if not checkpoint.finite(student_model):
                    raise _diverged(f"the weights are not finite after step {step}", root, step, recipe, world)
                checkpoint.save(root, step, student_model, optimizer,
                                {"tokens": tokens, "data": position, "fingerprint": mark}, world)
                reporter.say(f"step {step}: checkpoint {root.name}/{checkpoint.PREFIX}{step:06d}")
                reporter.pause()
            if stopping and step < schedule.steps:
                reporter.say(f"stopped after step {step}; rerun the same command to continue")
                return student_dir
    except torch.OutOfMemoryError:
        raise SurgeryError(f"out of {schedule.device} memory at micro_batch {schedule.micro_batch} x seq "
                           f"{schedule.seq}",
                           file=recipe.path, pos=d.pos,
                           hint=_resume_hint(root, "lower `micro_batch`, add `activation_checkpointing yes`, or "
                                                   "use more GPUs")) from None
    finally:
        batches.close()
        reporter.close()
    final = final or engine.evaluate(validation)
    summary = {"steps": schedule.steps, "tokens": tokens, "validation": final, "fingerprint": mark,
               "recipe": str(recipe.path)}
    export_dtype = student_config.get("dtype") or student_config.get("torch_dtype") or "float32"
    checkpoint.export(student_model, student_dir, getattr(torch, export_dtype), summary, world)
    reporter.say(f"distilled student written to {student_dir}")
    return student_dir


def _changes(before: dict, now: dict) -> tuple[list[str], list[str]]:
    """(distill settings whose change makes the checkpoint meaningless, step-size settings that
    changed, as `optimizer lr 0.1 -> 0.001`)."""
    changed, retuned = [], []
    for name, value in now.items():
        old = before.get(name)
        free = STEP_SIZE_FIELDS.get(name, ())
        if free and isinstance(old, dict) and isinstance(value, dict):
            retuned += [f"{name} {k} {old.get(k)} -> {value.get(k)}" for k in free if old.get(k) != value.get(k)]
            old, value = ({k: v for k, v in x.items() if k not in free} for x in (old, value))
        if old != value:
            changed.append(name)
    return changed, retuned


def _diverged(message: str, root: Path, step: int, recipe, world) -> SurgeryError:
    """The error for a loss or weights that are not finite after `step`. A checkpoint of `step`
    holds the weights that gave it, so it goes: the newest left is the last good one."""
    if world.main:
        checkpoint.discard(root / f"{checkpoint.PREFIX}{step:06d}")
    parallel.barrier()
    return SurgeryError(message, file=recipe.path, pos=recipe.distill.pos,
                        hint=_resume_hint(root, "lower `lr` on the optimizer line (a resume accepts a changed "
                                                "`lr`, `clip` or schedule) or check the data"))


def _boundary(step: int, schedule) -> bool:
    """Whether the loop validates or checkpoints after `step`."""
    return step % schedule.eval_every == 0 or step % schedule.checkpoint_every == 0 or step == schedule.steps


def _report_pending(engine: Engine, pending: list, reporter: Reporter) -> None:
    """Read the deferred steps' metrics (one wait for the device) and report them; empties
    `pending` unless a step is not finite (FloatingPointError, see Engine.read)."""
    results = engine.read([p[4] for p in pending])
    done = time.perf_counter()  # the last step ended on the device by now, not when it was queued
    for i, ((step, tokens, lr, n, _, at), (metrics, norm)) in enumerate(zip(pending, results)):
        reporter.step(step, tokens, {**metrics, "lr": lr, "grad_norm": norm}, n,
                      at=done if i == len(pending) - 1 else at)
    pending.clear()


def _resume_hint(root: Path, advice: str) -> str:
    last = checkpoint.latest(root)
    if last is None:
        return f"{advice}; no checkpoint was written yet, so rerunning the same command starts over"
    return f"{advice}; the last good checkpoint, {last.name}, is intact, and rerunning the same command resumes from it"
