"""Distillation throughput and memory: the surgery engine against the authors' way of training.

Random weights and random tokens at Qwen3-0.6B shapes (hidden 1024, intermediate 3072, 28
layers, 16 heads, 8 KV heads, head_dim 128, vocab 151936, tied), the student kept by
`first 1 every 2 last 2` (15 layers), seq 2048, losses ce 1 + kl 0.1 + cosine 2. One measured
step is one micro-batch forward and backward plus an AdamW step.

- `surgery`: the engine's own step (surgery.distill.train.Engine): teacher in bf16 under
  inference_mode keeping only the aligned states, student with fp32 master weights under bf16
  autocast, chunked head losses, fused AdamW.
- `baseline` (--baseline): what the authors' trainer does: HF forwards with
  output_hidden_states=True and labels, full-vocabulary fp32 softmax KL, masked_select cosine.

`--paths P...` runs a matrix instead, each path at each `--micro-batches`, in that order:
`eager` (the default engine), `compile` (`compile yes`: each decoder layer compiled), `step`
(`compile step`: both models compiled whole, the head loss's chunk math compiled, the step
never waiting for the device; metrics read every train.LOG_EVERY steps) and `step-cudagraphs`
(`step` with CUDA graphs for the whole-model graphs; CUDA only). Each cell stops its timed
steps after `--cell-seconds`; cells left when `--budget-s` has passed are recorded as skipped.
On CUDA, a `step` cell also runs one step under torch.cuda.set_sync_debug_mode("error") and
records any host synchronisation it meets (`host_sync`). `--table FILE` turns such JSON lines
into a markdown table. bench/gpu_check.sh runs the matrix on a GPU machine.

Prints one JSON line per configuration as it goes (a failure, e.g. out of memory, is a line
too), then a summary line with the ratios against the targets (>= 2.5x the baseline's tokens/s
at micro-batch 2, <= 40% of its peak memory at micro-batch 8). Model TFLOP/s counts
6*N_student + 2*N_teacher per token; `mfu` (on CUDA) adds the attention's FLOPs (3 passes of
the student's causal attention, 1 of the teacher's, 2·seq·heads·head_dim per token and layer
each: about 4.2 GFLOP per token in all at Qwen3-0.6B shapes) and divides by `--peak-tflops`
(989, the H100/H200's dense bf16). `--tiny` runs a tiny shape, on CPU when there is no GPU.
`--profile N` adds, per configuration, N profiled steps: the device's busy time per step (on a
GPU, busy well under `step_ms` means the step waits on kernel launches, not on the GPU) and
the ops that take most of it. `--cache DIR` takes the surgery configurations' rows from a
prepared token cache (a directory `surgery prepare` prints) instead of random tokens, read on a
background thread as training reads them, so the step time includes the real data path.

Builds the layer layout from surgery.layout / surgery.graph directly: no recipe is parsed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from surgery import arch as arch_registry  # noqa: E402
from surgery import layout  # noqa: E402
from surgery.distill import data, feed, losses, models, parallel, train  # noqa: E402
from surgery.distill import steps  # noqa: E402
from surgery.distill.steps import StepSchedule  # noqa: E402
from surgery.distill.train import Engine  # noqa: E402
from surgery.graph import LayerGraph  # noqa: E402
from surgery.recipe.ast import KeepRule, Loss, Optimizer  # noqa: E402

GiB = 2**30
LOSSES = (Loss("ce", 1.0), Loss("kl", 0.1), Loss("cosine", 2.0))
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True, seq=2048),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=2048, tie_word_embeddings=True, seq=128),
}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def build_teacher(shape: dict, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in shape.items() if k != "seq"}
    config = dict(model_type="qwen3", max_position_embeddings=max(4096, shape["seq"]), rms_norm_eps=1e-6,
                  bos_token_id=0, eos_token_id=1, **fields)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=dtype,
                                                   attn_implementation="sdpa")
    teacher.config.use_cache = False
    arch = arch_registry.for_config(config)
    graph = LayerGraph(arch, config, layout.blocks(KeepRule(1, 2, 2), config["num_hidden_layers"]))
    return teacher.eval().requires_grad_(False), graph


def build_student(teacher, graph: LayerGraph, device: torch.device, dtype: torch.dtype):
    """The pruned student: the teacher's kept layers, embeddings and final norm, in `dtype`."""
    from transformers import AutoModelForCausalLM

    config = teacher.config.to_dict()
    config["num_hidden_layers"] = graph.n_student
    config.pop("layer_types", None)
    with torch.device(device):
        student = AutoModelForCausalLM.from_config(type(teacher.config)(**config), dtype=dtype,
                                                   attn_implementation="sdpa")
    student.config.use_cache = False
    with torch.no_grad():
        student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        student.model.norm.weight.copy_(teacher.model.norm.weight)
        for i, k in enumerate(graph.kept):
            student.model.layers[i].load_state_dict(teacher.model.layers[k].state_dict())
    return student.train()


def random_rows(micro_batch: int, seq: int, vocab: int, seed: int) -> data.Rows:
    tokens = np.random.default_rng(seed).integers(0, vocab, size=(micro_batch, seq))
    return data.Rows(tokens, np.full(micro_batch, seq))


class CacheRows:
    """Rows of a prepared token cache for `feed.Feed`; ids past the bench model's vocabulary
    (a --tiny model's 2,048) wrap around."""

    def __init__(self, directory: Path, seq: int, vocab: int):
        self.positions, self.seq, self.vocab = feed.cache_positions(directory, seq), seq, vocab

    def take(self, n: int) -> data.Rows:
        picked = self.positions.take(n)
        return data.Rows(self.positions.read(picked, self.seq) % self.vocab, self.positions.lengths(picked))

    def state_dict(self) -> dict:
        return {}


def flops_per_token(graph: LayerGraph) -> float:
    return 6 * graph.size(graph.student).params + 2 * graph.size(graph.teacher).params


def attention_flops_per_token(graph: LayerGraph, shape: dict) -> float:
    """Causal attention's QK^T and AV: 2·seq·width per token and layer for a forward pass."""
    per_layer = 2 * shape["seq"] * shape["num_attention_heads"] * shape["head_dim"]
    return per_layer * (3 * graph.n_student + graph.n_teacher)


def schedule_for(graph: LayerGraph, shape: dict, micro_batch: int, device: str, ac: bool) -> StepSchedule:
    gpu = device == "cuda"
    return StepSchedule(steps=10**6, seq=shape["seq"], batch=micro_batch, micro_batch=micro_batch, world=1,
                        device=device,
                        precision="bf16" if gpu else "fp32", teacher_dtype="bf16" if gpu else "fp32", warmup=0,
                        schedule="constant", lr=1e-5, checkpoint_every=10**6, eval_every=10**6,
                        student_params=graph.size(graph.student).params,
                        teacher_params=graph.size(graph.teacher).params,
                        hidden=shape["hidden_size"], intermediate=shape["intermediate_size"], vocab=shape["vocab_size"],
                        student_layers=graph.n_student, pairs=len(graph.aligned_pairs), activation_checkpointing=ac)


def optimizer_for(student, device: torch.device):
    return torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                             fused=device.type == "cuda")


def surgery_step(teacher, graph, shape, micro_batch, device, *, student_dtype=torch.float32, compile=False,
                 ac=False, backend="inductor", cudagraphs=False, cache: Path | None = None):
    schedule = schedule_for(graph, shape, micro_batch, device.type, ac)
    student = build_student(teacher, graph, device, student_dtype)
    engine = Engine(teacher, student, graph, models.Objective.from_recipe(LOSSES, graph), schedule,
                    parallel.World(0, 1, 0, device), compile=compile, activation_checkpointing=ac,
                    compile_backend=backend, cudagraphs=cudagraphs)
    optimizer = optimizer_for(student, device)
    if cache is not None:
        batches = feed.Feed(CacheRows(cache, shape["seq"], shape["vocab_size"]), micro_batch, 10**9)

        def step():
            engine.step(next(batches)[0], optimizer, Optimizer().clip)

        return step, schedule.memory_total(), (engine, student, optimizer, batches)
    rows = [random_rows(micro_batch, shape["seq"], shape["vocab_size"], seed) for seed in range(4)]
    count = iter(range(10**9))
    pending = []

    def step():
        batch = rows[next(count) % len(rows)]
        if not engine.deferred:
            engine.step(batch, optimizer, Optimizer().clip)
            return
        pending.append(engine.step_deferred(batch, optimizer, Optimizer().clip))
        if len(pending) >= train.LOG_EVERY:
            finish()

    def finish():  # what the training loop does at a log interval
        if pending:
            engine.read(pending)
            pending.clear()

    def sync_check():
        """The first host synchronisation inside one deferred step, or None."""
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            pending.append(engine.step_deferred(rows[0], optimizer, Optimizer().clip))
        except RuntimeError as err:
            return str(err).splitlines()[0][:300]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        finish()
        return None

    if engine.deferred:
        step.finish, step.sync_check = finish, sync_check
    return step, schedule.memory_total(), (engine, student, optimizer)


def baseline_step(teacher, graph, shape, micro_batch, device):
    """The authors' trainer's arithmetic: full hidden-state lists, full fp32 logits."""
    student = build_student(teacher, graph, device, torch.float32)
    optimizer = optimizer_for(student, device)
    gpu = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)
    ids = [torch.as_tensor(random_rows(micro_batch, shape["seq"], shape["vocab_size"], seed).tokens, device=device)
           for seed in range(4)]
    count = iter(range(10**9))
    pairs, tau = graph.aligned_pairs, 1.0

    def step():
        x = ids[next(count) % len(ids)]
        mask = torch.ones_like(x, dtype=torch.bool)
        with torch.no_grad():
            t_out = teacher(input_ids=x, attention_mask=mask.long(), output_hidden_states=True)
        with autocast:
            s_out = student(input_ids=x, attention_mask=mask.long(), labels=x, output_hidden_states=True)
        vocab = s_out.logits.shape[-1]
        s_logp = F.log_softmax(s_out.logits.float() / tau, dim=-1).view(-1, vocab)
        t_prob = F.softmax(t_out.logits.float() / tau, dim=-1).view(-1, vocab)
        kl = F.kl_div(s_logp, t_prob, reduction="batchmean") * tau**2
        cos = 0.0
        for si, ti in pairs:
            hs = s_out.hidden_states[si].masked_select(mask[..., None]).view(-1, shape["hidden_size"])
            ht = t_out.hidden_states[ti].masked_select(mask[..., None]).view(-1, shape["hidden_size"])
            cos = cos + (1 - F.cosine_similarity(hs.float(), ht.float(), dim=-1)).mean()
        loss = s_out.loss + 0.1 * kl + 2.0 * cos / len(pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, None, (student, optimizer)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(step, device, steps: int, top: int = 15) -> dict:
    """Busy time per step on the device and the ops that take most of it (self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    ms = lambda e: round(getattr(e, attr) / steps / 1e3, 3)  # noqa: E731
    return {"busy_ms_per_step": round(sum(getattr(e, attr) for e in events) / steps / 1e3, 2),
            "top": [{"op": e.key[:80], "ms_per_step": ms(e), "calls_per_step": round(e.count / steps, 1)}
                    for e in events[:top]]}


def measure(name, make, micro_batch, shape, device, fpt, warmup, steps, extra=None, profile=0, seconds=None,
            peak_flops=None, all_fpt=None):
    """One configuration's record: after `warmup` steps, the mean of `steps` timed ones (fewer
    if they pass `seconds`, at least 2). `mfu` counts `all_fpt` FLOPs per token."""
    record = {"config": name, "micro_batch": micro_batch, "seq": shape["seq"], **(extra or {})}
    held = None
    try:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step, estimate, held = make()
        finish = getattr(step, "finish", lambda: None)
        for _ in range(warmup):
            step()
        finish()
        sync(device)
        record["warmup_s"] = round(time.perf_counter() - start, 1)
        t0 = time.perf_counter()
        done = 0
        while done < steps and (done < 2 or seconds is None or time.perf_counter() - t0 < seconds):
            step()
            done += 1
        finish()
        sync(device)
        dt = (time.perf_counter() - t0) / done
        tokens_per_s = micro_batch * shape["seq"] / dt
        record.update(steps=done, step_ms=round(dt * 1e3, 2), tokens_per_s=round(tokens_per_s, 1),
                      model_tflops=round(tokens_per_s * fpt / 1e12, 2))
        if peak_flops:
            record["mfu"] = round(tokens_per_s * all_fpt / peak_flops, 4)
        if device.type == "cuda" and hasattr(step, "sync_check"):
            record["host_sync"] = step.sync_check()
        if device.type == "cuda":
            record["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / GiB, 2)
            record["reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GiB, 2)
        if estimate is not None:
            record["estimate_gib"] = round(estimate / GiB, 2)
        if profile:
            record["profile"] = profile_steps(step, device, profile)
            finish()
    except torch.OutOfMemoryError:
        record["error"] = "out of memory"
    except Exception as err:  # one broken configuration must not lose the others
        record["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    finally:
        for part in held or ():
            if isinstance(part, feed.Feed):
                part.close()
        del held
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(record)
    return record


def check_head_loss(device):
    """The chunked head loss on this device against a plain fp32 computation."""
    g = torch.Generator(device="cpu").manual_seed(0)
    n, hidden, vocab = 512, 256, 32000
    h = torch.randn(n, hidden, generator=g).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).to(device).requires_grad_()
    ht = torch.randn(n, hidden, generator=g).to(device)
    wt = (torch.randn(vocab, hidden, generator=g) * 0.05).to(device)
    targets = torch.randint(0, vocab, (n,), generator=g).to(device)
    terms = (losses.HeadTerm("ce"), losses.HeadTerm("kl"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    saved, steps.CHUNK_ELEMENTS = steps.CHUNK_ELEMENTS, 100 * vocab  # several chunks: accumulation is checked
    try:
        total, _ = losses.head_loss(losses.Head(h, w), losses.Head(ht, wt), targets, None, terms, (1 / n, 1 / n),
                                    dtype)
    finally:
        steps.CHUNK_ELEMENTS = saved
    total.backward()
    got_h, got_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    zs, zt = F.linear(h, w), F.linear(ht, wt)
    ref = (F.cross_entropy(zs, targets) + F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zt, -1), log_target=True,
                                                   reduction="batchmean"))
    ref.backward()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    record = {"check": "head_loss", "matmul_dtype": str(dtype), "loss_rel_err": abs(total.item() / ref.item() - 1),
              "grad_h_rel_err": rel(got_h, h.grad), "grad_w_rel_err": rel(got_w, w.grad),
              "mixed_addmm": losses.mixed_addmm_works.get(device.type)}
    emit(record)


PATHS = {"eager": False, "compile": True, "step": "step", "step-cudagraphs": "step"}  # path -> Engine's compile
COLUMNS = ("path", "micro_batch", "tokens_per_s", "mfu", "model_tflops", "step_ms", "peak_gib", "warmup_s",
           "host_sync")


def table(path: Path) -> str:
    """A markdown table of a run's records (cells; failures and skips say so in the last column)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    head = [r for r in records if "device" in r]
    rows = [r for r in records if "config" in r]
    out = [f"device: {head[0]['device']}, torch {head[0]['torch']}, transformers {head[0]['transformers']}, "
           f"shape {head[0]['shape']}" if head else "no device line", "",
           "| " + " | ".join(COLUMNS) + " | error |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = [str(r.get("path", r["config"])) if c == "path" else "" if r.get(c) is None else str(r[c])
                 for c in COLUMNS]
        out.append("| " + " | ".join(cells) + f" | {r.get('error') or r.get('skipped') or ''} |")
    best = max((r for r in rows if "tokens_per_s" in r), key=lambda r: r["tokens_per_s"], default=None)
    if best is not None:
        out += ["", f"fastest: {best.get('path', best['config'])} at micro-batch {best['micro_batch']}, "
                    f"{best['tokens_per_s']:.0f} tokens/s"]
        if best.get("profile"):
            out += ["", f"its profile: {best['profile']['busy_ms_per_step']} ms busy per step of {best['step_ms']}"]
            out += [f"- {e['op']}: {e['ms_per_step']} ms, {e['calls_per_step']} calls" for e in best["profile"]["top"]]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also run the authors' way, for the ratios")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (runs on CPU)")
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--extras", action="store_true",
                        help="also: a pure-bf16 student, activation checkpointing, torch.compile")
    parser.add_argument("--budget-s", type=float, default=330, help="skip remaining configurations after this")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N steps of each configuration: device busy time and the top ops")
    parser.add_argument("--paths", nargs="+", choices=PATHS, help="run this matrix of engine paths (see above)")
    parser.add_argument("--cell-seconds", type=float, default=None, help="stop a cell's timed steps after this")
    parser.add_argument("--backend", default=None,
                        help="torch.compile backend (default: inductor; aot_eager for --tiny on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's peak, for mfu (CUDA)")
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of these records and stop")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="rows from this prepared token cache (printed by `surgery prepare`), not random tokens")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return 0

    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        parser.error("no GPU here: use --tiny")
    shape = SHAPES["tiny" if args.tiny else "qwen3-0.6b"]
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers

    emit({"device": torch.cuda.get_device_name(device) if gpu else "cpu", "torch": torch.__version__,
          "transformers": transformers.__version__, "shape": "tiny" if args.tiny else "qwen3-0.6b",
          "rows": str(args.cache) if args.cache else "random"})
    check_head_loss(device)
    teacher, graph = build_teacher(shape, device, torch.bfloat16 if gpu else torch.float32)
    fpt = flops_per_token(graph)
    all_fpt = fpt + attention_flops_per_token(graph, shape)
    emit({"student_layers": graph.n_student, "kept": list(graph.kept), "n_student": graph.size(graph.student).params,
          "n_teacher": graph.size(graph.teacher).params, "flop_per_token": fpt, "all_flop_per_token": all_fpt})
    backend = args.backend or ("aot_eager" if args.tiny and not gpu else "inductor")
    # Every cell compiles the same functions again for new models and shapes: more than dynamo's
    # default 8 graphs per function, which would silently run the rest eagerly.
    torch._dynamo.config.cache_size_limit = 64

    results = {}
    schedule = []
    for mb in args.micro_batches:
        if args.baseline:
            schedule.append(("baseline", mb, lambda mb=mb: baseline_step(teacher, graph, shape, mb, device), {}))
        if not args.paths:
            schedule.append(("surgery", mb, lambda mb=mb: surgery_step(teacher, graph, shape, mb, device,
                                                                   cache=args.cache), {}))
    if args.extras:
        small, large = min(args.micro_batches), max(args.micro_batches)
        schedule.append(("surgery", small, lambda: surgery_step(teacher, graph, shape, small, device, cache=args.cache,
                                                            student_dtype=torch.bfloat16), {"student": "pure bf16"}))
        schedule.append(("surgery", large, lambda: surgery_step(teacher, graph, shape, large, device, ac=True,
                                                            cache=args.cache),
                     {"activation_checkpointing": True}))
        schedule.append(("surgery", small, lambda: surgery_step(teacher, graph, shape, small, device, compile=True,
                                                            cache=args.cache),
                     {"compile": True}))
    for mb in args.micro_batches if args.paths else ():
        for path in args.paths:
            schedule.append(("surgery", mb, lambda mb=mb, path=path: surgery_step(
                teacher, graph, shape, mb, device, compile=PATHS[path], backend=backend,
                cudagraphs=path == "step-cudagraphs"), {"path": path}))
    for name, mb, make, extra in schedule:
        if extra.get("path") == "step-cudagraphs" and not gpu:
            emit({"config": name, "micro_batch": mb, **extra, "skipped": "CUDA graphs need CUDA"})
            continue
        if time.perf_counter() - t_start > args.budget_s:
            emit({"config": name, "micro_batch": mb, **extra, "skipped": "time budget"})
            continue
        record = measure(name, make, mb, shape, device, fpt, args.warmup, args.steps, extra, args.profile,
                         args.cell_seconds, args.peak_tflops * 1e12 if gpu else None, all_fpt)
        if extra.get("path") == "step-cudagraphs":
            torch._dynamo.reset()  # frees the graphs' memory pools before the next cell
        if not extra or extra == {"path": "eager"}:
            results[(name, mb)] = record

    summary = {"summary": True, "elapsed_s": round(time.perf_counter() - t_start, 1)}
    small, large = min(args.micro_batches), max(args.micro_batches)
    ours_s, base_s = results.get(("surgery", small), {}), results.get(("baseline", small), {})
    ours_l, base_l = results.get(("surgery", large), {}), results.get(("baseline", large), {})
    judged = gpu and not args.tiny  # the targets are for Qwen3-0.6B shapes on a GPU
    if "tokens_per_s" in ours_s and "tokens_per_s" in base_s:
        summary[f"speedup_mb{small}"] = round(ours_s["tokens_per_s"] / base_s["tokens_per_s"], 2)
        if judged:
            summary["speed_target_met"] = summary[f"speedup_mb{small}"] >= 2.5
    if "peak_gib" in ours_l and "peak_gib" in base_l:
        summary[f"memory_ratio_mb{large}"] = round(ours_l["peak_gib"] / base_l["peak_gib"], 3)
        if judged:
            summary["memory_target_met"] = summary[f"memory_ratio_mb{large}"] <= 0.40
    emit(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
