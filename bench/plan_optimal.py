"""What `order optimal` costs: models measured, forward passes and wall time of its search; prints JSON.

Two cases:

- `demo`: recipes/tiny.boom with its distilled student (run `surgery distill recipes/tiny.boom`
  first) on its calibration rows.
- `17-block`: the shape of recipes/qwen3-4b.boom (36 teacher layers, `keep 0, 2..34 step 2, 35`:
  17 patchable blocks of two and two one-layer blocks, tied head) at the demo teacher's width,
  with random weights: a copy of recipes/assets/tiny-teacher's config with 36 layers, and the
  student its kept layers plus noise. Timing needs the shape, not trained weights. The rows are
  random token ids, `--rows` x `--seq`.

Each case runs `optimal.search` with the default settings on a fresh measurer, after the
measurer's own start-up check; `forward_passes` is in teacher forwards over all rows.

    python bench/plan_optimal.py [demo] [17-block] [--rows 16] [--seq 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "recipes" / "assets" / "tiny-teacher"
KEEP = "keep 0, 2..34 step 2, 35"


def timed_search(compiled, teacher, student, rows, device) -> dict:
    import torch

    from surgery.planning import optimal
    from surgery.planning.measure import Measurer

    m = Measurer(teacher.to(device), student.to(device), compiled.graph, rows)
    m.passes = 0.0
    start = time.perf_counter()
    found = optimal.search(compiled.graph, m.kl)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    sizes = found.sizes
    return {"student_layers": compiled.graph.n_student, "patchable": len(compiled.graph.patchable),
            "subsets": 2 ** compiled.graph.n_student, "sizes": len(sizes),
            "sizes_all_measured": sum(s.exhaustive for s in sizes), "models_measured": found.models,
            "forward_passes": round(m.passes, 2), "seconds": round(seconds, 1),
            "rows": list(rows.shape), "picks_not_the_model_best": sum(s.rank > 1 for s in sizes),
            "largest_pick_rank": max(s.rank for s in sizes)}


def demo(args) -> dict:
    import torch

    from surgery.compile import compile_file
    from surgery.planning import models

    compiled = compile_file(REPO / "recipes" / "tiny.boom")
    reason = models.missing(compiled)
    if reason:
        sys.exit(f"error: the demo case needs {reason}")
    loaded = models.load(compiled, args.device)
    rows = torch.cat(loaded.measurer.batches).cpu()
    return timed_search(compiled, loaded.teacher, loaded.student, rows, loaded.measurer.device.type)


def seventeen(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from planning_student import save_student

    from surgery.compile import compile_file

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        config = json.loads((TEACHER / "config.json").read_text())
        config.update(num_hidden_layers=36, layer_types=["full_attention"] * 36)
        torch.manual_seed(0)
        (d / "teacher").mkdir()
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        model.save_pretrained(d / "teacher")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (d / "teacher" / name).write_bytes((TEACHER / name).read_bytes())
        (d / "r.boom").write_text(f'boom 1\nteacher "teacher" {{ dtype fp32 }}\nstudent "student" {{ {KEEP} }}\n'
                                  'patch {\n order optimal\n calibration text "c/*.txt"\n}\n')
        compiled = compile_file(d / "r.boom")
        save_student(d / "teacher", compiled.graph, d / "student", noise=0.02)
        load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
        rows = torch.randint(0, config["vocab_size"], (args.rows, args.seq), generator=torch.Generator().manual_seed(0))
        device = "cuda" if args.device == "cuda" else "cpu"
        return timed_search(compiled, load(d / "teacher"), load(d / "student"), rows, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", default=["demo", "17-block"], choices=["demo", "17-block"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    out = {"machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 1),
                       "python": platform.python_version()}}
    for case in args.cases:
        out[case] = demo(args) if case == "demo" else seventeen(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
