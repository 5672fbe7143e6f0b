"""`surgery prepare RECIPE`: tokenise the distill block's data once, into the token cache."""

from __future__ import annotations

HELP = "tokenise the distill data once into the shared token cache (all cores; resumable)"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--workers", type=int, metavar="N", help="tokenizer processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.distill import shards
    from surgery.errors import SurgeryError

    if args.workers is not None and args.workers < 1:
        raise SurgeryError(f"--workers {args.workers}: needs at least one", hint="e.g. --workers 4")
    compiled = compile_file(args.recipe)
    shards.prepare(compiled, progress=not args.no_progress, workers=args.workers)
    for directory in shards.status(compiled).directories:
        print(directory)
    return 0
