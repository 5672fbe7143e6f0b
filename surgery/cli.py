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


def _command_modules():
    import surgery.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield info.name.replace("_", "-"), importlib.import_module(f"surgery.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="Model surgery from .boom recipes.")
    parser.add_argument("--version", action="version", version=f"surgery {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _command_modules():
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
