"""`surgery fmt RECIPE...`: rewrite recipes in canonical layout, keeping every comment."""

from __future__ import annotations

import sys

HELP = "format recipes canonically (in place; --check only reports); keeps comments"


def add_arguments(parser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files; `-` reads stdin, writes stdout")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not formatted")
    mode.add_argument("--diff", action="store_true", help="change nothing; print what formatting would change")


def run(args) -> int:
    import difflib
    from pathlib import Path

    from surgery.durable import write_atomic
    from surgery.errors import SurgeryError
    from surgery.recipe.fmt import format_text

    failed = unformatted = 0
    for name in args.recipes:
        try:
            text = sys.stdin.read() if name == "-" else _read(Path(name))
            formatted = format_text(text, "<stdin>" if name == "-" else name)
        except SurgeryError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        if name == "-":
            sys.stdout.write(formatted)
            continue
        if formatted == text:
            continue
        unformatted += 1
        if args.check:
            print(f"would reformat {name}", file=sys.stderr)
        elif args.diff:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                       f"{name} (now)", f"{name} (formatted)"))
        else:
            try:
                write_atomic(name, formatted)
            except SurgeryError as err:
                print(err, file=sys.stderr)
                failed += 1
                continue
            print(f"reformatted {name}", file=sys.stderr)
    return 1 if failed or (args.check and unformatted) else 0


def _read(path) -> str:
    from surgery.errors import SurgeryError

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SurgeryError(f"recipe not found: {path}", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SurgeryError(f"cannot read recipe {path}: {err}") from None
