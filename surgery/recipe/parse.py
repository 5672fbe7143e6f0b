"""Parse `.boom` text into a `Recipe`: lark for syntax, one Transformer pass for meaning.

Syntax errors from lark become located `SurgeryError`s with a 'did you mean' hint drawn
from the keywords lark would have accepted at that point.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from surgery.errors import Pos, SurgeryError, did_you_mean
from surgery.recipe import ast
from surgery.recipe.units import parse_number

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "boom.lark"

SUPPORTED_VERSIONS = (1,)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


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


def parse(text: str, path: str | Path = "<recipe>") -> ast.Recipe:
    """Parse recipe text. Raises SurgeryError, located in `path`."""
    path = Path(path)
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


def _int(tok: Token, what: str, minimum: int = 0) -> int:
    value = parse_number(str(tok), allow=("count",), pos=_pos(tok), what=what)
    if value != int(value):
        raise SurgeryError(f"{what} must be a whole number, got {tok}", pos=_pos(tok))
    if value < minimum:
        raise SurgeryError(f"{what} must be at least {minimum}, got {tok}", pos=_pos(tok))
    return int(value)


def _plain_int(tok: Token, what: str) -> int:
    """A layer index or count written without units."""
    if not re.fullmatch(r"[0-9]+", str(tok)):
        raise SurgeryError(f"{what} must be a plain whole number, got `{tok}`", pos=_pos(tok))
    return int(str(tok))


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
        return ast.Teacher(
            source=_string(src),
            dtype=_one(s, "dtype", "bf16"),
            revision=_one(s, "revision"),
            trust_remote_code=_one(s, "trust_remote_code", False),
            pos=_pos(meta),
        )

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
        return ast.Student(
            path=_string(path), layers=layer_specs[0].value, init=_one(s, "init", "teacher"), pos=_pos(meta)
        )

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
        validation = s["validation"][0].value if "validation" in s else ast.Validation(fraction=0.005)
        losses = tuple(x.value for x in s["loss"]) if "loss" in s else ast.Distill.__dataclass_fields__["losses"].default
        kinds = [loss.kind for loss in losses]
        for i, kind in enumerate(kinds):
            if kind in kinds[:i]:
                raise SurgeryError(f"duplicate `loss {kind}`", pos=s["loss"][i].pos)
        batch = _one(s, "batch", 8)
        micro = _one(s, "micro_batch", 1)
        if batch % micro:
            raise SurgeryError(
                f"batch {batch} is not a multiple of micro_batch {micro}",
                pos=s["micro_batch"][0].pos if "micro_batch" in s else _pos(meta),
            )
        return ast.Distill(
            data=tuple(x.value for x in s["data"]),
            validation=validation,
            seq=_one(s, "seq", 2048),
            pack=_one(s, "pack", True),
            tokens=_one(s, "tokens"),
            steps=_one(s, "steps"),
            batch=batch,
            micro_batch=micro,
            optimizer=_one(s, "optimizer", ast.Optimizer()),
            schedule=_one(s, "schedule", ast.Schedule()),
            losses=losses,
            precision=_one(s, "precision", "bf16"),
            checkpoint_every=_one(s, "checkpoint", 50),
            eval_every=_one(s, "eval_every"),
            seed=_one(s, "seed", 0),
            device=_one(s, "device", "auto"),
            compile=_one(s, "compile", False),
            activation_checkpointing=_one(s, "activation_checkpointing", False),
            pos=_pos(meta),
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
        return ast.DataSource(str(kind), _string(path), pos=_pos(meta), **fields)

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
        return _Setting("validation", ast.Validation(text=_string(items[0]), pos=_pos(meta)), _pos(meta))

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
        return _Setting("optimizer", ast.Optimizer(name=str(name), pos=_pos(meta), **fields), _pos(meta))

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
        return _Setting("clip", _float(items[0], "clip"), _pos(meta))

    def eps(self, meta, items):
        return _Setting("eps", _positive(items[0], "eps"), _pos(meta))

    def schedule(self, meta, items):
        warmup = 0.01
        if len(items) > 1:
            warmup = _float(items[1], "warmup", allow=("fraction", "count"))
            if warmup < 0:
                raise SurgeryError("warmup cannot be negative", pos=_pos(items[1]))
        return _Setting("schedule", ast.Schedule(kind=str(items[0]), warmup=warmup, pos=_pos(meta)), _pos(meta))

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
        return _Setting("seed", _plain_int(items[0], "seed"), _pos(meta))

    def device(self, meta, items):
        return _Setting("device", str(items[0]), _pos(meta))

    def compile(self, meta, items):
        return _Setting("compile", str(items[0]) == "yes", _pos(meta))

    def activation_checkpointing(self, meta, items):
        return _Setting("activation_checkpointing", str(items[0]) == "yes", _pos(meta))

    # ------------------------------------------------------------------ patch
    def patch(self, meta, items):
        s = _collect("patch", items)
        order = _one(s, "order", "last_to_first")
        for name in ("candidates", "exhaustive"):
            if name in s and order != "optimal":
                raise SurgeryError(f"`{name}` applies to `order optimal`", pos=s[name][0].pos,
                                   hint="remove it, or use `order optimal`")
        return ast.Patch(
            order=order,
            sizes=_one(s, "sizes", ast.Sizes()),
            calibration=_one(s, "calibration"),
            candidates=_one(s, "candidates", ast.Patch.candidates),
            exhaustive=_one(s, "exhaustive", ast.Patch.exhaustive),
            pos=_pos(meta),
        )

    def order(self, meta, items):
        return _Setting("order", str(items[0]), _pos(meta))

    def order_list(self, meta, items):
        layers = tuple(int(str(t)[1:]) for t in items)
        for i, (tok, layer) in enumerate(zip(items, layers)):
            if layer in layers[:i]:
                raise SurgeryError(f"s{layer} appears twice in the order", pos=_pos(tok))
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
        return _Setting("calibration", ast.Calibration(_string(text), pos=_pos(meta), **fields), _pos(meta))

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
        return ast.Emit(
            template=_string(template), dtype=_one(s, "dtype", "bf16"), shard=_one(s, "shard", 5 * 10**9),
            pos=_pos(meta),
        )

    def shard(self, meta, items):
        value = _float(items[0], "a shard size", allow=("bytes",))
        if value < 1:
            raise SurgeryError("a shard size must be at least 1 byte", pos=_pos(items[0]))
        return _Setting("shard", int(value), _pos(meta))

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, meta, items):
        s = _collect("evaluate", items)
        return ast.Evaluate(
            perplexity=_one(s, "perplexity"),
            tasks=_one(s, "tasks", ()),
            tasks_path=_one(s, "tasks_path"),
            limit=_one(s, "limit"),
            baseline=_one(s, "baseline"),
            report=_one(s, "report"),
            pos=_pos(meta),
        )

    def perplexity(self, meta, items):
        text, *args = items
        seen = _collect("perplexity", args)
        fields = {k: v[0].value for k, v in seen.items()}
        ppl = ast.Perplexity(_string(text), pos=_pos(meta), **fields)
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
        for i, (tok, name) in enumerate(zip(items, names)):
            if name in names[:i]:
                raise SurgeryError(f"task `{name}` is listed twice", pos=_pos(tok))
        return _Setting("tasks", names, _pos(meta))

    def tasks_path(self, meta, items):
        return _Setting("tasks_path", _string(items[0]), _pos(meta))

    def limit(self, meta, items):
        return _Setting("limit", _int(items[0], "limit", 1), _pos(meta))

    def baseline(self, meta, items):
        return _Setting("baseline", str(items[0]), _pos(meta))

    def report(self, meta, items):
        return _Setting("report", _string(items[0]), _pos(meta))


def _positive(tok: Token, what: str) -> float:
    value = _float(tok, what)
    if value <= 0:
        raise SurgeryError(f"{what} must be positive, got {tok}", pos=_pos(tok))
    return value


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"
