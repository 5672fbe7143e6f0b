"""Drawings of the layer graph: Graphviz DOT and Mermaid text, and SVG or PNG via matplotlib.

Teacher and student are two groups of nodes; edges keep the graph's kinds: forward `flow`
(split here into flow within a model and *crossings* at block boundaries), `replaces`
(student layer -> its teacher block), `init` (weight copy) and `aligns` (a pair of the
cosine loss, labelled with its hidden-state indices).
"""

from __future__ import annotations

from surgery.graph import STUDENT, TEACHER, LayerGraph, node
from surgery.layout import layer_ranges


def _label(name: str) -> str:
    """Node label: 'T.L3' -> 't3', 'S.embed' -> 'embed'."""
    side, what = name.split(".")
    return f"{side.lower()}{what[1:]}" if what.startswith("L") else what


_DOT_STYLE = {
    "flow": "color=black",
    "crossing": "color=gray75, style=dashed, constraint=false",
    "replaces": "color=gray50, style=dotted, arrowhead=none, constraint=false",
    "init": "color=blue, constraint=false",
    "aligns": "color=red, style=dashed, constraint=false",
}


def _edge_kind(u: str, v: str, key: str) -> str:
    """The edge's key, with `flow` from one model to the other told apart as a crossing."""
    return "crossing" if key == "flow" and u[0] != v[0] else key


def to_dot(graph: LayerGraph, title: str) -> str:
    """Graphviz DOT text of the layer graph; edge `class` names the edge kind."""
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    out = [f"digraph {q(title)} {{", "  rankdir=BT;", '  node [shape=box, fontname="Helvetica"];']
    for side, prefix in (("teacher", "T"), ("student", "S")):
        out.append(f"  subgraph cluster_{side} {{")
        out.append(f"    label={q(side)};")
        for n, attrs in graph.graph.nodes(data=True):
            if n.startswith(prefix + "."):
                label = _label(n) + (f"\\n← {layer_ranges(attrs['block'])}" if "block" in attrs else "")
                out.append(f"    {q(n)} [label=\"{label}\"];")
        out.append("  }")
    for u, v, key, attrs in graph.graph.edges(keys=True, data=True):
        kind = _edge_kind(u, v, key)
        extra = f", label=\"{attrs['hidden'][0]}↔{attrs['hidden'][1]}\"" if key == "aligns" else ""
        out.append(f"  {q(u)} -> {q(v)} [class={kind}, {_DOT_STYLE[kind]}{extra}];")
    out.append("}")
    return "\n".join(out) + "\n"


_MERMAID_ARROW = {"flow": "-->", "crossing": "-.->", "replaces": "-.-", "init": "==>", "aligns": "-.->"}


def to_mermaid(graph: LayerGraph, title: str) -> str:
    """A Mermaid flowchart of the layer graph (GitHub renders it inside a ```mermaid fence)."""
    ident = lambda n: n.replace(".", "_")  # noqa: E731
    out = [f"%% layer graph of {title}", "%% --> forward, -.-> crossing at a block boundary or aligned pair "
           "(labelled), -.- replaces, ==> init (weight copy)", "flowchart BT"]
    for side, prefix in (("teacher", "T"), ("student", "S")):
        out.append(f"  subgraph {side}")
        for n, attrs in graph.graph.nodes(data=True):
            if n.startswith(prefix + "."):
                block = f" ← {layer_ranges(attrs['block'])}" if "block" in attrs else ""
                out.append(f'    {ident(n)}["{_label(n)}{block}"]')
        out.append("  end")
    for u, v, key, attrs in graph.graph.edges(keys=True, data=True):
        arrow = _MERMAID_ARROW[_edge_kind(u, v, key)]
        label = f"|{attrs['hidden'][0]}↔{attrs['hidden'][1]}|" if key == "aligns" else ""
        out.append(f"  {ident(u)} {arrow}{label} {ident(v)}")
    return "\n".join(out) + "\n"


def _positions(graph: LayerGraph) -> dict[str, tuple[float, float]]:
    """Teacher on top, student below with each layer centred under its block; embed left, final right."""
    pos = {}
    for name, attrs in graph.graph.nodes(data=True):
        y = 1.0 if name.startswith("T.") else 0.0
        if attrs["kind"] == "embed":
            x = 0.0
        elif attrs["kind"] == "final":
            x = graph.n_teacher + 1.0
        elif "block" in attrs:
            x = sum(attrs["block"]) / len(attrs["block"]) + 1
        else:
            x = attrs["index"] + 1.0
        pos[name] = (x, y)
    return pos


def draw(graph: LayerGraph, fmt: str, title: str) -> str | bytes:
    """The layer graph drawn with matplotlib: SVG text or PNG bytes."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Polygon

    pos = _positions(graph)
    width = max(8.0, 0.42 * (graph.n_teacher + 2))
    fig = Figure(figsize=(width, 3.2))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(f"layer graph of {title}: teacher {graph.n_teacher} layers, student {graph.n_student}",
                 fontsize=10)
    # `replaces`: each student layer's teacher block, drawn as a band between them.
    for b in graph.blocks:
        (sx, sy), xs = pos[node(STUDENT, b.student)], [pos[node(TEACHER, t)][0] for t in b.teacher]
        band = [(sx - 0.15, sy + 0.1), (min(xs) - 0.35, 0.9), (max(xs) + 0.35, 0.9), (sx + 0.15, sy + 0.1)]
        ax.add_patch(Polygon(band, closed=True, color="0.85" if b.student % 2 else "0.75", zorder=0, lw=0))
    style = {
        "flow": dict(color="black", lw=1.0, ls="-", rad=0.0),
        "crossing": dict(color="0.6", lw=0.5, ls=":", rad=0.0),
        "init": dict(color="tab:blue", lw=1.0, ls="-", rad=0.25),
        "aligns": dict(color="tab:red", lw=0.9, ls="--", rad=-0.25),
    }
    for u, v, key in graph.graph.edges(keys=True):
        kind = _edge_kind(u, v, key)
        if kind == "replaces":
            continue
        s = style[kind]
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], arrowstyle="-|>", mutation_scale=7, color=s["color"],
                                     lw=s["lw"], ls=s["ls"], connectionstyle=f"arc3,rad={s['rad']}",
                                     shrinkA=7, shrinkB=7, zorder=1))
    for name, (x, y) in pos.items():
        ax.text(x, y, _label(name), ha="center", va="center", fontsize=6, zorder=2,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.3", lw=0.6))
    ax.text(-0.8, 1.0, "teacher", ha="right", va="center", fontsize=8)
    ax.text(-0.8, 0.0, "student", ha="right", va="center", fontsize=8)
    ax.set_xlim(-2.2, graph.n_teacher + 2)
    ax.set_ylim(-0.35, 1.35)
    ax.legend(handles=[Line2D([], [], color="black", label="forward"),
                       Line2D([], [], color="0.6", ls=":", label="crossing at a block boundary"),
                       Line2D([], [], color="tab:blue", label="init (copied from)"),
                       Line2D([], [], color="tab:red", ls="--", label="aligned pair (cosine loss)"),
                       Polygon([(0, 0)], color="0.8", label="block it replaces")],
              loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=5, fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=150,
                metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue().decode() if fmt == "svg" else buf.getvalue()
