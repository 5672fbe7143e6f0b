"""`surgery compare RUN_OR_RECIPE...`: several runs' results as one figure and one table."""

from __future__ import annotations

HELP = "overlay the results of several runs (recipes or run directories); reads them, computes nothing"


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_OR_RECIPE",
                        help="a .boom recipe (its run directory is read) or a run or report directory")
    parser.add_argument("--out", metavar="DIR",
                        help="write compare.md, compare.png and compare.svg here (default: print the table only)")


def run(args) -> int:
    import sys

    from surgery.evaluate import compare

    runs = compare.load(args.runs)
    for line in compare.missing(runs):
        print(f"note: {line}", file=sys.stderr)
    if args.out:
        for path in compare.write(runs, args.out):
            print(f"wrote {path}", file=sys.stderr)
    print(compare.markdown(runs), end="")
    return 0
