"""`surgery audit RECIPE`: the teacher, the student, the mapping and every patched size."""

from __future__ import annotations

import sys

HELP = "show the student, its layer mapping and every patched size (config only, no weights)"


def add_arguments(parser) -> None:
    from surgery.audit import FORMATS

    parser.add_argument("recipe", metavar="RECIPE")
    parser.add_argument("--format", "-f", choices=FORMATS, default="table",
                        help="table (default), markdown for a code review, json, yaml, or a drawing of the "
                             "layer graph: dot, mermaid, svg, png")
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout (needed for png)")


def run(args) -> int:
    from surgery.audit import BINARY_FORMATS, render
    from surgery.compile import compile_file
    from surgery.durable import write_atomic

    if args.format in BINARY_FORMATS and not args.output:
        print(f"surgery audit: error: --format {args.format} needs --output FILE", file=sys.stderr)
        return 2
    out = render(compile_file(args.recipe), args.format, args.recipe)
    if args.output:
        write_atomic(args.output, out)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(out)
    return 0
