"""`surgery plan RECIPE`: the patch schedule, with KL to the teacher where it can be measured."""

from __future__ import annotations

import sys

HELP = "print the patch schedule (sizes, patched sets, KL to the teacher) and write schedule.json and schedule.png"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--out", metavar="DIR",
                        help="where schedule.json and schedule.png go (default: RUN/schedule, beside the student)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compare", default=",".join(("last_to_first", "first_to_last", "klpatch", "optimal")),
                        metavar="ORDERS", help="orders to measure for the plot, comma-separated, or `none`")


def run(args) -> int:
    from pathlib import Path

    from surgery.compile import compile_file
    from surgery.errors import SurgeryError
    from surgery.planning.choose import ORDERS
    from surgery.stages import Context, plan

    ctx = Context(compile_file(args.recipe), device=args.device)
    compare = () if args.compare == "none" else tuple(o.strip() for o in args.compare.split(","))
    unknown = [o for o in compare if o not in ORDERS]
    if unknown:
        raise SurgeryError(f"unknown order `{unknown[0]}` in --compare", hint=f"orders: {', '.join(ORDERS)}")
    made, result = plan.run(ctx, compare=compare, out=Path(args.out) if args.out else None)
    print(_table(result))
    for path in sorted(made.path.iterdir()):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _table(result) -> str:
    from surgery.planning.choose import layers_text, optimal_report
    from surgery.recipe.units import format_bytes, format_count

    measured = any(e.kl is not None for e in result.steps)
    predicted = any(e.predicted is not None for e in result.steps)
    head = ["step", "patched", "depth", "params", "head", "bytes"] + ["KL"] * measured + ["predicted"] * predicted
    rows = [head]
    for e in result.steps:
        row = [str(e.step), layers_text(e.patched), str(e.depth),
               format_count(e.params), "tied" if e.tied else "untied", format_bytes(e.bytes)]
        row += [_number(e.kl)] * measured + [_number(e.predicted)] * predicted
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"{result.recipe}: order {result.order}, bytes in {result.dtype}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if result.note:
        lines.append(f"note: {result.note}; planned sizes only")
    elif result.calibration:
        c = result.calibration
        lines.append(f"KL per token on {c['rows']} x {c['seq']} calibration tokens ({c['text']}), {c['device']}, "
                     f"{c['passes']} forward passes")
    if result.optimal:
        lines += optimal_report(result.optimal)
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
