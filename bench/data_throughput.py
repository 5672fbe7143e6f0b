"""The data path's speed and memory: tokenising once (`surgery prepare`) and serving rows from the cache.

- prepare: tokens/s of `surgery.distill.shards.prepare` with 1 and with 2 worker processes, on a
  generated corpus of jsonl files (--corpus-mb, default 200 MB of text), with the shipped tiny
  teacher's tokenizer (recipes/assets/tiny-teacher).
- read: tokens/s that one process, pinned to one core, is served from a synthetic token cache
  as packed [batch, seq] int64 torch tensors (surgery.distill.feed: seeded epoch order, row
  positions, one pread per document piece). Target: >= 1.2M tokens/s.
- rss: peak resident memory of a process that opens a cache and reads --read-batches batches,
  for each cache size (--sizes, default 100M and 1B tokens), each in a fresh subprocess. Target:
  flat from the smallest to the largest.
- resume: seconds from opening the largest cache to holding the first batch after resuming at
  its last row (the batch runs into the next epoch). Target: <= 1 s.

Synthetic caches are written in the shard format with random token ids and documents of 1 to
4,095 tokens (about 2,048 on average), in --work (a temporary directory by default, removed at the
end). Prints one JSON line per measurement and a summary line.

    python bench/data_throughput.py                      # the figures in docs/distill.md
    python bench/data_throughput.py --corpus-mb 5 --sizes 1e6 1e7    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from surgery.distill import feed, shards  # noqa: E402

SEQ = 2048
BATCH = 16
SHARD_TOKENS = 1 << 26


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ----------------------------------------------------------------------------- prepare


def write_corpus(directory: Path, megabytes: float, files: int = 8) -> int:
    """jsonl files of pseudo-English: Zipf-distributed made-up words, sentences, paragraphs."""
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = 1 / np.arange(1, 27)
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 11), p=weights / weights.sum()))
             for _ in range(20000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    directory.mkdir(parents=True, exist_ok=True)
    per_file, total = megabytes * 1e6 / files, 0
    for f in range(files):
        size = 0
        with open(directory / f"part-{f}.jsonl", "w") as out:
            while size < per_file:
                n = int(rng.integers(50, 2000))
                words = [vocab[i] for i in rng.choice(len(vocab), size=n, p=zipf)]
                for cut in range(int(rng.integers(5, 15)), n, int(rng.integers(8, 20))):
                    words[cut] += "." if cut % 3 else ".\n\n"
                line = json.dumps({"text": " ".join(words)}) + "\n"
                out.write(line)
                size += len(line)
        total += size
    return total


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure_prepare(work: Path, megabytes: float) -> list[dict]:
    from surgery.compile import compile_file

    corpus = work / "corpus"
    made = write_corpus(corpus, megabytes)
    recipe = work / "recipe.boom"
    recipe.write_text(f'boom 1\nteacher "{REPO / "recipes/assets/tiny-teacher"}" {{\n    dtype fp32\n}}\n'
                      f'student "{work / "student"}" {{\n    keep first 1 every 3 last 1\n}}\n'
                      f'distill {{\n    data jsonl "{corpus}/*.jsonl"\n    seq {SEQ}\n    steps 1\n}}\n')
    compiled = compile_file(recipe)
    records = []
    for workers in (1, 2):
        os.environ["SURGERY_CACHE"] = str(work / f"cache-{workers}")
        cpu, started = cpu_seconds(), time.perf_counter()
        shards.prepare(compiled, progress=False, workers=workers)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        manifest = shards.read_manifest(shards.status(compiled).directories[0])
        records.append({"measure": "prepare", "workers": workers, "text_mb": round(made / 1e6, 1),
                        "tokens": manifest["tokens"], "shards": len(manifest["shards"]), "seconds": round(seconds, 1),
                        "tokens_per_s": round(manifest["tokens"] / seconds), "cpu_s": round(cpu, 1),
                        "tokens_per_cpu_s": round(manifest["tokens"] / cpu),
                        "mb_per_s": round(made / 1e6 / seconds, 2)})
        emit(records[-1])
        shutil.rmtree(work / f"cache-{workers}")
    del os.environ["SURGERY_CACHE"]
    return records


# ----------------------------------------------------------------------------- synthetic caches


def write_cache(directory: Path, tokens: int, seed: int = 0) -> None:
    """A cache of `tokens` random token ids in documents of 1..4095 tokens, in SHARD_TOKENS shards."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    lengths = []
    while sum(len(x) for x in lengths) * 2048 < tokens * 1.1:
        lengths.append(rng.integers(1, 4096, size=1 << 16))
    lengths = np.concatenate(lengths)
    lengths = lengths[:int(np.searchsorted(np.cumsum(lengths), tokens)) + 1]
    lengths[-1] -= int(lengths.sum()) - tokens
    ends = np.cumsum(lengths)
    manifest = {"format": shards.FORMAT, "key": "synthetic", "source": "synthetic", "dtype": "uint16", "eos": 0,
                "pad": 0, "files": 1, "shards": [], "tokens": tokens, "done": True}
    first = 0
    while first < len(lengths):
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - lengths[first] + SHARD_TOKENS, side="right")))
        last = min(last, len(lengths))
        name = f"{len(manifest['shards']):05d}"
        count = int(lengths[first:last].sum())
        with open(directory / f"{name}.tokens", "wb") as out:
            for start in range(0, count, 1 << 24):
                out.write(rng.integers(0, 50000, size=min(1 << 24, count - start), dtype=np.uint16).tobytes())
        docs = np.empty(last - first, dtype=shards.DOCS)
        docs["length"], docs["hash"] = lengths[first:last], rng.integers(0, 2**63, size=last - first, dtype=np.uint64)
        np.save(directory / f"{name}.docs.npy", docs)
        manifest["shards"].append({"name": name, "slots": last - first, "tokens": count, "files": [[0, last - first]]})
        first = last
    (directory / "manifest.json").write_text(json.dumps(manifest))


def batch(positions: feed.Positions):
    import torch

    return torch.from_numpy(positions.read(positions.take(BATCH), SEQ))


def memory_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS of this process, from /proc: ru_maxrss would count the parent's
    memory too, since Linux carries it over fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(task: str, directory: Path, batches: int) -> None:
    """Runs in a subprocess pinned to one core: prints one JSON object."""
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    base = memory_mb("VmHWM")
    started = time.perf_counter()
    positions = feed.cache_positions(directory, SEQ)
    source = positions.sources[0]
    if task == "resume":  # the position a checkpoint at the last row of the epoch holds
        positions.rows = positions.counts[0] = source.per_epoch // SEQ - 1
    first = batch(positions)
    first_s = time.perf_counter() - started
    assert first.shape == (BATCH, SEQ) and first.dtype == torch.int64
    t0 = time.perf_counter()
    for _ in range(batches):
        batch(positions)
    seconds = time.perf_counter() - t0
    print(json.dumps({"first_batch_s": first_s, "tokens_per_s": batches * BATCH * SEQ / seconds,
                      "rss_base_mb": base, "rss_peak_mb": memory_mb("VmHWM"), "slots": source.slots}))


def run_child(task: str, directory: Path, batches: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, str(directory), str(batches)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=200)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e8, 1e9], help="synthetic cache sizes, tokens")
    parser.add_argument("--read-batches", type=int, default=300)
    parser.add_argument("--work", type=Path, help="where to write (default: a temporary directory)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return 0
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="surgery-data-bench-", dir=args.work))
    emit({"cores": os.cpu_count(), "load_avg": os.getloadavg()[0], "seq": SEQ, "batch": BATCH})
    try:
        prepare = measure_prepare(work, args.corpus_mb)
        sizes = sorted(int(s) for s in args.sizes)
        reads = {}
        for size in sizes:
            directory = work / f"synthetic-{size}"
            write_cache(directory, size)
            reads[size] = run_child("read", directory, args.read_batches)
            emit({"measure": "read", "cache_tokens": size, "slots": reads[size]["slots"],
                  "tokens_per_s": round(reads[size]["tokens_per_s"]),
                  "rss_peak_mb": round(reads[size]["rss_peak_mb"], 1),
                  "rss_after_imports_mb": round(reads[size]["rss_base_mb"], 1)})
            if size != sizes[-1]:
                shutil.rmtree(directory)
        resume = run_child("resume", work / f"synthetic-{sizes[-1]}", 1)
        emit({"measure": "resume", "cache_tokens": sizes[-1], "first_batch_s": round(resume["first_batch_s"], 3)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    read = min(r["tokens_per_s"] for r in reads.values())
    rss = [reads[s]["rss_peak_mb"] for s in sizes]
    emit({"summary": True, "elapsed_s": round(time.perf_counter() - started, 1),
          "prepare_scaling_2_over_1": round(prepare[1]["tokens_per_s"] / prepare[0]["tokens_per_s"], 2),
          "read_tokens_per_s": round(read), "read_target_met": read >= 1.2e6,
          "rss_peak_mb": [round(r, 1) for r in rss], "rss_growth_mb": round(rss[-1] - rss[0], 1),
          "resume_first_batch_s": round(resume["first_batch_s"], 3),
          "resume_target_met": resume["first_batch_s"] <= 1.0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
