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
from contextlib import nullcontext
from pathlib import Path

import torch

from surgery import devices, durable, source
from surgery.distill import checkpoint, data, feed, models, parallel
from surgery.distill import plan as planning
from surgery.distill.progress import Reporter
from surgery.errors import SurgeryError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Settings whose change makes a checkpoint meaningless for the new recipe. micro_batch, device,
# compile, activation_checkpointing and the checkpoint/eval intervals may change on resume.
FINGERPRINT_FIELDS = ("data", "validation", "seq", "pack", "tokens", "steps", "batch", "optimizer", "schedule",
                      "losses", "precision", "seed")


def run(compiled, *, dry_run: bool = False, progress: bool = True, tensorboard: bool = False,
        stop_after: int | None = None) -> Path:
    """Distill the student of `compiled`; returns the student directory. See surgery.distill."""
    recipe = compiled.recipe
    student_dir = compiled.student_dir
    if not dry_run:
        durable.recover(student_dir)
        if not (student_dir / "config.json").is_file():
            raise SurgeryError(f"no student in {student_dir}", file=recipe.path, pos=recipe.student.pos,
                               hint=f"run `surgery init-student {recipe.path}` first")
    d = recipe.distill
    device = devices.resolve(d.device if d is not None else "auto")
    plan = planning.make(compiled, int(os.environ.get("WORLD_SIZE", "1")), device)
    if dry_run:
        how = "single" if plan.world == 1 else os.environ.get("SURGERY_DISTILL_STRATEGY", "ddp or fsdp")
        print(planning.describe(plan, compiled, data.describe_sources(recipe), how))
        if not (student_dir / "config.json").is_file():
            print(f"note     no student in {student_dir} yet: run `surgery init-student {recipe.path}` first")
        return student_dir
    world = parallel.start(device)
    try:
        return _train(compiled, plan, world, progress=progress, tensorboard=tensorboard, stop_after=stop_after)
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


def _compile_layers(*models_and_layers) -> None:
    for layers in models_and_layers:
        for layer in layers:
            layer.forward = torch.compile(layer.forward)


class Engine:
    """The loaded models and the step and evaluation functions (shared with the benchmark)."""

    def __init__(self, teacher_model, student_model, graph, objective: models.Objective, plan, world, *,
                 compile: bool = False, activation_checkpointing: bool = False, strategy: str = "single",
                 shard_teacher: bool = False):
        self.plan, self.world, self.strategy, self.objective = plan, world, strategy, objective
        if activation_checkpointing:
            _checkpoint_activations(student_model)
        if compile:
            _compile_layers(models.layer_list(student_model, graph), models.layer_list(teacher_model, graph))
        if shard_teacher:
            parallel.fully_shard_layers(teacher_model, models.layer_list(teacher_model, graph))
        self.teacher = models.Teacher(teacher_model, graph, models.teacher_indices(objective, graph))
        precision = plan.precision
        self.distiller = models.Distiller(student_model, graph, objective, DTYPES[precision])
        self.student = student_model.train()
        self.model = parallel.wrap(self.distiller, world, strategy, models.layer_list(student_model, graph),
                                   find_unused=not objective.head_terms)
        self.autocast = (torch.autocast(world.device.type, dtype=DTYPES[precision]) if precision != "fp32"
                         else nullcontext())
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=precision == "fp16")

    def step(self, rows: data.Rows, optimizer, clip: float) -> tuple[dict, float]:
        """One optimizer step on the global batch `rows`: (term means, gradient norm)."""
        plan, world = self.plan, self.world
        mine = rows.part(world.rank, world.size)
        n_targets, n_tokens = _counts(rows)
        # DDP and FSDP average gradients over processes; scale up so the average is the global sum.
        scales = self.objective.scales(n_targets, n_tokens, multiplier=world.size)
        sums = torch.zeros(len(self.objective.names), device=world.device)
        for i in range(plan.accumulation):
            part = mine[i * plan.micro_batch:(i + 1) * plan.micro_batch]
            batch = models.Batch.from_rows(part.tokens, part.lengths, world.device)
            teacher_head, teacher_states = self.teacher(batch)
            with parallel.gradient_sync(self.model, self.strategy, sync=i == plan.accumulation - 1):
                with self.autocast:
                    loss, term_sums = self.model(batch, teacher_head, teacher_states, scales)
                self.scaler.scale(loss).backward()
            sums += term_sums.detach()
        self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        metrics = self.objective.means(parallel.sum_all(sums).cpu(), n_targets, n_tokens)
        if not math.isfinite(metrics["loss"]) or (not math.isfinite(norm) and not self.scaler.is_enabled()):
            optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + f", grad_norm {norm:.4g}")
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return metrics, norm

    @torch.no_grad()
    def evaluate(self, rows: data.Rows) -> dict:
        """Validation metrics over `rows` (split over processes): each term, the loss, perplexity."""
        world, mb = self.world, self.plan.micro_batch
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
            teacher_head, teacher_states = self.teacher(batch)
            with self.autocast:
                sums += weight * self.distiller(batch, teacher_head, teacher_states, ones, objective)[1]
        self.distiller.train()
        metrics = objective.means(parallel.sum_all(sums).cpu(), n_targets, n_tokens)
        metrics["ppl"] = math.exp(min(metrics["ce"], 50.0))
        return metrics


def _train(compiled, plan, world, *, progress: bool, tensorboard: bool, stop_after: int | None) -> Path:
    recipe, graph = compiled.recipe, compiled.graph
    d = recipe.distill
    student_dir = compiled.student_dir
    mark = fingerprint(recipe)
    student_config = _check_student(student_dir, compiled)
    if _already_distilled(student_dir, print if world.main else (lambda *_: None), mark):
        return student_dir
    torch.manual_seed(d.seed)
    teacher_dir = source.weights_dir(compiled.teacher)
    trust = recipe.teacher.trust_remote_code
    rows_source = feed.open_rows(compiled, world)
    validation = rows_source.validation(plan.validation_rows(d.validation.fraction if d.validation.text is None
                                                             else None))

    how = parallel.strategy(world, plan)
    shard_teacher = parallel.shard_teacher(world, plan)
    load_on = torch.device("cpu") if how == "fsdp" else world.device
    teacher_model = models.load(teacher_dir, DTYPES[plan.teacher_dtype],
                                torch.device("cpu") if shard_teacher else world.device, trust, "teacher")
    student_model = models.load(student_dir, torch.float32, load_on, trust, "student")
    engine = Engine(teacher_model, student_model, graph, models.Objective.from_recipe(d.losses, graph), plan, world,
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
        changed = [k for k in mark if state["fingerprint"].get(k) != mark[k]]
        if changed:
            raise SurgeryError(f"checkpoint {last} was made with a different `{changed[0]}` in the distill block",
                               file=recipe.path, pos=d.pos,
                               hint=f"restore the setting, or delete {root} to start over")
        rows_source.load_state_dict(state["data"])
        step, tokens = state["step"], state["tokens"]

    reporter = Reporter(student_dir.parent, plan.steps, step, resumed=last is not None, enabled=world.main,
                        bar=progress and sys.stderr.isatty(), tensorboard=tensorboard)
    reporter.say(f"resuming from {last}" if last is not None else
                 f"distilling {graph.n_teacher} -> {graph.n_student} layers: {plan.steps} steps on {plan.world} x "
                 f"{plan.device} ({how}), {plan.precision}")
    reporter.say(f"data: {rows_source.describe}")
    final = None  # the latest validation metrics
    batches = feed.Feed(rows_source, plan.batch, plan.steps - step)
    try:
        if last is None:
            reporter.validation(0, engine.evaluate(validation))
        while step < plan.steps:
            lr = plan.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows, position = next(batches)
            try:
                metrics, norm = engine.step(rows, optimizer, d.optimizer.clip)
            except FloatingPointError as err:
                raise SurgeryError(f"the loss is not finite at step {step + 1} ({err})", file=recipe.path, pos=d.pos,
                                   hint=_resume_hint(root, "lower the learning rate or check the data")) from None
            step += 1
            tokens += int(rows.lengths.sum())
            reporter.step(step, tokens, {**metrics, "lr": lr, "grad_norm": norm}, int(rows.lengths.sum()))
            stopping = stop_after is not None and step >= stop_after
            if step % plan.eval_every == 0 or step == plan.steps:
                final = engine.evaluate(validation)
                reporter.validation(step, final)
                reporter.pause()
            if step % plan.checkpoint_every == 0 or step == plan.steps or stopping:
                checkpoint.save(root, step, student_model, optimizer,
                                {"tokens": tokens, "data": position, "fingerprint": mark}, world)
                reporter.say(f"step {step}: checkpoint {root.name}/{checkpoint.PREFIX}{step:06d}")
                reporter.pause()
            if stopping and step < plan.steps:
                reporter.say(f"stopped after step {step}; rerun the same command to continue")
                return student_dir
    except torch.OutOfMemoryError:
        raise SurgeryError(f"out of {plan.device} memory at micro_batch {plan.micro_batch} x seq {plan.seq}",
                           file=recipe.path, pos=d.pos,
                           hint=_resume_hint(root, "lower `micro_batch`, add `activation_checkpointing yes`, or "
                                                   "use more GPUs")) from None
    finally:
        batches.close()
        reporter.close()
    final = final or engine.evaluate(validation)
    summary = {"steps": plan.steps, "tokens": tokens, "validation": final, "fingerprint": mark,
               "recipe": str(recipe.path)}
    export_dtype = student_config.get("dtype") or student_config.get("torch_dtype") or "float32"
    checkpoint.export(student_model, student_dir, getattr(torch, export_dtype), summary, world)
    reporter.say(f"distilled student written to {student_dir}")
    return student_dir


def _resume_hint(root: Path, advice: str) -> str:
    last = checkpoint.latest(root)
    kept = f"the last good checkpoint, {last.name}, is intact" if last else "no checkpoint was written yet"
    return f"{advice}; {kept}, and rerunning the same command resumes from it"
