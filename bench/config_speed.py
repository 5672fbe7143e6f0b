"""How fast the config-only commands answer, process start included; prints JSON.

    python bench/config_speed.py [--repeat 5]

Each command runs as a child process, the way a user runs it, offline (HF_HUB_OFFLINE=1).
Wall time is taken around the child; CPU time and peak RSS are the child's own, from
`os.wait4` (the per-child form of getrusage(RUSAGE_CHILDREN)). One untimed run of each
command first writes bytecode and warms the page cache, as an installed package has them;
then the median and the best of `--repeat` runs are reported. On a shared machine the CPU
time is the steadier figure: wall time also counts the time other processes hold the CPUs.

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
PAPER = ("qwen3-4b", "qwen3-8b", "pythia-2.8b", "pythia-6.9b", "llama-3.2-3b")


def env() -> dict:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode
    return out


def run_once(args: list[str]) -> dict:
    """One run of `surgery ARGS` as a child: wall seconds, CPU seconds, peak RSS (MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "surgery", *args], cwd=ROOT, env=env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if child.returncode:
            err.seek(0)
            sys.exit(f"bench: surgery {' '.join(args)} failed:\n{err.read().decode()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def measure(args: list[str], repeat: int, wall_s: float, rss_mb: float | None = None) -> dict:
    run_once(args)  # untimed: bytecode written, files cached
    runs = [run_once(args) for _ in range(repeat)]
    wall = [r["wall_s"] for r in runs]
    out = {
        "command": "surgery " + " ".join(args),
        "wall_s_median": round(statistics.median(wall), 3),
        "wall_s_best": round(min(wall), 3),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "wall_s_runs": [round(w, 3) for w in wall],
        "target_wall_s": wall_s,
        "met": statistics.median(wall) <= wall_s,
    }
    if rss_mb is not None:
        out["target_rss_mb"] = rss_mb
        out["met"] = out["met"] and out["peak_rss_mb"] <= rss_mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (default 5)")
    args = parser.parse_args()
    recipes = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").glob("*.boom"))
    results = {
        "audit_json": measure(["audit", "--format", "json", "recipes/qwen3-8b.boom"], args.repeat, 1.0, 150),
        "check": {r: measure(["check", r], args.repeat, 0.3) for r in recipes},
        "distill_dry_run": {name: measure(["distill", "--dry-run", f"recipes/{name}.boom"], args.repeat, 2.0)
                            for name in PAPER},
    }
    every = [results["audit_json"], *results["check"].values(), *results["distill_dry_run"].values()]
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "repeat": args.repeat,
        "judged_on": "median wall time of the timed runs (best run shown beside it)",
        **results,
        "all_met": all(r["met"] for r in every),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
