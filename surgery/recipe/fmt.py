"""The canonical layout of `.boom` text, like gofmt: `format_text(text) -> text`.

It works on the parser's token stream rather than on the recipe AST, because the AST has
already applied units and filled in defaults: printed back, `tokens 2.1B` would come out as
`tokens 2100000000`, and settings left at their defaults would appear or vanish. Every token
is kept as written, in its order; only layout changes:

- one statement per line (`;` separators and one-line `{ ... }` blocks are split up, and so
  are `map` entries written on one line), four spaces per block level;
- single spaces between words, none around `..`, before `,` and inside `[ ]`;
- one blank line after `boom 1` and between top-level blocks; elsewhere a run of blank lines
  becomes one, and none follow `{` or precede `}`;
- comments are kept: a comment on its own line stays on its own line, indented with the
  code around it; a comment after code stays after that code. Trailing comments on
  consecutive lines are aligned into one column, two spaces past the longest code.

Formatting is idempotent, and the formatted text parses to the same recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.recipe.parse import BOM, lex

INDENT = "    "
_NO_SPACE_BEFORE = {",", "]", ".."}
_NO_SPACE_AFTER = {"[", ".."}


@dataclass
class _Line:
    depth: int
    code: str  # canonical code without indentation; for a comment line, the comment
    kind: str  # "code" | "open" (ends with `{`) | "close" (`}`) | "comment"
    blank_before: bool  # whether the source had a blank line before it
    comment: str | None = None  # a trailing comment


def format_text(text: str, path: str | Path = "<recipe>") -> str:
    """`text` in canonical layout. Raises a located SurgeryError if it is not valid syntax.

    A leading BOM is dropped: the canonical file is plain UTF-8.
    """
    text = text.removeprefix(BOM)
    return _render(_lines(text, lex(text, path)))


def _comment_in(gap: str) -> str | None:
    """Spaces and comments are all that lies between tokens; return the comment, if any."""
    at = gap.find("#")
    return gap[at:].rstrip() if at >= 0 else None


def _join(words: list[str]) -> str:
    out = words[0]
    for prev, word in zip(words, words[1:]):
        if word not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            out += " "
        out += word
    return out


def _lines(text: str, tokens) -> list[_Line]:
    lines: list[_Line] = []
    words: list[str] = []  # the statement being read
    words_blank = False
    words_comment: str | None = None
    blocks: list[str] = []  # the keyword opening each enclosing block
    newlines = 0  # line breaks since the last statement or comment
    code_on_line = False
    end = 0

    def flush(kind: str = "code") -> None:
        nonlocal words, words_comment
        if words:
            lines.append(_Line(len(blocks), _join(words), kind, words_blank, words_comment))
            words, words_comment = [], None

    def take_comment(comment: str) -> None:
        nonlocal words_comment, newlines
        if not code_on_line:
            lines.append(_Line(len(blocks), comment, "comment", newlines >= 2))
            newlines = 0
        elif words:
            words_comment = comment
        else:  # after `{`, `}` or `;` ended the statement on this line
            lines[-1].comment = comment

    for i, tok in enumerate(tokens):
        comment = _comment_in(text[end:tok.start_pos])
        if comment:
            take_comment(comment)
        end = tok.end_pos
        if tok.type == "_NEWLINE":
            flush()
            newlines += tok.value.count("\n")
            code_on_line = False
            continue
        if tok.type == "SEMICOLON":
            if words:  # a bare `;` is a blank separator: it puts no code on the line
                flush()
                code_on_line = True
            continue
        code_on_line = True
        if tok.type == "RBRACE":
            flush()
            blocks.pop()
            lines.append(_Line(len(blocks), "}", "close", newlines >= 2))
            newlines = 0
        else:
            # A `map` block may hold several `i <- a..b` entries on one line: each gets its own.
            entry_starts = (blocks and blocks[-1] == "map" and tok.type == "NUMBER"
                            and i + 1 < len(tokens) and tokens[i + 1].value == "<-")
            if entry_starts:
                flush()
            if not words:
                words_blank, newlines = newlines >= 2, 0
            words.append(tok.value)
            if tok.type == "LBRACE":
                opener = words[0]
                flush("open")
                blocks.append(opener)
    comment = _comment_in(text[end:])
    if comment:
        take_comment(comment)
    flush()
    return lines


def _blank_between(prev: _Line, line: _Line) -> bool:
    if prev.kind == "open" or line.kind == "close":
        return False
    if line.depth == 0 and prev.depth == 0 and prev.kind in ("code", "close"):
        return True  # after `boom 1` and after each top-level block
    return line.blank_before


def _render(lines: list[_Line]) -> str:
    rows: list[tuple[str, str | None]] = []  # (code with indentation, trailing comment)
    for i, line in enumerate(lines):
        if i and _blank_between(lines[i - 1], line):
            rows.append(("", None))
        rows.append((INDENT * line.depth + line.code, line.comment))
    out: list[str] = []
    i = 0
    while i < len(rows):
        if rows[i][1] is None:
            out.append(rows[i][0])
            i += 1
            continue
        run_end = i
        while run_end < len(rows) and rows[run_end][1] is not None:
            run_end += 1
        width = max(len(code) for code, _ in rows[i:run_end])
        out.extend(f"{code.ljust(width)}  {comment}" for code, comment in rows[i:run_end])
        i = run_end
    return "\n".join(out) + "\n"
