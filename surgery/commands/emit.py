"""`surgery emit RECIPE`: write every size of the patch schedule into the emit template."""

from __future__ import annotations

import sys

HELP = "write every size in the recipe's patch schedule to its `emit` path"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--force", action="store_true", help="replace outputs that exist and differ")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.materialize import emit

    compiled = compile_file(args.recipe)
    for out in emit(compiled, force=args.force):
        print(out)
    planned = sum(step.assembly is None for step in compiled.steps)
    if planned:
        print(f"surgery: skipped {planned} sizes whose layers `order {compiled.recipe.patch.order}` "
              "chooses by measurement; plan them first", file=sys.stderr)
    return 0
