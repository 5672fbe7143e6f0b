"""KL to the teacher against parameters, one line per order, readable in black and white.

Each line joins an order's models in step order, so where a step unties the head (a tied
teacher whose embeddings and head come from different sides) the line steps back in size.
"""

from __future__ import annotations

import io

STYLES = [("-", "o", "0.0"), ("--", "s", "0.35"), (":", "^", "0.0"), ("-.", "D", "0.5"), ("-", "v", "0.6"),
          ("--", "x", "0.2")]


KL = "KL(teacher || model), nats per token"


def size_curves(curves: dict[str, list[tuple[float, float]]], title: str, ylabel: str = KL,
                extra: dict | None = None) -> bytes:
    """PNG bytes; `curves` maps an order to (params, value) points; `extra` adds grey points
    (e.g. every subset of a study) drawn behind the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max(p for points in curves.values() for p, _ in points)
    scale, unit = next((s, u) for s, u in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands"), (1, ""))
                       if largest >= s)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in (extra or {}).items():
        xs, ys = zip(*points)
        ax.scatter([x / scale for x in xs], ys, s=10, c="0.75", marker=".", label=name, zorder=1)
    for (name, points), (line, marker, grey) in zip(curves.items(), STYLES * 2):
        ax.plot([p / scale for p, _ in points], [k for _, k in points], linestyle=line, marker=marker, color=grey,
                markerfacecolor="white", label=name, zorder=2)
    ax.set_xlabel(f"parameters ({unit})" if unit else "parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(frameon=False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
