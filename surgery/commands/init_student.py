"""`surgery init-student RECIPE`: write the pruned (or randomly initialised) student."""

from __future__ import annotations

HELP = "write the pruned student (teacher layers, or `init random`) to the student directory"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--force", action="store_true", help="replace an existing student directory")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.materialize import init_student

    compiled = compile_file(args.recipe)
    out = init_student(compiled, force=args.force)
    g = compiled.graph
    print(f"{out}: {g.n_student}-layer student ({compiled.recipe.student.init} init) "
          f"of the {g.n_teacher}-layer teacher")
    return 0
