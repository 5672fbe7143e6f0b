"""`surgery build RECIPE --patch 3,4,7`: write one model on the layer graph."""

from __future__ import annotations

HELP = "write one model: the student with chosen layers replaced by their teacher blocks"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--patch", metavar="LAYERS",
                       help="student layers to replace: `3,4,7` (or `s3,s4,s7`), `none` (the student) "
                            "or `all` (the teacher's computation)")
    which.add_argument("--layers", type=int, metavar="N",
                       help="the largest model of the recipe's patch order with at most N layers")
    which.add_argument("--params", metavar="COUNT",
                       help="the largest model of the recipe's patch order with at most COUNT parameters (3B)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: the recipe's emit path)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.errors import SurgeryError
    from surgery.materialize import write_model

    compiled = compile_file(args.recipe)
    assembly = chosen(compiled, args)
    if args.out is None and compiled.recipe.emit is None:
        raise SurgeryError("where should the model go?", file=compiled.recipe.path,
                           hint="pass --out DIR, or add an `emit` block to the recipe")
    out = write_model(compiled, assembly, args.out or compiled.emit_dir(assembly), force=args.force)
    print(f"{out}: {assembly.name}, {assembly.depth} layers")
    return 0


def chosen(compiled, args):
    """The assembly the flags name."""
    import dataclasses

    from surgery import schedule
    from surgery.errors import SurgeryError
    from surgery.recipe.ast import Sizes
    from surgery.recipe.units import parse_number

    graph = compiled.graph
    if args.patch is not None:
        return graph.assemble(_patched(args.patch, graph))
    kind, value = ("layers", args.layers) if args.layers is not None else \
        ("params", parse_number(args.params, allow=("count",), what="--params"))
    patch = dataclasses.replace(compiled.recipe.patch, sizes=Sizes(kind, (value,)))
    step = schedule.resolve(graph, patch, compiled.emit_dtype)[0]
    if step.assembly is None:
        raise SurgeryError(f"`order {patch.order}` chooses its layers by measurement, so --{kind} has no "
                           "model to pick yet", file=compiled.recipe.path, hint="give the layers with --patch")
    return step.assembly


def _patched(text: str, graph) -> tuple[int, ...]:
    from surgery.errors import SurgeryError

    if text == "none":
        return ()
    if text == "all":
        return tuple(range(graph.n_student))
    layers = []
    for item in text.split(","):
        item = item.strip().removeprefix("s")
        if not item.isdigit():
            raise SurgeryError(f"--patch: `{text}` is not a list of student layers",
                               hint="write e.g. --patch 3,4,7 (or s3,s4,s7), none or all")
        layers.append(int(item))
    return tuple(layers)
