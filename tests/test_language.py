"""The .boom language: every construct parses to the AST it means; `fmt` is canonical and safe."""

from __future__ import annotations

from pathlib import Path

import pytest
from recipe_text import HEAD

from surgery.errors import SurgeryError
from surgery.recipe import ast
from surgery.recipe.fmt import format_text
from surgery.recipe.parse import load, parse
from surgery.recipe.units import format_bytes, format_count, parse_number

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = ROOT / "tests" / "recipes" / "everything.boom"
RECIPES = sorted((ROOT / "recipes").glob("*.boom")) + sorted((ROOT / "tests" / "recipes").glob("*.boom"))

STUDENT = 'student "s" {\n    keep 0, 2, 4\n}\n'


def _parse(body: str = "", head: str = HEAD + STUDENT) -> ast.Recipe:
    return parse(head + body, "/tmp/r.boom")


# --------------------------------------------------------------------------- every construct


def test_every_construct_parses_to_its_meaning():
    r = load(EVERYTHING)
    assert r.version == 1
    assert r.teacher == ast.Teacher("teachers/tiny-qwen3", dtype="bf16", revision="main", trust_remote_code=False)
    assert r.student.path == "runs/everything/student"
    assert r.student.init == "random"
    assert r.student.layers.spans == (ast.LayerSpan(0, 0), ast.LayerSpan(2, 4, 2))
    d = r.distill
    assert d.data == (
        ast.DataSource("hf", "EleutherAI/the_pile_deduplicated", field="text", split="train", config="all", weight=3.0),
        ast.DataSource("text", "corpus/*.txt"),
        ast.DataSource("jsonl", "extra.jsonl", field="body"),
    )
    assert d.validation == ast.Validation(text="held-out/*.txt")
    assert (d.seq, d.pack, d.steps, d.tokens, d.batch, d.micro_batch) == (256, False, 500, None, 64, 8)
    assert d.optimizer == ast.Optimizer("adamw", lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, clip=1.0, eps=1e-8)
    assert d.schedule == ast.Schedule("linear", warmup=20.0)
    assert d.losses == (
        ast.Loss("ce", 1.0), ast.Loss("kl", 0.1, temperature=2.0), ast.Loss("reverse_kl", 0.05),
        ast.Loss("jsd", 0.05, beta=0.5), ast.Loss("cosine", 2.0), ast.Loss("mse", 0.5),
    )
    assert (d.precision, d.checkpoint_every, d.eval_every, d.seed) == ("fp32", 25, 100, 7)
    assert (d.device, d.compile, d.activation_checkpointing) == ("cpu", False, True)
    assert r.patch == ast.Patch("last_to_first", ast.Sizes("params", (55e3, 1e6)),
                                ast.Calibration("calib/*.txt", samples=16, seq=128))
    assert r.emit == ast.Emit("runs/everything/models/{layers}L-{params}-{patched}", dtype="fp16", shard=2 * 10**9)
    assert r.evaluate == ast.Evaluate(ast.Perplexity("data/wikitext-test.txt", seq=256, stride=128),
                                      tasks=("arc_easy", "hellaswag", "piqa"), tasks_path="tasks", limit=100,
                                      baseline="naive_pruning", report="runs/everything/report")


def test_every_grammar_rule_appears_in_the_example_recipes():
    """Each rule and named alternative of the grammar occurs in recipes/ or tests/recipes/."""
    import re

    from surgery.recipe.parse import _parser

    grammar = (ROOT / "grammar" / "boom.lark").read_text()
    rules = re.findall(r"^(\??)([a-z]\w*):(.*?)(?=^\S|\Z)", grammar, re.M | re.S)
    aliases = set(re.findall(r"->\s*(\w+)", grammar))
    # A rule leaves a node of its own unless it is inlined (`?rule`) or all its alternatives are aliased.
    names = aliases | {name for q, name, body in rules if not q and "->" not in body}
    inlined = {name for q, name, _ in rules if q}
    seen = {t.data for path in RECIPES for t in _parser().parse(path.read_text()).iter_subtrees()}
    assert names - seen == set()
    assert inlined.isdisjoint(seen)


def test_paper_rule_and_map_and_list_parse():
    rule = _parse(head=HEAD + 'student "s" {\n    keep first 1 every 2 last 2\n}\n').student.layers
    assert rule == ast.KeepRule(1, 2, 2)
    m = _parse(head=HEAD + 'student "s" {\n    map {\n        0 <- 0..1\n        1 <- 2\n    }\n}\n').student.layers
    assert m == ast.LayerMap((ast.MapEntry(0, ast.LayerSpan(0, 1)), ast.MapEntry(1, ast.LayerSpan(2, 2))))
    assert ast.LayerSpan(2, 34, 2).layers() == tuple(range(2, 35, 2))


def test_map_entries_may_share_a_line():
    one_line = _parse(head=HEAD + 'student "s" {\n    map { 0 <- 0..1  1 <- 2..5 }\n}\n')
    many = _parse(head=HEAD + 'student "s" {\n    map {\n        0 <- 0..1\n        1 <- 2..5\n    }\n}\n')
    assert one_line == many


def test_semicolons_and_one_line_blocks_mean_the_same():
    a = parse('boom 1; teacher "t" { dtype fp32 }; student "s" { keep 0, 2; init random }', "/tmp/r.boom")
    b = parse('boom 1\nteacher "t" {\n    dtype fp32\n}\nstudent "s" {\n    keep 0, 2\n    init random\n}\n',
              "/tmp/r.boom")
    assert a == b


def test_comments_and_blank_lines_are_ignored():
    plain = _parse()
    commented = parse("# header\n\nboom 1  # version\n\n\nteacher \"t\" {  # t\n    # inside\n    dtype fp32\n}\n"
                      "# between\nstudent \"s\" {\n    keep 0, 2, 4  # kept\n}\n# end", "/tmp/r.boom")
    assert commented == plain


def test_defaults():
    r = _parse()
    assert r.teacher == ast.Teacher("t", dtype="fp32")
    assert r.student.init == "teacher"
    assert r.distill is None and r.emit is None and r.evaluate is None
    assert r.patch == ast.Patch("last_to_first", ast.Sizes("all"), None)
    d = _parse('distill {\n    data text "x"\n}\n').distill
    assert d.losses == (ast.Loss("ce", 1.0), ast.Loss("kl", 0.1), ast.Loss("cosine", 2.0))
    assert d.validation == ast.Validation(fraction=0.005)
    assert (d.seq, d.batch, d.micro_batch, d.checkpoint_every, d.seed) == (2048, 8, 1, 50, 0)
    assert _parse('emit "m/{layers}" {\n}\n').emit == ast.Emit("m/{layers}", dtype="bf16", shard=5 * 10**9)


def test_positions_are_kept_but_not_compared():
    r = _parse()
    assert r.student.pos.line == 5 and r.student.pos.col == 1
    assert r.student.layers.spans[2].pos.line == 6 and r.student.layers.spans[2].pos.col == 16


def test_strings_take_escapes():
    r = _parse(head='boom 1\nteacher "a \\"quoted\\" dir" {\n}\n' + STUDENT)
    assert r.teacher.source == 'a "quoted" dir'


def test_paths_resolve_against_the_recipe_directory(tmp_path):
    r = parse(HEAD + STUDENT, tmp_path / "sub" / "r.boom")
    assert r.resolve("runs/x") == (tmp_path / "sub" / "runs" / "x").resolve()
    assert r.resolve("/abs/x") == Path("/abs/x")


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("setting, field, value", [
    ("tokens 2.1B", "tokens", 2_100_000_000),
    ("tokens 500M", "tokens", 500_000_000),
    ("tokens 1e6", "tokens", 1_000_000),
    ("steps 1K", "steps", 1000),
    ("validation 0.5%", "validation", ast.Validation(fraction=0.005)),
    ("validation 0.01", "validation", ast.Validation(fraction=0.01)),
])
def test_distill_units(setting, field, value):
    d = _parse(f'distill {{\n    data text "x"\n    {setting}\n}}\n').distill
    assert getattr(d, field) == value


def test_unit_kinds():
    assert _parse('emit "m/{layers}" {\n    shard 500MB\n}\n').emit.shard == 500 * 10**6
    assert _parse("patch {\n    sizes bytes 6GB, 7.5GB\n}\n").patch.sizes == ast.Sizes("bytes", (6e9, 7.5e9))
    assert _parse("patch {\n    sizes params 3B, 3.5B\n}\n").patch.sizes == ast.Sizes("params", (3e9, 3.5e9))
    assert _parse("patch {\n    sizes layers 24, 28\n}\n").patch.sizes == ast.Sizes("layers", (24.0, 28.0))
    assert _parse("patch {\n    sizes 1, 4, 8\n}\n").patch.sizes == ast.Sizes("patched", (1.0, 4.0, 8.0))
    assert _parse("patch {\n    order [s3, s1]\n}\n").patch.order == (3, 1)
    assert _parse('distill {\n    data text "x"\n    schedule cosine warmup 1%\n}\n').distill.schedule.warmup == 0.01
    assert parse_number("3e-4", allow=("plain",)) == 3e-4


@pytest.mark.parametrize("body, message", [
    ('emit "m/{layers}" {\n    shard 5B\n}\n', "a shard size takes a size in bytes"),
    ("patch {\n    sizes params 3GB\n}\n", "a parameter count takes a count"),
    ("patch {\n    sizes 1.5\n}\n", "must be a plain whole number"),
    ('distill {\n    data text "x"\n    seq 2.5\n}\n', "seq must be a whole number"),
    ('distill {\n    data text "x"\n    tokens 5%\n}\n', "tokens takes a count"),
])
def test_unit_errors(body, message):
    with pytest.raises(SurgeryError) as info:
        _parse(body)
    assert info.value.pos is not None
    if message:
        assert message in info.value.message


def test_number_formatting():
    assert format_count(2_306_644_224) == "2.31B"
    assert format_count(389_000_000) == "389M"
    assert format_bytes(5 * 10**9) == "5GB"
    assert format_bytes(512) == "512B"


# --------------------------------------------------------------------------- fmt


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_canonical(path):
    text = path.read_text()
    assert format_text(text, path) == text


MESSY = '''# header comment

boom 1 # the version
teacher "t" { dtype fp32 ; revision "m" } # after the block


    # a full-line comment, badly indented
student "s" {   # the student
 map { 0 <- 0..1 1 <- 2..5  # two entries on a line
   # between entries
   2<-6..7
 }


 init   teacher    # aligned with the line above
 # before the closing brace
}
patch { order [ s1 ,s0 ]; sizes 1,2 }
# trailing comment'''

CANONICAL = '''# header comment

boom 1  # the version

teacher "t" {
    dtype fp32
    revision "m"
}  # after the block

# a full-line comment, badly indented
student "s" {  # the student
    map {
        0 <- 0..1
        1 <- 2..5  # two entries on a line
        # between entries
        2 <- 6..7
    }

    init teacher  # aligned with the line above
    # before the closing brace
}

patch {
    order [s1, s0]
    sizes 1, 2
}

# trailing comment
'''


def test_fmt_layout_and_comments():
    assert format_text(MESSY) == CANONICAL


def test_fmt_is_idempotent_and_keeps_the_meaning():
    assert format_text(CANONICAL) == CANONICAL
    assert parse(CANONICAL, "/tmp/r.boom") == parse(MESSY, "/tmp/r.boom")


def test_fmt_aligns_runs_of_trailing_comments():
    text = 'boom 1\nteacher "t" { # hub id\n    dtype bf16 # bf16 | fp16\n    revision "main"\n}\n'
    assert format_text(text).splitlines()[2:5] == [
        'teacher "t" {   # hub id',
        "    dtype bf16  # bf16 | fp16",
        '    revision "main"',
    ]
    text = 'boom 1\nteacher "t" {\n    dtype bf16  # a\n    revision "main"  # b\n}\n'
    assert format_text(text).splitlines()[3:5] == ["    dtype bf16       # a", '    revision "main"  # b']


def test_fmt_keeps_numbers_and_strings_as_written():
    text = ('boom 1\n\nteacher "t" {\n}\n\n'
            'distill {\n    data text "a\\"b"\n    tokens 2.1B\n    optimizer adamw lr 3E-4\n}\n')
    assert format_text(text) == text


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_fmt_round_trips_shipped_recipes_reflowed(path):
    """Squash a recipe onto as few lines as the syntax allows; fmt restores the same meaning."""
    text = path.read_text()
    squashed = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    formatted = format_text(squashed)
    assert parse(formatted, path) == parse(text, path)
    assert format_text(formatted) == formatted


def test_fmt_rejects_bad_syntax_with_a_location():
    with pytest.raises(SurgeryError) as info:
        format_text(HEAD + 'student "s" {\n    keep 0,, 2\n}\n', "r.boom")
    assert str(info.value).startswith("r.boom:6:12: error: unexpected `,`")


def test_fmt_needs_syntax_only():
    """A recipe with a meaning error (a duplicate setting) still formats, error intact."""
    text = 'boom 1\nteacher "t" {\n  dtype fp32\n  dtype bf16\n}\n' + STUDENT
    formatted = format_text(text)
    assert formatted.splitlines()[3:5] == ["    dtype fp32", "    dtype bf16"]
    with pytest.raises(SurgeryError, match="duplicate `dtype`"):
        parse(formatted)
