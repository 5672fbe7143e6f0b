"""The `surgery` command line. Each subcommand is a module in `surgery/commands/`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and keeps heavy imports (torch, transformers) inside `run`, so start-up stays fast.
User errors are `SurgeryError`s: printed as one located line, exit status 1, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from surgery import __version__
from surgery.errors import SurgeryError, os_error


def _commands() -> dict[str, str]:
    """Command name -> module name, for the modules in surgery/commands/ (listed, not imported)."""
    import surgery.commands as package

    return {info.name.replace("_", "-"): info.name
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)
            if not info.name.startswith("_")}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; or where `command` names one, of that one, the others by name
    only, so that running a command imports one command module (a tenth of `surgery check`)."""
    parser = argparse.ArgumentParser(prog="surgery", description="Model surgery from .boom recipes.")
    parser.add_argument("--version", action="version", version=f"surgery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = _commands()
    for name, module_name in commands.items():
        if command in commands and name != command:
            sub.add_parser(name)
            continue
        module = importlib.import_module(f"surgery.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command comes first: the only global options (--help, --version) print and exit.
    command = argv[0] if argv else None
    args = build_parser(command).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SurgeryError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("surgery: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `surgery audit ... | head`
        return 0
    except OSError as err:
        # The last resort: a file-system failure that no deeper code turned into a SurgeryError
        # still reads as one line. The places that write name their paths themselves.
        where = f"cannot use {err.filename}" if err.filename else "a file operation failed"
        print(os_error(err, where, err.filename), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
