"""Fuzzing the front end: whatever the text, the result is a valid recipe or a clean SurgeryError.

Three sources of text: arbitrary characters, soups of the language's own words, and random
edits of the shipped recipes (which reach much deeper into the checks). For text that parses,
`fmt` must keep the meaning and be idempotent, and compiling must again give a result or a
clean error. Example counts keep the whole file to a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgery.compile import compile_recipe
from surgery.errors import SurgeryError
from surgery.recipe import ast
from surgery.recipe.fmt import format_text
from surgery.recipe.parse import _keywords, parse

ROOT = Path(__file__).resolve().parent.parent
RECIPE_FILES = sorted((ROOT / "recipes").glob("*.boom")) + sorted((ROOT / "tests" / "recipes").glob("*.boom"))
SHIPPED = [(p, p.read_text()) for p in RECIPE_FILES]

WORDS = sorted({w for v in _keywords().values() for w in v.split("|")}) + [
    "{", "}", "[", "]", ",", ";", "\n", "\n\n", "# note\n", '"x"', '"runs/{layers}L"', '"Qwen/Qwen3-4B-Base"',
    '"bad\\', "0", "1", "2", "35", "0..3", "2..34 step 2", "2.1B", "5GB", "0.5%", "3e-4", "1e999", "-1",
    "99999999999999999999", "s1", "s99", "<-", "..", "@", "\t", "yes", "no",
]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def _outcome(text: str, path: Path):
    """The parsed recipe, or ('error', message) after checking the error is clean."""
    try:
        recipe = parse(text, path)
    except SurgeryError as err:
        _assert_clean(err, text, path)
        return ("error", err.message)
    assert isinstance(recipe, ast.Recipe)
    assert isinstance(recipe.teacher, ast.Teacher) and isinstance(recipe.student, ast.Student)
    return recipe


def _assert_clean(err: SurgeryError, text: str, path: Path) -> None:
    assert err.file == str(path)
    assert err.message and "\n" not in err.message and "Traceback" not in str(err)
    if err.pos is not None:
        lines = text.split("\n")  # lines as the parser counts them
        assert 1 <= err.pos.line <= len(lines)
        assert 1 <= err.pos.col <= len(lines[err.pos.line - 1]) + 1
        assert str(err).startswith(f"{path}:{err.pos.line}:{err.pos.col}: error: ")
        if err.source_line is not None:  # the caret's line is the line the position names
            assert err.source_line == lines[err.pos.line - 1]


def _front_end(text: str, path: Path):
    """Parse, and check fmt against the parse: same outcome after formatting, and idempotent."""
    outcome = _outcome(text, path)
    try:
        formatted = format_text(text, path)
    except SurgeryError as err:  # only a syntax error stops fmt
        _assert_clean(err, text, path)
        assert isinstance(outcome, tuple)
        return outcome
    assert _outcome(formatted, path) == outcome
    assert format_text(formatted, path) == formatted
    return outcome


@FAST
@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs", "Zl", "Cc"]), max_size=120))
def test_random_text(text):
    _front_end(text, ROOT / "fuzz.boom")


@FAST
@given(st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join))
def test_word_soup(text):
    _front_end("boom 1\n" + text, ROOT / "fuzz.boom")


def _edit(text: str, data) -> str:
    """One random edit: delete, insert a word, duplicate or drop a line, swap two lines, or cut."""
    kind = data.draw(st.sampled_from(["delete", "insert", "duplicate", "drop", "swap", "cut", "replace"]))
    lines = text.splitlines(keepends=True)
    at = data.draw(st.integers(0, len(text)))
    if kind == "delete":
        return text[:at] + text[at + data.draw(st.integers(1, 12)):]
    if kind == "insert":
        return text[:at] + data.draw(st.sampled_from(WORDS)) + " " + text[at:]
    if kind == "replace":  # a number or word in place, keeping the rest of the line
        return text[:at] + data.draw(st.sampled_from(WORDS)) + text[at + data.draw(st.integers(1, 6)):]
    if kind == "cut" or not lines:
        return text[:at]
    i, j = (data.draw(st.integers(0, len(lines) - 1)) for _ in range(2))
    if kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "drop":
        del lines[i]
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SHIPPED), st.data())
def test_mutated_recipes(shipped, data):
    path, text = shipped
    for _ in range(data.draw(st.integers(1, 3))):
        text = _edit(text, data)
    outcome = _front_end(text, path)
    if isinstance(outcome, ast.Recipe):
        try:
            compiled = compile_recipe(outcome)
        except SurgeryError as err:
            assert err.message and "Traceback" not in str(err)
        else:
            assert compiled.graph.n_student < compiled.graph.n_teacher
            assert all(0 <= s.k <= len(compiled.graph.patchable) for s in compiled.steps)


def test_hub_ids_the_hub_would_refuse_are_clean_errors(tmp_path):
    """Found by the fuzzer: `Qwen/Qwen3--4B` matched the id pattern but crashed the hub client."""
    recipe = parse('boom 1\nteacher "Qwen/Qwen3--4B" {\n}\nstudent "s" {\n    keep 0\n}\n', tmp_path / "r.boom")
    with pytest.raises(SurgeryError, match="neither a local directory nor a valid hub id"):
        compile_recipe(recipe)


@pytest.mark.parametrize("path, text", SHIPPED, ids=[p.name for p, _ in SHIPPED])
def test_every_prefix_of_a_recipe(path, text):
    """Every truncation of a shipped recipe (line by line) is a recipe or a clean error."""
    lines = text.splitlines(keepends=True)
    for n in range(len(lines) + 1):
        _front_end("".join(lines[:n]), path)
