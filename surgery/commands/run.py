"""`surgery run RECIPE`: the whole pipeline, skipping what is done and resuming what was interrupted."""

from __future__ import annotations

HELP = "run check, init-student, prepare, distill, plan, emit, evaluate and report; rerun to resume"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    # Stage names are checked by surgery.pipeline, so that start-up does not import it.
    parser.add_argument("--from", dest="start", metavar="STAGE",
                        help="redo this stage and every later one: check, init-student, prepare, distill, plan, "
                             "emit, evaluate, report")
    parser.add_argument("--force", action="store_true", help="redo every stage")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.pipeline import run_pipeline

    compiled = compile_file(args.recipe)
    ran = run_pipeline(compiled, start=args.start, force=args.force)
    table = ran.ctx.report_dir / "results.md"
    if compiled.recipe.evaluate and table.is_file():
        print(table.read_text(), end="")
    return 0
