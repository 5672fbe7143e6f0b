"""`surgery init-student RECIPE`: write the pruned (or randomly initialised) student."""

from __future__ import annotations

HELP = "write the pruned student (teacher layers, or `init random`) to the student directory"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--force", action="store_true", help="replace an existing student directory surgery made")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.stages import Context, init_student

    ctx = Context(compile_file(args.recipe))
    out = init_student.run(ctx, force=args.force)
    g = ctx.graph
    print(f"{out}: {g.n_student}-layer student ({ctx.recipe.student.init} init) of the {g.n_teacher}-layer teacher")
    return 0
