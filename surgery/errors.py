"""User-facing errors: one line `FILE:LINE:COL: error: message`, an optional caret line and hint.

Every error a user can cause is a `SurgeryError`. The CLI prints `str(err)` and exits 1;
nothing else reaches the terminal, so no traceback ever shows for bad input.
"""

from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pos:
    """A position in a recipe file, 1-based like editors show it."""

    line: int
    col: int


class SurgeryError(Exception):
    """An error caused by user input: a recipe, a path, a model directory, a flag."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        pos: Pos | None = None,
        hint: str | None = None,
        source_line: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.pos = pos
        self.hint = hint
        self.source_line = source_line

    def located(self, file: str | Path, source: str | None = None) -> "SurgeryError":
        """The same error, placed in `file` (and given its source line for the caret)."""
        line = None
        if source is not None and self.pos is not None:
            # Not splitlines(): form feeds and U+2028 are no line breaks here. A leading BOM is no
            # column: the parser does not see it either.
            lines = source.removeprefix("\ufeff").split("\n")
            if 0 < self.pos.line <= len(lines):
                line = lines[self.pos.line - 1]
        return SurgeryError(
            self.message, file=file, pos=self.pos, hint=self.hint, source_line=line or self.source_line
        )

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + ":"
            if self.pos is not None:
                where += f"{self.pos.line}:{self.pos.col}:"
            where += " "
        out = f"{where}error: {self.message}"
        if self.source_line is not None and self.pos is not None:
            caret = " " * (self.pos.col - 1) + "^"
            out += f"\n    {self.source_line.rstrip()}\n    {caret}"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out


def did_you_mean(word: str, choices) -> str | None:
    """A 'did you mean `x`?' hint for a misspelt keyword, or None."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


# What an OSError means, in the words of the person who gave the path.
_OS_REASONS = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (is it immutable? see `lsattr`)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "something is already there",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error(err: OSError, doing: str, path: str | Path | None = None) -> SurgeryError:
    """An OSError as one user error: `{doing}: {reason}`, e.g. `cannot write out/a.md: permission denied`.

    With the `path` that was being made, a file standing where a folder must be is named.
    """
    reason = _OS_REASONS.get(err.errno) or (err.strerror or str(err) or type(err).__name__).lower()
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            reason = f"{existing} is a file, not a folder"
    return SurgeryError(f"{doing}: {reason}")
