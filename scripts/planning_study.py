"""The planning study: every patched subset measured, against what each order picks.

    python scripts/planning_study.py recipes/tiny.boom [--out docs/planning] [--device cpu]

Needs the recipe's teacher weights, its distilled student (`surgery init-student` then
`surgery distill`), a `calibration` line in its patch block and held-out text (the recipe's
`perplexity text`, or --heldout). For every subset of student layers it measures KL to the
teacher on the calibration rows, and KL and perplexity on held-out rows. Then, per size step, it
reports the model each method picks and the exhaustive best by calibration KL. The methods are
the four orders (last_to_first, first_to_last, klpatch, optimal with its default settings),
`optimal` with `exhaustive 0` (reranking the additive model's 8 cheapest sets of each size only),
and `additive`: the additive model's own best, which is what `optimal` picked before it measured
its candidates. The measured methods choose from calibration KL only, never from held-out
numbers; they are also run live on fresh measurers, to check their picks and count their cost.

Writes study.json, study-kl.png and study-ppl.png to --out, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
from pathlib import Path

from surgery.compile import compile_file, compile_recipe
from surgery.errors import SurgeryError
from surgery.planning import costs, dag, models, optimal
from surgery.planning.calibration import token_rows
from surgery.planning.choose import ORDERS, Candidate, best_per_step, layers_text, menu, searched
from surgery.planning.plot import size_curves
from surgery.recipe.ast import Calibration
from surgery.schedule import step_of

MAX_STUDENT = 12  # 2^12 subsets is the most this script will walk
RERANK = "optimal_exhaustive_0"  # optimal measuring only the model's cheapest sets
METHODS = (*ORDERS, RERANK, "additive", "exhaustive")
LABELS = {RERANK: "optimal, exhaustive 0", "additive": "additive only"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--out", default="docs/planning")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--heldout", help="held-out text glob (default: the recipe's perplexity text)")
    ap.add_argument("--heldout-samples", type=int, default=64)
    ap.add_argument("--student", help="a student directory to use instead of the recipe's (e.g. a snapshot)")
    args = ap.parse_args(argv)
    try:
        study(args)
    except SurgeryError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def study(args) -> None:
    compiled = compile_file(args.recipe)
    if args.student:
        student = dataclasses.replace(compiled.recipe.student, path=str(Path(args.student).resolve()))
        compiled = compile_recipe(dataclasses.replace(compiled.recipe, student=student))
    recipe, graph = compiled.recipe, compiled.graph
    reason = models.missing(compiled)
    if reason:
        raise SurgeryError(f"cannot run the study: {reason}")
    if graph.n_student > MAX_STUDENT or len(graph.patchable) > 8:
        raise SurgeryError(f"the student has {graph.n_student} layers ({len(graph.patchable)} patchable); "
                           f"the study walks every subset and takes at most {MAX_STUDENT} layers, 8 patchable")
    heldout = args.heldout or (recipe.evaluate.perplexity.text if recipe.evaluate and recipe.evaluate.perplexity
                               else None)
    if heldout is None:
        raise SurgeryError("no held-out text: the recipe has no `perplexity text`", hint="pass --heldout GLOB")

    loaded = models.load(compiled, args.device, dtype="fp32")
    cal = loaded.measurer
    held_rows = token_rows(recipe, Calibration(heldout, args.heldout_samples, recipe.patch.calibration.seq),
                           loaded.tokenizer)
    held = type(cal)(loaded.teacher, loaded.student, graph, held_rows)
    n = graph.n_student
    subsets = [frozenset(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)]
    print(f"measuring {len(subsets)} subsets on {tuple(cal.batches[0].shape)}-row batches ...", file=sys.stderr)
    cal_scores = dict(zip(subsets, cal.scores(subsets)))
    held_scores = dict(zip(subsets, held.scores(subsets)))
    lookup = lambda sets: [cal_scores[frozenset(s)].kl for s in sets]  # noqa: E731

    picks = {o: best_per_step(menu(graph, o, lookup)) for o in ORDERS if o != "optimal"}
    searches = {"optimal": optimal.search(graph, lookup), RERANK: optimal.search(graph, lookup, exhaustive=0)}
    for name, found in searches.items():
        picks[name] = best_per_step(searched(found))
    picks["additive"] = additive_picks(graph, lookup)
    by_step: dict[int, list[frozenset]] = {}
    for s in subsets:
        by_step.setdefault(step_of(graph, s), []).append(s)
    exhaustive = {k: min(sets, key=lambda s: (cal_scores[s].kl, sorted(s))) for k, sets in by_step.items()}
    oracle = {k: min(sets, key=lambda s: (held_scores[s].nll, sorted(s))) for k, sets in by_step.items()}

    live = _live_costs(compiled, loaded, picks)
    live["exhaustive"] = {"models_measured": len(subsets)}
    model = costs.AdditiveCosts.from_measured(n, {s: cal_scores[s].kl for s in costs.probes(n)})
    fidelity = _fidelity(model, cal_scores, held_scores, by_step)

    def row(s):
        size = graph.size(graph.assemble(s))
        return {"patched": sorted(s), "depth": graph.assemble(s).depth, "params": size.params, "tied": size.tied,
                "kl": cal_scores[s].kl, "heldout_kl": held_scores[s].kl, "heldout_ppl": math.exp(held_scores[s].nll),
                "kl_rank": sorted(cal_scores[t].kl for t in by_step[step_of(graph, s)]).index(cal_scores[s].kl) + 1}

    steps = {}
    for k in sorted(by_step):
        steps[k] = {"models": len(by_step[k]), **{o: row(picks[o][k].patched) for o in METHODS if o != "exhaustive"},
                    "exhaustive": row(exhaustive[k]), "heldout_oracle": row(oracle[k])}
    result = {
        "recipe": os.path.relpath(recipe.path), "teacher": recipe.teacher.source,
        "student": os.path.relpath(compiled.student_dir),
        "blocks": [list(b.teacher) for b in graph.blocks], "patchable": list(graph.patchable),
        "calibration": {**loaded.info, "text": recipe.patch.calibration.text},
        "heldout": {"text": heldout, "rows": held_rows.shape[0], "seq": held_rows.shape[1]},
        "subsets": len(subsets), "steps": steps, "live": live, "additive_model": fidelity,
        "searches": {name: found.to_json() for name, found in searches.items()},
        "all": [{"patched": sorted(s), "params": graph.size(graph.assemble(s)).params, "kl": cal_scores[s].kl,
                 "heldout_ppl": math.exp(held_scores[s].nll)} for s in subsets],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=1) + "\n")
    methods = [m for m in METHODS if m != RERANK]  # its line would hide under optimal's here
    for metric, ylabel, name in (("kl", None, "study-kl.png"), ("heldout_ppl", "held-out perplexity", "study-ppl.png")):
        curves = {LABELS.get(m, m): [(steps[k][m]["params"], steps[k][m][metric]) for k in sorted(steps)]
                  for m in methods}
        every = {"every subset": [(r["params"], r[metric]) for r in result["all"]]}
        kwargs = {"ylabel": ylabel} if ylabel else {}
        png = size_curves(curves, f"{Path(args.recipe).name}: {len(subsets)} subsets", extra=every, **kwargs)
        (out / name).write_bytes(png)
    print(markdown(result))


def additive_picks(graph, measure) -> dict[int, Candidate]:
    """The additive model's best of each step, by predicted cost: what `optimal` picked before it
    measured its candidates. It measures the model's 2M-1 probes only."""
    n = graph.n_student
    probes = costs.probes(n)
    model = costs.AdditiveCosts.from_measured(n, dict(zip(probes, measure(probes))))
    return best_per_step([Candidate(c.patched, step_of(graph, c.patched), c.cost)
                          for c in dag.choices(graph, model.edge)])


def _live_costs(compiled, loaded, picks) -> dict:
    """Run every measured method on a fresh measurer: its cost (the teacher, every method's
    reference, counts as one model), and the same picks as the lookup. The timed wall clock
    includes the measurer's start-up check."""
    import time

    import torch

    graph = compiled.graph
    rows = torch.cat(loaded.measurer.batches)
    methods = {
        "klpatch": lambda kl: best_per_step(menu(graph, "klpatch", kl)),
        "optimal": lambda kl: best_per_step(searched(optimal.search(graph, kl))),
        RERANK: lambda kl: best_per_step(searched(optimal.search(graph, kl, exhaustive=0))),
        "additive": lambda kl: additive_picks(graph, kl),
    }
    out = {}
    for name, run in methods.items():
        start = time.perf_counter()
        fresh = type(loaded.measurer)(loaded.teacher, loaded.student, graph, rows)
        fresh.passes = 0.0
        chosen = run(fresh.kl)
        out[name] = {"models_measured": fresh.measured, "forward_passes": round(fresh.passes, 2),
                     "seconds": round(time.perf_counter() - start, 1),
                     "same_picks_as_the_table": {k: c.patched for k, c in chosen.items()}
                     == {k: c.patched for k, c in picks[name].items()}}
    return out


def _fidelity(model, cal, held, by_step) -> dict:
    """How well the additive model predicts true calibration KL, over all subsets and within
    each step (where the planner ranks); and how well calibration KL ranks held-out perplexity."""
    def stats(sets):
        predicted, true = [model.total(s) for s in sets], [cal[s].kl for s in sets]
        out = {"mean_error": sum(p - t for p, t in zip(predicted, true)) / len(sets),
               "max_abs_error": max(abs(p - t) for p, t in zip(predicted, true))}
        if len(sets) > 2:
            out["spearman"] = _spearman(predicted, true)
            out["kl_vs_heldout_ppl_spearman"] = _spearman(true, [held[s].nll for s in sets])
        return out

    return {"all": stats([s for sets in by_step.values() for s in sets]),
            "by_step": {k: stats(sets) for k, sets in sorted(by_step.items())}}


def _spearman(a, b) -> float:
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        for pos, i in enumerate(order):
            r[i] = pos
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def markdown(result) -> str:
    """Tables: calibration KL / held-out perplexity (rank by KL within the step); the picks; each
    method's cost; and, per size, where the additive model ranked the measured best."""
    methods = [*METHODS, "heldout_oracle"]
    names = [LABELS.get(m, m) for m in methods]
    lines = ["| step | models | " + " | ".join(names) + " |", "|" + " ---: |" * (len(methods) + 2)]
    for k, step in result["steps"].items():
        cells = [f"{step[m]['kl']:.3f} / {step[m]['heldout_ppl']:.1f} (#{step[m]['kl_rank']})" for m in methods]
        lines.append(f"| {k} | {step['models']} | " + " | ".join(cells) + " |")
    lines += ["", "| step | " + " | ".join(names) + " |", "|" + " --- |" * (len(methods) + 1)]
    for k, step in result["steps"].items():
        cells = [f"{layers_text(step[m]['patched'])} ({step[m]['params'] / 1e6:.2f}M{'' if step[m]['tied'] else ' u'})"
                 for m in methods]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| method | models measured | forward passes | seconds | steps at the exhaustive best |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for m in METHODS:
        cost = result["live"].get(m, {"models_measured": 0})
        best = sum(step[m]["kl"] == step["exhaustive"]["kl"] for step in result["steps"].values())
        lines.append(f"| {LABELS.get(m, m)} | {cost['models_measured']} | {cost.get('forward_passes', '-')} | "
                     f"{cost.get('seconds', '-')} | {best} of {len(result['steps'])} |")
    lines += ["", "| size | sets | the additive model's #1: predicted / measured "
              "| the measured best: rank, predicted / measured |", "| --- | ---: | --- | --- |"]
    for size in result["searches"]["optimal"]["sizes"]:
        first, pick = size["candidates"][0], size["candidates"][size["pick_rank"] - 1]
        lines.append(f"| {size['depth']} layers, {size['params'] / 1e6:.2f}M{'' if size['tied'] else ' u'} "
                     f"(step {size['step']}) | {size['sets']} | {layers_text(first['patched'])}: "
                     f"{first['predicted']:.3f} / {first['kl']:.3f} | {layers_text(pick['patched'])}: "
                     f"#{size['pick_rank']}, {pick['predicted']:.3f} / {pick['kl']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
