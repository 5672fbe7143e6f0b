"""`surgery check RECIPE...`: parse and check recipes against their teachers' configs."""

from __future__ import annotations

import sys

HELP = "parse and check recipes (config only, no weights); exit 0 when clean"


def add_arguments(parser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.errors import SurgeryError

    failed = 0
    for path in args.recipes:
        try:
            compiled = compile_file(path)
        except SurgeryError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        g = compiled.graph
        print(f"{path}: ok: {g.n_teacher} -> {g.n_student} layers, {len(g.patchable)} patch steps, "
              f"{len(compiled.steps)} sizes")
    return 1 if failed else 0
