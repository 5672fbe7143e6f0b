"""`surgery emit RECIPE`: write every size of the patch schedule into the emit template."""

from __future__ import annotations

HELP = "write every size in the recipe's patch schedule (the plan's, for a measured order) to its `emit` path"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--force", action="store_true", help="replace outputs that surgery made and that differ")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.stages import Context, emit

    made = emit.run(Context(compile_file(args.recipe)), force=args.force)
    for model in made.manifest["outputs"]["models"]:
        print(model["dir"])
    return 0
