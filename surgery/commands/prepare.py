"""`surgery prepare RECIPE`: tokenise the distill block's data once, into the token cache."""

from __future__ import annotations

HELP = "tokenise the distill data once into the shared token cache (all cores; resumable)"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--workers", type=int, metavar="N", help="tokenizer processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.errors import SurgeryError
    from surgery.stages import Context, prepare

    if args.workers is not None and args.workers < 1:
        raise SurgeryError(f"--workers {args.workers}: needs at least one", hint="e.g. --workers 4")
    ctx = Context(compile_file(args.recipe))
    for directory in prepare.run(ctx, workers=args.workers, progress=not args.no_progress):
        print(directory)
    return 0
