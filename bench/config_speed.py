"""How fast the config-only commands answer, process start included; prints JSON.

    python bench/config_speed.py [--repeat 5]

Each command runs as a child process, the way a user runs it, offline (HF_HUB_OFFLINE=1).
Wall time is taken around the child; CPU time and peak RSS are the child's own, from
`os.wait4` (the per-child form of getrusage(RUSAGE_CHILDREN)). One untimed run of each
command first writes bytecode and warms the page cache, as an installed package has them;
then `--repeat` rounds run every command once in turn, and the median and the best of each
command's runs are reported, beside `python -c pass` as a gauge of the machine's speed at the
time. On a shared machine the CPU time is the steadier figure: wall time also counts the time
other processes hold the CPUs.

Targets (issue 14, on a 2-core machine): `audit --format json recipes/qwen3-8b.boom` within
1 s and 150 MB; `check` of each shipped recipe within 0.3 s; `distill --dry-run` of each paper
recipe within 2 s, offline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURGERY = ["-m", "surgery"]
PAPER = ("qwen3-4b", "qwen3-8b", "pythia-2.8b", "pythia-6.9b", "llama-3.2-3b")


def env() -> dict:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode
    return out


def run_once(argv: list[str]) -> dict:
    """One run of `python ARGV` as a child: wall seconds, CPU seconds, peak RSS (MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if child.returncode:
            err.seek(0)
            sys.exit(f"bench: python {' '.join(argv)} failed:\n{err.read().decode()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def measure(commands: dict[str, list[str]], repeat: int) -> dict[str, list[dict]]:
    """`repeat` timed runs of each command, taken in turn (a b c, a b c, ...): this machine's
    speed drifts by up to 1.5x over seconds, and turns spread a slow spell over every command."""
    for argv in commands.values():
        run_once(argv)  # untimed: bytecode written, files cached
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            runs[name].append(run_once(argv))
    return runs


def summary(argv: list[str], runs: list[dict], wall_s: float | None = None, rss_mb: float | None = None) -> dict:
    wall = [r["wall_s"] for r in runs]
    surgery = argv[:2] == SURGERY
    out = {
        "command": " ".join(["surgery", *argv[2:]] if surgery else ["python", *argv]),
        "wall_s_median": round(statistics.median(wall), 3),
        "wall_s_best": round(min(wall), 3),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "wall_s_runs": [round(w, 3) for w in wall],
    }
    if wall_s is not None:
        out["target_wall_s"] = wall_s
        out["met"] = statistics.median(wall) <= wall_s
    if rss_mb is not None:
        out["target_rss_mb"] = rss_mb
        out["met"] = out["met"] and out["peak_rss_mb"] <= rss_mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default 5)")
    args = parser.parse_args()
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").glob("*.boom"))
    commands = {
        "python": ["-c", "pass"],  # the interpreter alone: how fast the machine is right now
        "audit_json": [*SURGERY, "audit", "--format", "json", "recipes/qwen3-8b.boom"],
        **{f"check {r}": [*SURGERY, "check", r] for r in recipes},
        **{f"dry-run {n}": [*SURGERY, "distill", "--dry-run", f"recipes/{n}.boom"] for n in PAPER},
    }
    runs = measure(commands, args.repeat)
    results = {
        "python_start": summary(commands["python"], runs["python"]),
        "audit_json": summary(commands["audit_json"], runs["audit_json"], 1.0, 150),
        "check": {r: summary(commands[f"check {r}"], runs[f"check {r}"], 0.3) for r in recipes},
        "distill_dry_run": {n: summary(commands[f"dry-run {n}"], runs[f"dry-run {n}"], 2.0) for n in PAPER},
    }
    every = [results["audit_json"], *results["check"].values(), *results["distill_dry_run"].values()]
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "repeat": args.repeat,
        "judged_on": "median wall time of the timed runs (best run shown beside it); runs taken in turns",
        **results,
        "all_met": all(r["met"] for r in every),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
