"""Parse `.boom` text into a `Recipe`: lark for syntax, one Transformer pass for meaning.

Syntax errors from lark become located `SurgeryError`s with a 'did you mean' hint drawn
from the keywords lark would have accepted at that point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

from surgery.caches import cache_dir
from surgery.errors import Pos, SurgeryError, did_you_mean
from surgery.recipe import ast
from surgery.recipe.units import BYTES, COUNT, parse_number
from surgery.source import expand_user

# lark imports the third-party `regex` module whenever it is installed (transformers installs it),
# though it needs it only for `Lark(regex=True)` and Unicode-category terminals, which boom.lark
# does not use. That import costs 15-20 ms of `surgery check`, so lark is imported with `regex`
# hidden; whatever imports `regex` afterwards gets the real module.
_HIDE_REGEX = "regex" not in sys.modules
if _HIDE_REGEX:
    sys.modules["regex"] = None  # makes `import regex` raise ImportError
try:
    from lark import Lark, Token, Transformer, v_args
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
finally:
    if _HIDE_REGEX:
        del sys.modules["regex"]

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "boom.lark"

SUPPORTED_VERSIONS = (1,)

# Far beyond any real recipe (the paper's are under 2,000 characters), and parsed in about
# two seconds: a bigger file is refused before parsing rather than parsed for minutes.
MAX_RECIPE_CHARS = 100_000
# Whole numbers are at most 2^53, the largest a float holds exactly (units make every number a float).
MAX_WHOLE = 2**53
MAX_SEED = 2**32 - 1  # numpy's and most tools' seed range
BOM = "\ufeff"


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = GRAMMAR.read_text()
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=_grammar_cache(grammar),
    )


def _grammar_cache(grammar: str) -> str | bool:
    """Where lark keeps its analysis of the grammar: building it takes most of `surgery check`.

    In the user's cache directory rather than lark's default, /tmp, because the cache is a pickle
    that anyone could plant there; named by the grammar's hash, so versions do not overwrite it.
    """
    directory = cache_dir("grammar")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build the parser each time
        return False
    return str(directory / f"boom-{hashlib.sha256(grammar.encode()).hexdigest()[:16]}.lark")


@lru_cache(maxsize=1)
def _keywords() -> dict[str, str]:
    """Terminal name -> keyword text, for the anonymous keyword terminals of the grammar."""
    out = {}
    for term in _parser().terminals:
        pattern = term.pattern
        if pattern.type == "str":
            out[term.name] = pattern.value
        elif re.fullmatch(r"\(\?:[a-z0-9_|]+\)", pattern.value):  # a named choice like DTYPE
            out[term.name] = pattern.value[3:-1]
    return out


def _describe(terminals) -> tuple[str, list[str]]:
    """A readable 'expected ...' phrase and the plain words the parser would accept."""
    kw = _keywords()
    words: list[str] = []
    names: list[str] = []
    for name in sorted(terminals):
        if name in ("_NEWLINE", "SEMICOLON"):
            names.append("end of line")
        elif name in kw:
            words.extend(kw[name].split("|"))
        elif name == "$END":
            names.append("end of file")
        elif name == "NUMBER":
            names.append("a number")
        elif name == "STRING":
            names.append('a "string"')
        elif name == "TASK":
            names.append("a task name")
        elif name == "STUDENT_LAYER":
            names.append("a student layer like s3")
        else:
            names.append(name.lower())
    shown = [f"`{w}`" for w in sorted(set(words))] + sorted(set(names))
    if len(shown) > 8:
        shown = shown[:8] + ["..."]
    return ", ".join(shown), words


_START_HINT = "a recipe starts with `boom 1`"


def _syntax_error(err: UnexpectedInput, text: str) -> SurgeryError:
    pos = Pos(err.line, err.column) if getattr(err, "line", -1) not in (-1, None) else None
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        # LALR reports the end of input as an `$END` token placed on the last token; say "end of file".
        expected, words = _describe(getattr(err, "accepts", None) or err.expected)
        lines = text.rstrip("\r\n").split("\n")  # the end of the last line with text on it
        return SurgeryError(
            f"unexpected end of file; expected {expected}",
            pos=Pos(len(lines), len(lines[-1]) + 1),
            hint="is a `}` missing?" if "}" in words else _START_HINT if "boom" in words else None,
        )
    index = err.pos_in_stream if isinstance(err, UnexpectedCharacters) else err.token.start_pos
    if index is not None and 0 <= index < len(text) and _is_unusual(text[index]):
        return _unusual_character(text[index], pos)
    unit = _unknown_unit(text, index, err.line)
    if unit is not None:
        return unit
    if index is not None and 0 < index < len(text) and _is_word(text[index - 1]) and _is_word(text[index]):
        # A keyword matched a prefix of a longer word (`cee` lexed as `ce` + `e`): report the word.
        start = index
        while start and _is_word(text[start - 1]):
            start -= 1
        word = re.match(r"\w+", text[start:]).group(0)
        return SurgeryError(
            f"unknown word `{word}`",
            pos=Pos(err.line, start - (text.rfind("\n", 0, start) + 1) + 1),
            hint=did_you_mean(word, [w for v in _keywords().values() for w in v.split("|")]),
        )
    if isinstance(err, UnexpectedCharacters):
        word = re.match(r"[A-Za-z_][A-Za-z0-9_]*|\S", text[err.pos_in_stream:])
        got = word.group(0) if word else text[err.pos_in_stream: err.pos_in_stream + 1]
        expected, words = _describe(err.allowed)
        return SurgeryError(
            f"unexpected `{got}`; expected {expected}", pos=pos, hint=did_you_mean(got, words)
        )
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    got = "end of line" if tok.type == "_NEWLINE" else f"`{tok}`"
    expected, words = _describe(err.accepts or err.expected)
    hint = did_you_mean(str(tok), words) if tok.type != "_NEWLINE" else None
    if words == ["boom"]:
        hint = _START_HINT
    if tok.type == "_NEWLINE" and "}" not in words:
        hint = hint or "a statement ended early; settings take their values on the same line"
    return SurgeryError(f"unexpected {got}; expected {expected}", pos=pos, hint=hint)


def _is_unusual(ch: str) -> bool:
    """A character that is not printable ASCII: invisible ones especially must be named, not shown."""
    return not (" " <= ch <= "~" or ch in "\t\n")


_QUOTES = "\u201c\u201d\u201e\u2033"


def _unusual_character(ch: str, pos: Pos | None) -> SurgeryError:
    """`unexpected character U+00A0 (NO-BREAK SPACE)`: by code point, since it may not show."""
    name = unicodedata.name(ch, "")
    if unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Co", "Mn", "Me"):
        return SurgeryError(f"unexpected invisible character U+{ord(ch):04X}" + (f" ({name})" if name else ""),
                            pos=pos, hint="delete it, or type a plain space if one belongs there")
    hint = 'strings take straight quotes: "..."' if ch in _QUOTES else \
        "recipes are written in plain ASCII outside strings"
    return SurgeryError(f"unexpected `{ch}` (U+{ord(ch):04X}" + (f" {name})" if name else ")"), pos=pos, hint=hint)


_UNITS = [*COUNT, *BYTES, "%"]
_GLUED_NUMBER = re.compile(r"[0-9]+(?:[eE][+-]?[0-9]+)?")


def _unknown_unit(text: str, index: int | None, line: int) -> SurgeryError | None:
    """`2.1Q`: the lexer read `2.1` as a number, so what is glued to it is a unit it does not know."""
    if index is None or not 0 < index < len(text) or not _is_word(text[index]) or not _is_word(text[index - 1]):
        return None
    start = index
    while start and _is_word(text[start - 1]):
        start -= 1
    word = re.match(r"\w+", text[start:]).group(0)
    number = _GLUED_NUMBER.match(word)
    if number is None or number.end() == len(word):
        return None
    unit_at = start + number.end()
    unit = word[number.end():]
    hint = "units are K, M, B, T (counts), KB, MB, GB, TB (bytes) and % (fractions)"
    if unit.upper() in _UNITS:
        hint = f"units are upper case: `{unit.upper()}`"
    elif unit.isalpha() and len(unit) > 2:
        hint += "; put a space between a number and the word after it"
    return SurgeryError(f"unknown unit `{unit}`", pos=Pos(line, unit_at - (text.rfind("\n", 0, unit_at) + 1) + 1),
                        hint=hint)


def _prepared(text: str, path: Path) -> str:
    """The text the parser reads: without a leading BOM (Python accepts one too), and not too long."""
    text = text.removeprefix(BOM)
    if len(text) > MAX_RECIPE_CHARS:
        raise SurgeryError(f"the recipe is {len(text):,} characters long; surgery reads recipes of at most "
                           f"{MAX_RECIPE_CHARS:,}", file=path,
                           hint="write long layer lists as ranges (`2..34 step 2`) or as a `keep first ... every "
                                "... last ...` rule")
    return text


def parse(text: str, path: str | Path = "<recipe>") -> ast.Recipe:
    """Parse recipe text. Raises SurgeryError, located in `path`."""
    path = Path(path)
    text = _prepared(text, path)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text).located(path, text) from None
    try:
        return _Build(path.resolve()).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, SurgeryError):
            raise err.orig_exc.located(path, text) from None
        raise
    except SurgeryError as err:
        raise err.located(path, text) from None


def lex(text: str, path: str | Path = "<recipe>") -> list[Token]:
    """The tokens of syntactically valid recipe text, in order, as the parser reads them.

    Spaces and comments are not tokens; newlines and `;` are. Meaning is not checked, so a
    recipe with, say, a duplicate setting still lexes (the formatter relies on this).
    """
    text = _prepared(text, Path(path))
    try:
        _parser().parse(text)  # first, so that syntax errors read exactly as `parse` gives them
    except UnexpectedInput as err:
        raise _syntax_error(err, text).located(Path(path), text) from None
    return list(_parser().parse_interactive(text).iter_parse())


def load(path: str | Path) -> ast.Recipe:
    """Read and parse a recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SurgeryError(f"recipe not found: {path}", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SurgeryError(f"cannot read recipe {path}: {err}") from None
    return parse(text, path)


# --------------------------------------------------------------------------- the Transformer


def _pos(node) -> Pos | None:
    if isinstance(node, Token):
        return Pos(node.line, node.column)
    meta = getattr(node, "meta", node)
    return Pos(meta.line, meta.column) if not getattr(meta, "empty", True) else None


def _string(tok: Token) -> str:
    body = str(tok)[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _path(tok: Token) -> str:
    """A path string, as written; a `~user` in it must name a user (checked here, where the line is known)."""
    value = _string(tok)
    try:
        expand_user(value)
    except SurgeryError as err:
        raise SurgeryError(err.message, pos=_pos(tok), hint=err.hint) from None
    return value


def _int(tok: Token, what: str, minimum: int = 0) -> int:
    value = parse_number(str(tok), allow=("count",), pos=_pos(tok), what=what)
    if value != int(value):
        raise SurgeryError(f"{what} must be a whole number, got {tok}", pos=_pos(tok))
    if value < minimum:
        raise SurgeryError(f"{what} must be at least {minimum}, got {tok}", pos=_pos(tok))
    return _at_most(int(value), MAX_WHOLE, tok, what)


def _plain_int(tok: Token, what: str, text: str | None = None, maximum: int = MAX_WHOLE) -> int:
    """A layer index or count written without units (`text`: the digits, when `tok` holds more)."""
    digits = str(tok) if text is None else text
    if not re.fullmatch(r"[0-9]+", digits):
        raise SurgeryError(f"{what} must be a plain whole number, got `{tok}`", pos=_pos(tok))
    # Compared as text first: int() refuses strings of more than 4,300 digits.
    return _at_most(int(digits) if len(digits) <= 20 else maximum + 1, maximum, tok, what)


def _at_most(value: int, maximum: int, tok: Token, what: str) -> int:
    if value > maximum:
        shown = "2^53" if maximum == MAX_WHOLE else f"{maximum:,}"
        raise SurgeryError(f"{what} `{tok}` is too large; the largest is {shown}", pos=_pos(tok))
    return value


def _float(tok: Token, what: str, allow=("plain",)) -> float:
    return parse_number(str(tok), allow=allow, pos=_pos(tok), what=what)


class _Setting:
    """A parsed `name value...` statement inside a block: its name, value and position."""

    __slots__ = ("name", "value", "pos")

    def __init__(self, name: str, value, pos: Pos | None):
        self.name, self.value, self.pos = name, value, pos


# Settings that may appear more than once in a block.
_REPEATABLE = {"data", "loss"}


def _collect(block: str, items, allowed_repeats=_REPEATABLE) -> dict[str, list[_Setting]]:
    seen: dict[str, list[_Setting]] = {}
    for item in items:
        if not isinstance(item, _Setting):
            continue
        if item.name in seen and item.name not in allowed_repeats:
            first = seen[item.name][0].pos
            raise SurgeryError(
                f"duplicate `{item.name}` in `{block}`",
                pos=item.pos,
                hint=f"first set on line {first.line}" if first else None,
            )
        seen.setdefault(item.name, []).append(item)
    return seen


def _one(settings: dict[str, list[_Setting]], name: str, default=None):
    return settings[name][0].value if name in settings else default


def _given(settings: dict[str, list[_Setting]], **fields: str) -> dict:
    """{field: value} for the settings a block writes (field=setting name). Settings left out
    are left out here too, so the AST dataclasses hold the one copy of every default."""
    return {field: settings[name][0].value for field, name in fields.items() if name in settings}


def _default(cls, field: str):
    """An AST field's default, for checks that need the value a block left out."""
    f = cls.__dataclass_fields__[field]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@v_args(meta=True)
class _Build(Transformer):
    def __init__(self, path: Path):
        super().__init__(visit_tokens=False)
        self.path = path

    # ------------------------------------------------------------------ top level
    def start(self, meta, items):
        version, *sections = items
        by_kind: dict[str, object] = {}
        for sec in sections:
            kind = type(sec).__name__.lower()
            if kind in by_kind:
                raise SurgeryError(f"duplicate `{kind}` block", pos=sec.pos, hint="a recipe has one of each block")
            by_kind[kind] = sec
        for required in ("teacher", "student"):
            if required not in by_kind:
                raise SurgeryError(
                    f"missing `{required}` block", pos=Pos(1, 1), hint=f'add `{required} "path" {{ ... }}`'
                )
        return ast.Recipe(
            path=self.path,
            version=version,
            teacher=by_kind["teacher"],
            student=by_kind["student"],
            distill=by_kind.get("distill"),
            patch=by_kind.get("patch", ast.Patch()),
            emit=by_kind.get("emit"),
            evaluate=by_kind.get("evaluate"),
        )

    def version(self, meta, items):
        (tok,) = items
        if str(tok) not in {str(v) for v in SUPPORTED_VERSIONS}:
            raise SurgeryError(
                f"unsupported recipe version `boom {tok}`",
                pos=_pos(tok),
                hint=f"this surgery reads boom {', '.join(map(str, SUPPORTED_VERSIONS))}",
            )
        return int(str(tok))

    # ------------------------------------------------------------------ shared settings
    def dtype(self, meta, items):
        return _Setting("dtype", str(items[0]), _pos(meta))

    # ------------------------------------------------------------------ teacher
    def teacher(self, meta, items):
        src, *rest = items
        s = _collect("teacher", rest)
        return ast.Teacher(source=_path(src), pos=_pos(meta),
                           **_given(s, dtype="dtype", revision="revision", trust_remote_code="trust_remote_code"))

    def revision(self, meta, items):
        return _Setting("revision", _string(items[0]), _pos(meta))

    def trust_remote_code(self, meta, items):
        return _Setting("trust_remote_code", str(items[0]) == "yes", _pos(meta))

    # ------------------------------------------------------------------ student
    def student(self, meta, items):
        path, *rest = items
        s = _collect("student", rest)
        layer_specs = [x for name in ("keep", "map") for x in s.get(name, [])]
        if not layer_specs:
            raise SurgeryError(
                "the student block needs `keep` or `map`",
                pos=_pos(meta),
                hint="e.g. `keep first 1 every 2 last 2`",
            )
        if len(layer_specs) > 1:
            later = max(layer_specs, key=lambda x: (x.pos.line, x.pos.col))
            raise SurgeryError("give the student's layers once: `keep` or `map`, not both", pos=later.pos)
        return ast.Student(path=_path(path), layers=layer_specs[0].value, pos=_pos(meta), **_given(s, init="init"))

    def layer_span(self, meta, items):
        start = _plain_int(items[0], "a layer index")
        stop = _plain_int(items[1], "a layer index") if len(items) > 1 else start
        step = _plain_int(items[2], "a step") if len(items) > 2 else 1
        if step < 1:
            raise SurgeryError("step must be at least 1", pos=_pos(items[2]))
        if stop < start:
            raise SurgeryError(f"range {start}..{stop} runs backwards", pos=_pos(meta), hint=f"write {stop}..{start}")
        return ast.LayerSpan(start, stop, step, pos=_pos(meta))

    def layer_list(self, meta, items):
        return tuple(items)

    def keep(self, meta, items):
        return _Setting("keep", ast.KeepList(items[0], pos=_pos(meta)), _pos(meta))

    def keep_rule(self, meta, items):
        first, every, last = (_plain_int(t, "a layer count") for t in items)
        if every < 1:
            raise SurgeryError("`every` must be at least 1", pos=_pos(items[1]))
        return _Setting("keep", ast.KeepRule(first, every, last, pos=_pos(meta)), _pos(meta))

    def map_entry(self, meta, items):
        return ast.MapEntry(_plain_int(items[0], "a student layer"), items[1], pos=_pos(meta))

    def map(self, meta, items):
        return _Setting("map", ast.LayerMap(tuple(items), pos=_pos(meta)), _pos(meta))

    def init(self, meta, items):
        return _Setting("init", str(items[0]), _pos(meta))

    # ------------------------------------------------------------------ distill
    def distill(self, meta, items):
        s = _collect("distill", items)
        if "data" not in s:
            raise SurgeryError("the distill block needs at least one `data` line", pos=_pos(meta),
                               hint='e.g. `data text "corpus/*.txt"`')
        if "tokens" in s and "steps" in s:
            raise SurgeryError("give `tokens` or `steps`, not both", pos=s["steps"][0].pos)
        given = _given(s, validation="validation", seq="seq", pack="pack", tokens="tokens", steps="steps",
                       batch="batch", micro_batch="micro_batch", optimizer="optimizer", schedule="schedule",
                       precision="precision", checkpoint_every="checkpoint", eval_every="eval_every", seed="seed",
                       device="device", compile="compile", activation_checkpointing="activation_checkpointing")
        if "loss" in s:
            given["losses"] = tuple(x.value for x in s["loss"])
        losses = given.get("losses", _default(ast.Distill, "losses"))
        kinds = [loss.kind for loss in losses]
        for i, kind in enumerate(kinds):
            if kind in kinds[:i]:
                raise SurgeryError(f"duplicate `loss {kind}`", pos=s["loss"][i].pos)
        if not any(loss.weight > 0 for loss in losses):
            raise SurgeryError("every loss weight is 0, so distillation would learn nothing", pos=s["loss"][0].pos,
                               hint="give at least one `loss` line a positive weight")
        batch = given.get("batch", _default(ast.Distill, "batch"))
        micro = given.get("micro_batch", _default(ast.Distill, "micro_batch"))
        if batch % micro:
            raise SurgeryError(
                f"batch {batch} is not a multiple of micro_batch {micro}",
                pos=s["micro_batch"][0].pos if "micro_batch" in s else _pos(meta),
            )
        _check_warmup(s, batch)
        return ast.Distill(
            data=tuple(x.value for x in s["data"]),
            **given,
            pos=_pos(meta),
            setting_pos={name: found[0].pos for name, found in s.items()},
        )

    def source(self, meta, items):
        kind, path, *args = items
        seen = _collect("data", args)
        fields = {k: v[0].value for k, v in seen.items()}
        if kind != "hf":
            for name in ("split", "config"):
                if name in fields:
                    raise SurgeryError(f"`{name}` applies to `data hf`, not `data {kind}`", pos=seen[name][0].pos)
        if kind == "text" and "field" in fields:
            raise SurgeryError("`field` applies to `data jsonl` and `data hf`", pos=seen["field"][0].pos)
        return ast.DataSource(str(kind), _path(path), pos=_pos(meta), **fields)

    def field(self, meta, items):
        return _Setting("field", _string(items[0]), _pos(meta))

    def split(self, meta, items):
        return _Setting("split", _string(items[0]), _pos(meta))

    def config(self, meta, items):
        return _Setting("config", _string(items[0]), _pos(meta))

    def data(self, meta, items):
        source = items[0]
        if len(items) > 1:
            weight = _float(items[1], "a data weight")
            if weight <= 0:
                raise SurgeryError("a data weight must be positive", pos=_pos(items[1]))
            source = ast.DataSource(source.kind, source.path, source.field, source.split, source.config,
                                    weight, source.pos)
        return _Setting("data", source, _pos(meta))

    def validation_fraction(self, meta, items):
        frac = _float(items[0], "the validation fraction", allow=("fraction",))
        if not 0 < frac < 1:
            raise SurgeryError("the validation fraction must be between 0% and 100%", pos=_pos(items[0]))
        return _Setting("validation", ast.Validation(fraction=frac, pos=_pos(meta)), _pos(meta))

    def validation_text(self, meta, items):
        return _Setting("validation", ast.Validation(text=_path(items[0]), pos=_pos(meta)), _pos(meta))

    def seq(self, meta, items):
        return _Setting("seq", _int(items[0], "seq", 2), _pos(meta))

    def pack(self, meta, items):
        return _Setting("pack", str(items[0]) == "yes", _pos(meta))

    def tokens(self, meta, items):
        return _Setting("tokens", _int(items[0], "tokens", 1), _pos(meta))

    def steps(self, meta, items):
        return _Setting("steps", _int(items[0], "steps", 1), _pos(meta))

    def batch(self, meta, items):
        return _Setting("batch", _int(items[0], "batch", 1), _pos(meta))

    def micro_batch(self, meta, items):
        return _Setting("micro_batch", _int(items[0], "micro_batch", 1), _pos(meta))

    def optimizer(self, meta, items):
        name, *args = items
        seen = _collect("optimizer", args)
        fields = {k: v[0].value for k, v in seen.items()}
        optimizer = ast.Optimizer(name=str(name), pos=_pos(meta), **fields)
        if optimizer.lr * optimizer.weight_decay >= 1:
            # AdamW shrinks each weight by lr * weight_decay per step: at 1 or more it flips its sign.
            where = seen["weight_decay"][0].pos if "weight_decay" in seen else seen["lr"][0].pos
            raise SurgeryError(f"lr {optimizer.lr:g} times weight_decay {optimizer.weight_decay:g} is at least 1, "
                               "so weight decay would overshoot zero at every step", pos=where,
                               hint="typical values are lr 3e-4 and weight_decay 0.1")
        return _Setting("optimizer", optimizer, _pos(meta))

    def lr(self, meta, items):
        return _Setting("lr", _positive(items[0], "lr"), _pos(meta))

    def betas(self, meta, items):
        b1, b2 = (_float(t, "a beta") for t in items)
        for tok, b in zip(items, (b1, b2)):
            if not 0 <= b < 1:
                raise SurgeryError("betas must lie in [0, 1)", pos=_pos(tok))
        return _Setting("betas", (b1, b2), _pos(meta))

    def weight_decay(self, meta, items):
        return _Setting("weight_decay", _float(items[0], "weight_decay"), _pos(meta))

    def clip(self, meta, items):
        return _Setting("clip", _positive(items[0], "clip"), _pos(meta))

    def eps(self, meta, items):
        return _Setting("eps", _positive(items[0], "eps"), _pos(meta))

    def schedule(self, meta, items):
        given = {}
        if len(items) > 1:
            tok = items[1]
            warmup = _float(tok, "warmup", allow=("fraction", "count"))
            # Below 1 a warmup is a fraction of the run, from 1 on a step count; so a percentage
            # must stay below 100% (`100%` would read as one step).
            if str(tok).endswith("%") and warmup >= 1:
                raise SurgeryError(f"warmup {tok} is not below 100%", pos=_pos(tok),
                                   hint="warm up for part of the run, e.g. `warmup 1%`, or give a step count")
            if warmup >= 1 and warmup != int(warmup):
                raise SurgeryError(f"warmup {tok} is a step count (1 or more), so it must be whole", pos=_pos(tok),
                                   hint="a fraction of the run is below 1, e.g. `warmup 0.01` or `warmup 1%`")
            given["warmup"] = float(_at_most(int(warmup), MAX_WHOLE, tok, "warmup")) if warmup >= 1 else warmup
        return _Setting("schedule", ast.Schedule(kind=str(items[0]), pos=_pos(meta), **given), _pos(meta))

    def loss(self, meta, items):
        kind, weight, *args = items
        seen = _collect("loss", args)
        fields = {k: v[0].value for k, v in seen.items()}
        w = _float(weight, "a loss weight")
        if w < 0:
            raise SurgeryError("a loss weight cannot be negative", pos=_pos(weight))
        if "beta" in fields and str(kind) != "jsd":
            raise SurgeryError(f"`beta` applies to `loss jsd`, not `loss {kind}`", pos=seen["beta"][0].pos)
        if "temperature" in fields and str(kind) not in ("kl", "reverse_kl", "jsd"):
            raise SurgeryError(f"`temperature` applies to the KL losses, not `loss {kind}`",
                               pos=seen["temperature"][0].pos)
        return _Setting("loss", ast.Loss(kind=str(kind), weight=w, pos=_pos(meta), **fields), _pos(meta))

    def temperature(self, meta, items):
        return _Setting("temperature", _positive(items[0], "temperature"), _pos(meta))

    def beta(self, meta, items):
        b = _float(items[0], "beta")
        if not 0 < b < 1:
            raise SurgeryError("jsd beta must lie in (0, 1)", pos=_pos(items[0]))
        return _Setting("beta", b, _pos(meta))

    def precision(self, meta, items):
        return _Setting("precision", str(items[0]), _pos(meta))

    def checkpoint(self, meta, items):
        return _Setting("checkpoint", _int(items[0], "checkpoint interval", 1), _pos(meta))

    def eval_every(self, meta, items):
        return _Setting("eval_every", _int(items[0], "eval interval", 1), _pos(meta))

    def seed(self, meta, items):
        return _Setting("seed", _plain_int(items[0], "seed", maximum=MAX_SEED), _pos(meta))

    def device(self, meta, items):
        return _Setting("device", str(items[0]), _pos(meta))

    def compile(self, meta, items):
        return _Setting("compile", {"yes": True, "no": False, "step": "step"}[str(items[0])], _pos(meta))

    def activation_checkpointing(self, meta, items):
        return _Setting("activation_checkpointing", str(items[0]) == "yes", _pos(meta))

    # ------------------------------------------------------------------ patch
    def patch(self, meta, items):
        s = _collect("patch", items)
        order = _one(s, "order", _default(ast.Patch, "order"))
        for name in ("candidates", "exhaustive"):
            if name in s and order != "optimal":
                raise SurgeryError(f"`{name}` applies to `order optimal`", pos=s[name][0].pos,
                                   hint="remove it, or use `order optimal`")
        return ast.Patch(pos=_pos(meta), **_given(s, order="order", sizes="sizes", calibration="calibration",
                                                  candidates="candidates", exhaustive="exhaustive"))

    def order(self, meta, items):
        return _Setting("order", str(items[0]), _pos(meta))

    def order_list(self, meta, items):
        layers = tuple(_plain_int(t, "a student layer", str(t)[1:]) for t in items)
        seen = set()
        for tok, layer in zip(items, layers):
            if layer in seen:
                raise SurgeryError(f"s{layer} appears twice in the order", pos=_pos(tok))
            seen.add(layer)
        return _Setting("order", layers, _pos(meta))

    def number_list(self, meta, items):
        return tuple(items)

    def sizes_all(self, meta, items):
        return _Setting("sizes", ast.Sizes("all", pos=_pos(meta)), _pos(meta))

    def sizes_patched(self, meta, items):
        values = tuple(float(_plain_int(t, "a patched-layer count")) for t in items[0])
        return _Setting("sizes", ast.Sizes("patched", values, pos=_pos(meta)), _pos(meta))

    def sizes_target(self, meta, items):
        unit, toks = str(items[0]), items[1]
        if unit == "layers":
            values = tuple(float(_plain_int(t, "a layer count")) for t in toks)
        elif unit == "params":
            values = tuple(_float(t, "a parameter count", allow=("count",)) for t in toks)
        else:
            values = tuple(_float(t, "a size in bytes", allow=("bytes",)) for t in toks)
        return _Setting("sizes", ast.Sizes(unit, values, pos=_pos(meta)), _pos(meta))

    def calibration(self, meta, items):
        text, *args = items
        seen = _collect("calibration", args)
        fields = {k: v[0].value for k, v in seen.items()}
        return _Setting("calibration", ast.Calibration(_path(text), pos=_pos(meta), **fields), _pos(meta))

    def samples(self, meta, items):
        return _Setting("samples", _int(items[0], "samples", 1), _pos(meta))

    def calibration_seq(self, meta, items):
        return _Setting("seq", _int(items[0], "seq", 2), _pos(meta))

    def candidates(self, meta, items):
        return _Setting("candidates", _int(items[0], "candidates", 1), _pos(meta))

    def exhaustive(self, meta, items):
        return _Setting("exhaustive", _int(items[0], "exhaustive", 0), _pos(meta))

    # ------------------------------------------------------------------ emit
    def emit(self, meta, items):
        template, *rest = items
        s = _collect("emit", rest)
        return ast.Emit(template=_path(template), pos=_pos(meta), **_given(s, dtype="dtype", shard="shard"))

    def shard(self, meta, items):
        value = _float(items[0], "a shard size", allow=("bytes",))
        if value < 1:
            raise SurgeryError("a shard size must be at least 1 byte", pos=_pos(items[0]))
        return _Setting("shard", int(value), _pos(meta))

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, meta, items):
        s = _collect("evaluate", items)
        return ast.Evaluate(pos=_pos(meta), **_given(s, perplexity="perplexity", tasks="tasks", tasks_path="tasks_path",
                                                     limit="limit", baseline="baseline", report="report"))

    def perplexity(self, meta, items):
        text, *args = items
        seen = _collect("perplexity", args)
        fields = {k: v[0].value for k, v in seen.items()}
        ppl = ast.Perplexity(_path(text), pos=_pos(meta), **fields)
        if ppl.stride > ppl.seq:
            raise SurgeryError(f"stride {ppl.stride} is longer than seq {ppl.seq}", pos=_pos(meta),
                               hint="the window slides by `stride` tokens; keep stride <= seq")
        return _Setting("perplexity", ppl, _pos(meta))

    def perplexity_seq(self, meta, items):
        return _Setting("seq", _int(items[0], "seq", 2), _pos(meta))

    def stride(self, meta, items):
        return _Setting("stride", _int(items[0], "stride", 1), _pos(meta))

    def tasks(self, meta, items):
        names = tuple(str(t) for t in items)
        seen = set()
        for tok, name in zip(items, names):
            if name in seen:
                raise SurgeryError(f"task `{name}` is listed twice", pos=_pos(tok))
            seen.add(name)
        return _Setting("tasks", names, _pos(meta))

    def tasks_path(self, meta, items):
        return _Setting("tasks_path", _path(items[0]), _pos(meta))

    def limit(self, meta, items):
        return _Setting("limit", _int(items[0], "limit", 1), _pos(meta))

    def baseline(self, meta, items):
        return _Setting("baseline", str(items[0]), _pos(meta))

    def report(self, meta, items):
        return _Setting("report", _path(items[0]), _pos(meta))


def _check_warmup(settings: dict[str, list[_Setting]], batch: int) -> None:
    """A warmup step count must leave steps to train, when the run's length is known from the recipe."""
    schedule = _one(settings, "schedule")
    if schedule is None or schedule.warmup < 1:
        return
    steps = _one(settings, "steps")
    tokens = _one(settings, "tokens")
    if steps is None and tokens is not None:
        steps = math.ceil(tokens / (batch * _one(settings, "seq", _default(ast.Distill, "seq"))))
    if steps is not None and schedule.warmup >= steps:
        raise SurgeryError(f"warmup of {int(schedule.warmup)} steps is not shorter than the run's {steps} steps",
                           pos=schedule.pos, hint="warm up for part of the run, e.g. `warmup 1%`")


def _positive(tok: Token, what: str) -> float:
    value = _float(tok, what)
    if value <= 0:
        raise SurgeryError(f"{what} must be positive, got {tok}", pos=_pos(tok))
    return value


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"
