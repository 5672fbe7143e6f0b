"""`surgery diff A B`: what changes between two recipes, in a reviewer's terms."""

from __future__ import annotations

import sys

HELP = "what changes between two recipes: mapping, losses, patch schedule, other settings"


def add_arguments(parser) -> None:
    parser.add_argument("old", metavar="A", help="the recipe before")
    parser.add_argument("new", metavar="B", help="the recipe after")


def run(args) -> int:
    from surgery.compile import compile_file
    from surgery.diff import diff, render

    sys.stdout.write(render(diff(compile_file(args.old), compile_file(args.new))))
    return 0
