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
    ppl = [m["scores"]["perplexity"] for m in models]
    gains = [1 - m["scores"]["perplexity"] / m["naive"]["scores"]["perplexity"]
             for m in models if m["kind"] == "interpolated" and m.get("naive")]
    return {
        "perplexity_falls_with_size": all(b <= a * (1 + SMOOTH) for a, b in zip(ppl, ppl[1:])),
        "worst_gain_over_naive_pruning": min(gains) if gains else None,
    }


def _fmt(v: float | None, metric: str) -> str:
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
            cells += [_fmt(value(m["scores"], metric), metric),
                      _fmt(value((m.get("naive") or {}).get("scores"), metric), metric)]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    cols = metrics(evaluation)
    models = ordered(evaluation)
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(5.2 * max(len(cols), 1), 4), squeeze=False)
    for ax, metric in zip(axes[0], cols):
        ours = [(m["params"] / 1e6, value(m["scores"], metric), m["kind"]) for m in models]
        ours = [p for p in ours if p[1] is not None]
        ax.plot([p[0] for p in ours], [p[1] for p in ours], color="black", linestyle="-", marker="o",
                markersize=5, label="student + interpolated (no training)")
        naive = [(m["params"] / 1e6, value((m.get("naive") or {}).get("scores"), metric)) for m in models]
        # With no layers dropped, naive pruning is the teacher: the baseline curve ends there.
        naive += [(x, y) for x, y, kind in ours if kind == "teacher"]
        naive = [p for p in naive if p[1] is not None]
        if naive:
            ax.plot([p[0] for p in naive], [p[1] for p in naive], color="0.45", linestyle="--", marker="x",
                    markersize=6, label="naive pruning (teacher, layers dropped)")
        for kind, marker, size in (("student", "s", 9), ("teacher", "*", 14)):
            for x, y, k in ours:
                if k == kind:
                    ax.plot([x], [y], linestyle="none", marker=marker, markersize=size, markerfacecolor="white",
                            markeredgecolor="black", markeredgewidth=1.5, label=kind)
        if metric == "perplexity":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("parameters (M; an untied head counts apart from the embeddings)")
        ax.set_ylabel(metric_label(evaluation, metric) + (" (lower is better)" if metric == "perplexity" else ""))
        ax.grid(True, color="0.85", linewidth=0.6)
        ax.legend(fontsize=8)
    fig.suptitle(f"Boomerang distillation: {Path(evaluation['recipe']).name}", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
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
