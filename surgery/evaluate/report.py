"""The report: results.json, results.md (one row per model) and curve.png (quality against size).

It renders an evaluation record, the plain-JSON dict the evaluate stage writes:

    {"recipe": str, "teacher": str, "dtype": "bf16",
     "perplexity": {"files": [...], "seq": int, "stride": int} | None,
     "tasks": [task, ...],
     "models": [{"name", "kind": "student" | "interpolated" | "teacher", "depth", "patched": [int],
                 "params", "bytes", "dir", "scores": {"perplexity", "tokens", "tasks": {task: {metric: value}}},
                 "naive": {"dir", "scores"} | None}, ...]}

`naive` is the naive-pruning baseline of the same size: the teacher with the same layers
dropped and no training. Rows are sorted by depth (then parameters): the order of patching.
An interpolated model whose embeddings and head come from different sides is untied, so it
can hold more parameters than the tied teacher.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from surgery.durable import write_atomic
from surgery.evaluate.lmeval import primary_metric
from surgery.recipe.units import format_bytes, format_count

SMOOTH = 0.02  # a step counts as "not worse" when within 2% of its smaller neighbour


def ordered(evaluation: dict) -> list[dict]:
    return sorted(evaluation["models"], key=lambda m: (m["depth"], m["params"]))


def metrics(evaluation: dict) -> list[str]:
    """The report's quality columns: perplexity first, then each task's headline metric."""
    return (["perplexity"] if evaluation.get("perplexity") else []) + list(evaluation.get("tasks", []))


def value(scores: dict | None, metric: str) -> float | None:
    if not scores:
        return None
    if metric == "perplexity":
        return scores.get("perplexity")
    found = primary_metric(scores.get("tasks", {}).get(metric, {}))
    return found[1] if found else None


def metric_label(evaluation: dict, metric: str) -> str:
    if metric == "perplexity":
        return "perplexity"
    for model in evaluation["models"]:
        found = primary_metric(model["scores"].get("tasks", {}).get(metric, {}))
        if found:
            return f"{metric} {found[0]}"
    return metric


def summary(evaluation: dict) -> dict:
    """The boomerang claims, checked on perplexity: it falls as layers are patched, and every
    interpolated model beats naive pruning of the same size."""
    if not evaluation.get("perplexity"):
        return {}
    models = ordered(evaluation)
    # A model without a score (a record `surgery compare` reads may lack one) drops out of the checks.
    ppl = [p for p in (value(m["scores"], "perplexity") for m in models) if p is not None]
    pairs = [(value(m["scores"], "perplexity"), value((m.get("naive") or {}).get("scores"), "perplexity"))
             for m in models if m["kind"] == "interpolated"]
    gains = [1 - ours / naive for ours, naive in pairs if ours is not None and naive is not None]
    return {
        "perplexity_falls_with_size": all(b <= a * (1 + SMOOTH) for a, b in zip(ppl, ppl[1:])),
        "worst_gain_over_naive_pruning": min(gains) if gains else None,
    }


def format_score(v: float | None, metric: str) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if metric == "perplexity" else f"{v:.3f}"


def markdown(evaluation: dict) -> str:
    cols = metrics(evaluation)
    header = ["model", "layers", "patched", "params", f"size ({evaluation.get('dtype', '')})"]
    for metric in cols:
        label = metric_label(evaluation, metric)
        header += [label, f"{label}, naive pruning"]
    lines = [f"# Results: {evaluation['recipe']}", ""]
    ppl = evaluation.get("perplexity")
    if ppl:
        lines.append(f"Perplexity: {len(ppl['files'])} held-out files, windows of {ppl['seq']} tokens "
                     f"sliding by {ppl['stride']}. Naive pruning: the teacher with the same layers dropped, "
                     f"no training.")
        lines.append("")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in ordered(evaluation):
        patched = "all" if m["kind"] == "teacher" else ",".join(f"s{i}" for i in m["patched"]) or "none"
        cells = [m["name"], str(m["depth"]), patched, format_count(m["params"]), format_bytes(m["bytes"])]
        for metric in cols:
            cells += [format_score(value(m["scores"], metric), metric),
                      format_score(value((m.get("naive") or {}).get("scores"), metric), metric)]
        lines.append("| " + " | ".join(cells) + " |")
    facts = summary(evaluation)
    if facts:
        gain = facts["worst_gain_over_naive_pruning"]
        lines += ["", f"- Perplexity falls from student to teacher (within {SMOOTH:.0%} between neighbours): "
                      f"{'yes' if facts['perplexity_falls_with_size'] else 'no'}."]
        if gain is not None:
            lines.append(f"- Every interpolated model's perplexity is at least {gain:.0%} below naive pruning's "
                         f"at the same size.")
    return "\n".join(lines) + "\n"


def plot(evaluation: dict) -> bytes:
    """curve.png: one panel per metric, quality against parameters; black-and-white safe."""
    plt = pyplot()
    cols = metrics(evaluation)
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(5.2 * max(len(cols), 1), 4), squeeze=False)
    for ax, metric in zip(axes[0], cols):
        ours = curve(evaluation, metric)
        draw_curve(ax, ours, label="student + interpolated (no training)")
        draw_naive(ax, naive_curve(evaluation, metric), label="naive pruning (teacher, layers dropped)")
        for kind in ("student", "teacher"):
            draw_marks(ax, [(x, y) for x, y, k in ours if k == kind], kind, label=kind)
        style_axis(ax, metric, metric_label(evaluation, metric))
    fig.suptitle(f"Boomerang distillation: {Path(evaluation['recipe']).name}", fontsize=11)
    return render(fig, "png")


# The pieces of a curve plot; `surgery compare` draws several runs with them.
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve(evaluation: dict, metric: str) -> list[tuple[float, float, str]]:
    """(parameters in M, score, kind) of the student, the interpolated models and the teacher."""
    points = [(m["params"] / 1e6, value(m["scores"], metric), m["kind"]) for m in ordered(evaluation)]
    return [p for p in points if p[1] is not None]


def naive_curve(evaluation: dict, metric: str) -> list[tuple[float, float]]:
    """(parameters in M, score) of naive pruning at each size, ending at the teacher."""
    points = [(m["params"] / 1e6, value((m.get("naive") or {}).get("scores"), metric)) for m in ordered(evaluation)]
    points = [p for p in points if p[1] is not None]
    # With no layers dropped, naive pruning is the teacher: the baseline curve ends there.
    return points + [(x, y) for x, y, kind in curve(evaluation, metric) if kind == "teacher"] if points else []


def draw_curve(ax, points, *, label: str, color="black", marker="o", linestyle="-") -> None:
    ax.plot([p[0] for p in points], [p[1] for p in points], color=color, linestyle=linestyle, marker=marker,
            markersize=5, label=label)


def draw_naive(ax, points, *, label: str, color="0.45") -> None:
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color=color, linestyle="--", marker="x",
                markersize=6, label=label)


MARKS = {"student": ("s", 9), "teacher": ("*", 14)}


def draw_marks(ax, points, kind: str, *, label: str | None, color="black") -> None:
    """Open markers over the curve: a square for the student, a star for the teacher. With no
    points and a label, a legend entry alone."""
    marker, size = MARKS[kind]
    ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="none", marker=marker, markersize=size,
            markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.5, label=label)


def style_axis(ax, metric: str, label: str) -> None:
    from matplotlib.ticker import FormatStrFormatter

    if metric == "perplexity":
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("parameters (M; an untied head counts apart from the embeddings)")
    ax.set_ylabel(label + (" (lower is better)" if metric == "perplexity" else ""))
    ax.grid(True, color="0.85", linewidth=0.6)
    ax.legend(fontsize=8)


def render(fig, fmt: str) -> bytes:
    """The figure as `fmt` ("png" or "svg") bytes; closes it."""
    fig.tight_layout()
    buf = io.BytesIO()
    # No date in the SVG, so the same figure gives the same bytes.
    fig.savefig(buf, format=fmt, dpi=130, **({"metadata": {"Date": None}} if fmt == "svg" else {}))
    pyplot().close(fig)
    return buf.getvalue()


def write(evaluation: dict, out_dir: Path) -> list[Path]:
    """Write results.json, results.md and curve.png into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(evaluation, summary=summary(evaluation))
    paths = [out_dir / "results.json", out_dir / "results.md"]
    write_atomic(paths[0], json.dumps(results, indent=2) + "\n")
    write_atomic(paths[1], markdown(evaluation))
    if metrics(evaluation):
        paths.append(out_dir / "curve.png")
        write_atomic(paths[2], plot(evaluation))
    return paths
