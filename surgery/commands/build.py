"""`surgery build RECIPE --patch 3,4,7`: write one model on the layer graph."""

from __future__ import annotations

HELP = "write one model: the student with chosen layers replaced by their teacher blocks"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--patch", metavar="LAYERS",
                       help="student layers to replace: `3,4,7` (or `s3,s4,s7`), `none` (the student) "
                            "or `all` (the teacher's computation)")
    which.add_argument("--step", type=int, metavar="K",
                       help="step K of the patch schedule (of the plan, for an order that measures)")
    which.add_argument("--layers", type=int, metavar="N",
                       help="the largest model of the patch schedule with at most N layers")
    which.add_argument("--params", metavar="COUNT",
                       help="the largest model of the patch schedule with at most COUNT parameters (3B)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: the recipe's emit path)")
    parser.add_argument("--force", action="store_true", help="replace an output directory that surgery made")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.recipe.units import parse_number
    from surgery.stages import Context, emit

    ctx = Context(compile_file(args.recipe))
    params = None if args.params is None else parse_number(args.params, allow=("count",), what="--params")
    assembly = emit.pick(ctx, patch=args.patch, step=args.step, layers=args.layers, params=params)
    if args.out is None and ctx.recipe.emit is None:
        raise ctx.error("where should the model go?", hint="pass --out DIR, or add an `emit` block to the recipe")
    if args.out:  # before any work; the materializer checks again where it writes
        from surgery.outputs import check_output

        check_output(ctx.compiled, args.out)
    out = emit.build(ctx, assembly, args.out or ctx.compiled.emit_dir(assembly), force=args.force)
    print(f"{out}: {assembly.name}, {assembly.depth} layers")
    return 0
