"""Benchmark `surgery build` against `cp` and against the naive transformers approach; prints JSON.

Builds a random bf16 teacher (Llama shape: hidden 2048, 24 layers, about 2 GB, in two shards)
and a 12-layer student (every other layer, about 1 GB), then measures:

  (a) `surgery build --patch 6..11`: the student with its last half patched (18 layers);
  (b) `cp` of the same bytes (the build's own output files), the disk's speed;
  (c) the naive way: load both with transformers, swap layer modules, `save_pretrained`.

Every command runs as a child process, so process start is included; wall time is taken
around it, CPU time (user + system) and peak RSS are the child's own. On a shared machine the
CPU ratio is the steadier one: wall time also counts the time other processes hold the CPUs. Page cache: all sources are read once before the timed runs, so every
command reads warm files; outputs are flushed (`sync`) between runs and not timed.

    python bench/materialize.py [--dir /tmp] [--keep] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HIDDEN, LAYERS, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 2048, 24, 4096, 16, 8, 32000
SHARD = 10**9  # the recipe's emit shard: the RSS target is this plus 400 MB
PATCHED = list(range(6, 12))  # the last half of the 12 student layers

# Runs a command as its child and reports that child's wall time and peak RSS (KiB on Linux).
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}))
"""

NAIVE = """
import sys, torch
from torch import nn
from transformers import AutoModelForCausalLM
teacher_dir, student_dir, out, cut, first_teacher = sys.argv[1:6]
cut, first_teacher = int(cut), int(first_teacher)
teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.bfloat16)
student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.bfloat16)
student.model.layers = nn.ModuleList(list(student.model.layers[:cut]) + list(teacher.model.layers[first_teacher:]))
student.model.norm = teacher.model.norm
student.lm_head = teacher.lm_head
student.config.num_hidden_layers = len(student.model.layers)
student.save_pretrained(out, max_shard_size="1GB")
"""


def config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": False, "dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}


def layer_shapes() -> dict[str, tuple[int, ...]]:
    kv = KV_HEADS * HIDDEN // HEADS
    return {"input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
            "self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (kv, HIDDEN),
            "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE)}


def write_model(directory: Path, layers: int, shards: int, seed: int) -> None:
    """A random bf16 Llama-shaped model, written straight from tensors (no model is built)."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    # Random slices of one random pool (larger than the largest tensor) fill the tensors quickly.
    pool = (torch.randn(1 << 26, generator=gen) * 0.02).to(torch.bfloat16)

    def rand(shape):
        n = torch.Size(shape).numel()
        start = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=gen))
        return pool[start:start + n].clone().reshape(shape)

    per_shard = -(-layers // shards)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        tensors = {}
        if s == 0:
            tensors["model.embed_tokens.weight"] = rand((VOCAB, HIDDEN))
        for i in range(s * per_shard, min(layers, (s + 1) * per_shard)):
            for key, shape in layer_shapes().items():
                tensors[f"model.layers.{i}.{key}"] = rand(shape)
        if s == shards - 1:
            tensors["model.norm.weight"] = rand((HIDDEN,))
            tensors["lm_head.weight"] = rand((VOCAB, HIDDEN))
        save_file(tensors, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        del tensors
    if shards > 1:
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config(layers), indent=2))


def measure(cmd: list[str]) -> dict:
    os.sync()  # earlier outputs' dirty pages are written back before the clock starts
    done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench: {cmd[:3]} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def warm(*directories: Path) -> None:
    for d in directories:
        for p in d.glob("*.safetensors"):
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass


def safetensors_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def summary(runs: list[dict], nbytes: int) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    return {"wall_s": round(wall, 3), "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
            "peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs) / 1024, 1),
            "throughput_mb_s": round(nbytes / wall / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the ~8 GB of files go")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b); (c) runs once")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the untimed build writes bytecode, as an install has
    work = Path(tempfile.mkdtemp(prefix="surgery-bench-", dir=args.dir))
    try:
        teacher, student = work / "teacher", work / "student"
        write_model(teacher, LAYERS, shards=2, seed=0)
        write_model(student, LAYERS // 2, shards=1, seed=1)
        kept = list(range(0, LAYERS, 2))
        (student / "student_config.json").write_text(json.dumps(
            {"copied_teacher_layers": kept, "pruned_teacher_layers": [i for i in range(LAYERS) if i not in kept]}))
        recipe = work / "bench.boom"
        recipe.write_text(f'boom 1\nteacher "{teacher}" {{\n    dtype bf16\n}}\n'
                          f'student "{student}" {{\n    keep 0..{LAYERS - 2} step 2\n}}\n'
                          f'emit "{work}/models/{{layers}}L" {{\n    dtype bf16\n    shard {SHARD // 10**6}MB\n}}\n')
        warm(teacher, student)

        # An untimed build gives the files cp copies (the same bytes every build writes). Then build
        # and cp alternate in order, and each output is deleted before the next run, so both see the
        # same page cache (on a VM, fresh page-cache pages cost far more than reused ones).
        patch = ",".join(map(str, PATCHED))
        build = lambda out: [sys.executable, "-m", "surgery", "build", str(recipe), "--patch", patch,  # noqa: E731
                             "--out", str(out)]
        reference = work / "reference"
        measure(build(reference))
        nbytes = safetensors_bytes(reference)
        layers = json.loads((reference / "config.json").read_text())["num_hidden_layers"]
        copy = ["cp", *map(str, sorted(reference.glob("*.safetensors"))), str(work / "copied")]
        runs: dict[str, list] = {"build": [], "cp": []}
        for i in range(args.repeat):
            order = [("build", build(work / "built"), work / "built"), ("cp", copy, work / "copied")]
            for kind, cmd, out in order[::-1] if i % 2 else order:
                if kind == "cp":
                    out.mkdir()
                runs[kind].append(measure(cmd))
                shutil.rmtree(out)
        build_runs, cp_runs = runs["build"], runs["cp"]

        naive_out = work / "naive"
        naive = measure([sys.executable, "-c", NAIVE, str(teacher), str(student), str(naive_out),
                         str(PATCHED[0]), str(kept[PATCHED[0]])])

        a, b, c = summary(build_runs, nbytes), summary(cp_runs, nbytes), summary([naive], nbytes)
        ratios = {"build_throughput_vs_cp": round(a["throughput_mb_s"] / b["throughput_mb_s"], 3),
                  "build_throughput_vs_cp_best": round(min(r["wall_s"] for r in cp_runs)
                                                       / min(r["wall_s"] for r in build_runs), 3),
                  "cp_cpu_over_build_cpu": round(b["cpu_s"] / a["cpu_s"], 3),
                  "naive_time_over_build": round(c["wall_s"] / a["wall_s"], 2),
                  "naive_rss_over_build": round(c["peak_rss_mb"] / a["peak_rss_mb"], 2)}
        report = {
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "page_cache": "warm: sources read before timing, one untimed build first; build and cp alternate, "
                          "outputs deleted between runs, sync before each run",
            "teacher_bytes": safetensors_bytes(teacher), "student_bytes": safetensors_bytes(student),
            "output_bytes": nbytes, "output_layers": layers,
            "shard_bytes": SHARD, "naive_output_bytes": safetensors_bytes(naive_out),
            "build": a, "cp": b, "naive": c, "ratios": ratios,
            "targets": {"build_throughput_vs_cp >= 0.7": ratios["build_throughput_vs_cp"] >= 0.7,
                        "build_peak_rss <= shard + 400MB": a["peak_rss_mb"] * 2**20 <= SHARD + 400 * 10**6,
                        "naive_time_over_build >= 3": ratios["naive_time_over_build"] >= 3,
                        "naive_rss_over_build >= 5": ratios["naive_rss_over_build"] >= 5},
        }
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
