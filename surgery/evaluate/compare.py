"""Several runs as one figure and one table: `surgery compare` (docs/pipeline.md).

It reads the evaluation record each run already wrote (`evaluation/evaluation.json` in the run directory;
surgery.evaluate.report gives its schema) and never scores anything. A run is named by its
recipe, resolved to its run directory as `surgery run` does, or by the directory itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from surgery import artifact, durable, outputs
from surgery.errors import SurgeryError
from surgery.evaluate import report
from surgery.recipe.units import format_count

RESULTS = "results.json"  # what report/ holds: the evaluation record plus its summary

# One style per run, told apart by marker and dash as well as colour, so print in grey still reads.
COLORS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
MARKERS = ("o", "^", "D", "v", "P", "X", "h")
DASHES = ("-", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2)))


@dataclass(frozen=True)
class Run:
    label: str  # the recipe's or the directory's name, as the table and the legend show it
    path: Path  # the evaluation record it was read from
    evaluation: dict


def load(arguments: list[str]) -> list[Run]:
    """Each argument's evaluation record. A run without one is an error naming every such run."""
    found, lacking = [], []
    for argument in arguments:
        candidates, name = _record_paths(argument)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            lacking.append(f"{argument} (no {candidates[0]})")
            continue
        try:
            evaluation = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SurgeryError(f"cannot read the evaluation record {path}: {err}") from None
        if not isinstance(evaluation, dict) or not isinstance(evaluation.get("models"), list):
            raise SurgeryError(f"{path} is not an evaluation record (no `models` list)")
        found.append((argument, name, path, evaluation))
    if lacking:
        raise SurgeryError("no evaluation for " + ", ".join(lacking),
                           hint="run `surgery run RECIPE` (or `surgery evaluate RECIPE`) first")
    names = [name for _, name, _, _ in found]
    # Two runs of the same name (runs/a/demo, runs/b/demo) are told apart by what was typed.
    return [Run(name if names.count(name) == 1 else argument, path, evaluation)
            for argument, name, path, evaluation in found]


def _record_paths(argument: str) -> tuple[list[Path], str]:
    """Where the evaluation record a recipe or a directory names would be, and the run's label."""
    from surgery.stages.evaluate import EVALUATION, in_run

    given = Path(argument)
    if given.is_dir():
        # A run directory, or a report folder (its results.json is the same record).
        candidates, name = [in_run(given) / EVALUATION, given / RESULTS], given.resolve().name
    elif given.is_file():
        from surgery.compile import compile_file

        candidates, name = [in_run(compile_file(given).run_dir) / EVALUATION], given.stem
    else:
        raise SurgeryError(f"no recipe or run directory {argument}",
                           hint="give .boom recipes or the run directories their evaluation.json is in")
    return candidates, name


def metrics(runs: list[Run]) -> list[str]:
    """Every metric some run has: perplexity first, then tasks in the order they first appear."""
    out: list[str] = []
    for run in runs:
        out += [m for m in report.metrics(run.evaluation) if m not in out]
    return sorted(out, key=lambda m: m != "perplexity")


def metric_label(runs: list[Run], metric: str) -> str:
    """The column's name: the task's headline metric, as the first run that has it names it."""
    labels = [report.metric_label(r.evaluation, metric) for r in runs if metric in report.metrics(r.evaluation)]
    return next((label for label in labels if label != metric), metric)


def missing(runs: list[Run]) -> list[str]:
    """One line per thing a run lacks: a metric another run has, a score, the baseline, the teacher."""
    lines = []
    wanted = metrics(runs)
    settings = {r.label: _perplexity_setting(r.evaluation) for r in runs if r.evaluation.get("perplexity")}
    for run in runs:
        ev, own = run.evaluation, report.metrics(run.evaluation)
        models = report.ordered(ev)
        lines += [f"{run.label}: no {metric_label(runs, m)} (its evaluate block does not ask for it)"
                  for m in wanted if m not in own]
        for m in own:
            lines += [f"{run.label}: {model['name']} has no {metric_label(runs, m)} score"
                      for model in models if report.value(model["scores"], m) is None]
        if not any(m["kind"] == "teacher" for m in models):
            lines.append(f"{run.label}: no teacher among its models")
        shrunk = [m for m in models if m["kind"] != "teacher"]
        if shrunk and not any(m.get("naive") for m in shrunk):
            lines.append(f"{run.label}: no naive-pruning baseline (`baseline naive_pruning` in its evaluate block)")
        for m in own:
            lines += [f"{run.label}: naive pruning at {model['name']} has no {metric_label(runs, m)} score"
                      for model in shrunk
                      if model.get("naive") and report.value(model["naive"].get("scores"), m) is None]
        if run.label in settings and len(set(settings.values())) > 1:
            lines.append(f"{run.label}: perplexity on other text or windows than another run "
                         f"({settings[run.label]}), so its numbers do not compare")
    return lines


def _perplexity_setting(evaluation: dict) -> str:
    ppl = evaluation["perplexity"]
    return f"{len(ppl['files'])} files, seq {ppl['seq']}, stride {ppl['stride']}"


def markdown(runs: list[Run]) -> str:
    """A summary row per run, then one row per run and size with every metric and its baseline."""
    cols = metrics(runs)
    lines = ["# Comparison: " + ", ".join(r.label for r in runs), ""]
    settings = sorted({_perplexity_setting(r.evaluation) for r in runs if r.evaluation.get("perplexity")})
    if len(settings) == 1:
        lines += [f"Perplexity: {settings[0]}, as each run's evaluation record gives it. Naive pruning: the "
                  f"teacher with the same layers dropped, no training. Read from the runs, not recomputed.", ""]
    lines += ["| run | recipe | student layers | sizes | perplexity falls with size | "
              "worst margin over naive pruning |", "|---|---|---|---|---|---|"]
    for run in runs:
        facts, models = report.summary(run.evaluation), report.ordered(run.evaluation)
        falls = facts.get("perplexity_falls_with_size")
        gain = facts.get("worst_gain_over_naive_pruning")
        student = next((str(m["depth"]) for m in models if m["kind"] == "student"), "—")
        lines.append(f"| {run.label} | {run.evaluation.get('recipe', '—')} | {student} | "
                     f"{', '.join(str(m['depth']) for m in models)} | "
                     f"{'—' if falls is None else 'yes' if falls else 'no'} | "
                     f"{'—' if gain is None else f'{gain:.1%}'} |")
    header = ["run", "model", "layers", "patched", "params"]
    for metric in cols:
        label = metric_label(runs, metric)
        header += [label, f"{label}, naive pruning"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        for m in report.ordered(run.evaluation):
            patched = "all" if m["kind"] == "teacher" else ",".join(f"s{i}" for i in m["patched"]) or "none"
            cells = [run.label, m["name"], str(m["depth"]), patched, format_count(m["params"])]
            for metric in cols:
                cells += [report.format_score(report.value(m["scores"], metric), metric),
                          report.format_score(report.value((m.get("naive") or {}).get("scores"), metric), metric)]
            lines.append("| " + " | ".join(cells) + " |")
    gaps = missing(runs)
    if gaps:
        lines += ["", "Missing:", ""] + [f"- {line}" for line in gaps]
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], fmt: str) -> bytes:
    """Perplexity against parameters: a line per run, its naive-pruning baseline dashed, the
    student a square and the teacher a star. Runs with the same baseline share one dashed line."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    baselines: dict[tuple, list[int]] = {}  # naive-pruning curve -> the runs that have it
    for i, run in enumerate(runs):
        points = report.curve(run.evaluation, "perplexity")
        if not points:  # `missing` says so
            continue
        color = COLORS[i % len(COLORS)]
        report.draw_curve(ax, points, label=run.label, color=color, marker=MARKERS[i % len(MARKERS)],
                          linestyle=DASHES[i % len(DASHES)])
        report.draw_marks(ax, [(x, y) for x, y, k in points if k == "student"], "student", label=None, color=color)
        baselines.setdefault(tuple(report.naive_curve(run.evaluation, "perplexity")), []).append(i)
    baselines.pop((), None)
    for points, members in baselines.items():
        names = ", ".join(runs[i].label for i in members)
        report.draw_naive(ax, list(points), label=f"naive pruning ({names})",
                          color=COLORS[members[0] % len(COLORS)] if len(baselines) > 1 else "0.45")
    teachers = {(x, y) for run in runs for x, y, k in report.curve(run.evaluation, "perplexity") if k == "teacher"}
    report.draw_marks(ax, [], "student", label="student")  # the legend's, in black: each run has its own
    report.draw_marks(ax, sorted(teachers), "teacher", label="teacher")
    report.style_axis(ax, "perplexity", "perplexity")
    fig.suptitle("Boomerang distillation: " + ", ".join(r.label for r in runs), fontsize=11)
    return report.render(fig, fmt)


def write(runs: list[Run], out_dir: Path) -> list[Path]:
    """compare.md, and compare.png and compare.svg when some run has perplexity, with a manifest, as
    the folder `out_dir`, swapped into place whole; their paths. A folder already there that is not
    empty and not one `surgery compare` wrote is refused, not replaced."""
    out_dir = Path(out_dir)
    outputs.check_own_folder(out_dir, "compare", "the compare folder", hint="give --out a new or empty folder")
    files = {"compare.md": markdown(runs)}
    if "perplexity" in metrics(runs):
        files.update({f"compare.{fmt}": plot(runs, fmt) for fmt in ("png", "svg")})
    made = artifact.manifest("compare", recipe_path=None, recipe_sha256=None,
                             inputs={"runs": [str(run.path) for run in runs]})
    with durable.rewrite(out_dir) as tmp:
        for name, data in {**files, artifact.MANIFEST: json.dumps(made, indent=1) + "\n"}.items():
            durable.write_atomic(tmp / name, data)
    return [out_dir / name for name in files]
