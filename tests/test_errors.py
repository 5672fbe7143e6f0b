"""Every class of user error: one located line `FILE:LINE:COL: error: ...`, a caret, a hint.

Each case is a whole recipe; HEAD holds lines 1-4 (`boom 1` and the teacher block), so a
student block starts on line 5. The teacher `t` is a directory holding config.json only.
"""

from __future__ import annotations

import json

import pytest
from recipe_text import HEAD, QWEN, write

from surgery.compile import compile_file
from surgery.errors import SurgeryError

S = 'student "s" {\n'
STUDENT = S + "    keep 0, 2, 4\n}\n"
KEEP = HEAD + STUDENT  # lines 1-7
DISTILL = KEEP + 'distill {\n    data text "x"\n'  # the distill block opens on line 8; line 10 is next


def _map(*entries: str) -> str:
    return HEAD + S + "    map {\n" + "".join(f"        {e}\n" for e in entries) + "    }\n}\n"


CASES = [
    # -- syntax, unknown keywords and settings
    ("unknown setting", 'boom 1\nteacher "t" {\n    dtpe fp32\n}\n', 3, 5, "unexpected `dtpe`",
     "did you mean `dtype`?"),
    ("unknown block", 'boom 1\nteachr "t" {\n}\n', 2, 1, "unexpected `teachr`", "did you mean `teacher`?"),
    ("unknown value", HEAD + S + "    keep 0, 2, 4\n    init teachr\n}\n", 7, 10, "unexpected `teachr`",
     "did you mean `teacher`?"),
    ("keyword prefix", DISTILL + "    loss cee 1\n}\n", 10, 10, "unknown word `cee`", "did you mean `ce`?"),
    ("missing brace", HEAD + S + "    keep 0, 2, 4\n", 6, 17, "unexpected end of file", "is a `}` missing?"),
    ("stray character", HEAD + S + "    keep 0, 2, 4 @\n}\n", 6, 18, "unexpected `@`", None),
    ("statement cut short", 'boom 1\nteacher "t" {\n    dtype\n}\n', 3, 10, "unexpected end of line",
     "settings take their values on the same line"),
    ("wrong unit", DISTILL + "    tokens 1GB\n}\n", 10, 13, "tokens takes a count", None),
    ("missing version", 'teacher "t" {\n}\n', 1, 1, "unexpected `teacher`", "a recipe starts with `boom 1`"),
    ("unsupported version", 'boom 2\nteacher "t" {\n}\n', 1, 6, "unsupported recipe version `boom 2`", "boom 1"),
    # -- duplicates and missing pieces
    ("duplicate setting", 'boom 1\nteacher "t" {\n    dtype fp32\n    dtype bf16\n}\n', 4, 5,
     "duplicate `dtype` in `teacher`", "first set on line 3"),
    ("duplicate block", HEAD + 'teacher "u" {\n}\n' + STUDENT, 5, 1, "duplicate `teacher` block", None),
    ("duplicate loss", DISTILL + "    loss kl 0.1\n    loss kl 0.2\n}\n", 11, 5, "duplicate `loss kl`", None),
    ("missing student", HEAD, 1, 1, "missing `student` block", 'student "path"'),
    ("keep and map", HEAD + S + "    keep 0, 2, 4\n    map {\n        0 <- 0..5\n    }\n}\n", 7, 5,
     "`keep` or `map`, not both", None),
    ("tokens and steps", DISTILL + "    tokens 1M\n    steps 10\n}\n", 11, 5, "give `tokens` or `steps`", None),
    # -- layers out of range, unsorted, overlapping, leaving gaps
    ("keep out of range", HEAD + S + "    keep 0, 2, 9\n}\n", 6, 16, "layer 9 is out of range",
     "the teacher has 6 layers (0..5)"),
    ("map out of range", _map("0 <- 0..1", "1 <- 2..9"), 8, 14, "layer 9 is out of range",
     "the teacher has 6 layers (0..5)"),
    ("keep unsorted", HEAD + S + "    keep 0, 4, 2\n}\n", 6, 16, "kept layers must be in order: 2 comes after 4",
     "first to last"),
    ("keep twice", HEAD + S + "    keep 0, 2, 2\n}\n", 6, 16, "layer 2 is kept twice", None),
    ("keep gap at start", HEAD + S + "    keep 1, 3\n}\n", 6, 10, "no block holds teacher layer 0", "keep layer 0"),
    ("backwards range", HEAD + S + "    keep 0, 4..2\n}\n", 6, 13, "range 4..2 runs backwards", "write 2..4"),
    ("map overlap", _map("0 <- 0..2", "1 <- 2..5"), 8, 14, "block 2..5 overlaps the block before it",
     "start at layer 3"),
    ("map gap", _map("0 <- 0..1", "1 <- 3..5"), 8, 14, "no block holds teacher layer 2", "start at layer 2"),
    ("map gap at end", _map("0 <- 0..1", "1 <- 2..3"), 8, 9, "no block holds teacher layers 4..5",
     "end at layer 5"),
    ("map student order", _map("1 <- 0..5"), 7, 9, "student layer 1 is listed where layer 0 belongs", None),
    ("map step", _map("0 <- 0..4 step 2", "1 <- 5"), 7, 14, "`step` does not apply", None),
    # -- empty or full-depth students
    ("empty student", HEAD + S + "    map {\n    }\n}\n", 6, 5, "the student has no layers", None),
    ("student as deep as teacher", HEAD + S + "    keep 0..5\n}\n", 6, 5, "keeps all 6 teacher layers",
     "keep fewer layers"),
    ("rule without layer 0", HEAD + S + "    keep first 0 every 2 last 1\n}\n", 6, 5, "`first` must be at least 1",
     None),
    # -- sizes and orders
    ("more steps than exist", KEEP + "patch {\n    sizes 1, 9\n}\n", 9, 5,
     "sizes ask for 9 patched layers, but there are only 3 patch steps", "0 to 3"),
    ("size below the student", KEEP + "patch {\n    sizes layers 2\n}\n", 9, 5,
     "no model fits `sizes layers 2`: the student alone is 3 layers", None),
    ("order names a missing layer", KEEP + "patch {\n    order [s9]\n}\n", 8, 1, "the order names s9", "s0..s2"),
    ("order repeats a layer", KEEP + "patch {\n    order [s1, s1]\n}\n", 9, 16, "s1 appears twice", None),
    ("measured order without calibration", KEEP + "patch {\n    order klpatch\n}\n", 8, 1,
     "measures KL on calibration data", "calibration text"),
    # -- output paths
    ("emit without placeholder", KEEP + 'emit "models" {\n}\n', 8, 1,
     "the emit path has no placeholder, but 3 sizes are emitted", "{layers}"),
    ("emit unknown placeholder", KEEP + 'emit "models/{size}" {\n}\n', 8, 1, "unknown placeholder `{size}`",
     "{layers}, {params}, {patched}"),
    ("emit template unbalanced", KEEP + 'emit "models/{layers" {\n}\n', 8, 1, "the emit path is not a valid template",
     "{{"),
    ("emit template positional", KEEP + 'emit "models/{}" {\n}\n', 8, 1, "unknown placeholder `{}`", None),
    ("emit template format spec", KEEP + 'emit "models/{params:d}" {\n}\n', 8, 1, "unknown placeholder `{params:d}`",
     None),
    ("student is the teacher", HEAD + 'student "t" {\n    keep 0, 2, 4\n}\n', 5, 1,
     "the student directory is the teacher's directory", None),
    ("emit is the teacher", KEEP + "patch {\n    sizes 1\n}\n" + 'emit "t" {\n}\n', 11, 1,
     "is the teacher's directory", "a directory of its own"),
    ("emit is the student", KEEP + "patch {\n    sizes 1\n}\n" + 'emit "s" {\n}\n', 11, 1,
     "is the student's directory", None),
    # -- settings with checked values
    ("batch not a multiple", DISTILL + "    batch 10\n    micro_batch 4\n}\n", 11, 5,
     "batch 10 is not a multiple of micro_batch 4", None),
    ("validation fraction", DISTILL + "    validation 150%\n}\n", 10, 16, "between 0% and 100%", None),
    ("beta on kl", DISTILL + "    loss kl 0.1 beta 0.5\n}\n", 10, 17, "`beta` applies to `loss jsd`", None),
    ("temperature on ce", DISTILL + "    loss ce 1 temperature 2\n}\n", 10, 15, "`temperature` applies to the KL",
     None),
    ("split on text data", KEEP + 'distill {\n    data text "x" split "train"\n}\n', 9, 19,
     "`split` applies to `data hf`", None),
    ("task listed twice", KEEP + "evaluate {\n    tasks piqa, arc_easy, piqa\n}\n", 9, 27,
     "task `piqa` is listed twice", None),
]


@pytest.mark.parametrize("text, line, col, message, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_is_located(tmp_path, text, line, col, message, hint):
    path = write(tmp_path, text)
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    err = info.value
    first, *rest = str(err).splitlines()
    assert first.startswith(f"{path}:{line}:{col}: error: "), str(err)
    assert message in first
    if hint is None:
        return
    assert hint in err.hint
    assert rest[-1] == f"  hint: {err.hint}"


def test_caret_points_at_the_column(tmp_path):
    path = write(tmp_path, HEAD + S + "    keep 0, 2, 9\n}\n")
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    _, source, caret, _ = str(info.value).splitlines()
    assert source == "        keep 0, 2, 9"
    assert caret == "    " + " " * 15 + "^"


def test_caret_line_counts_newlines_only(tmp_path):
    """A form feed is blank space to the parser, not a line break: the caret stays on its line."""
    path = write(tmp_path, 'boom 1\x0c\x0c\nteacher "t" {\n}\nstudent "s" {\n    keep 4..2\n}\n')
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    assert str(info.value).splitlines()[:3] == [f"{path}:5:10: error: range 4..2 runs backwards",
                                                "        keep 4..2", "             ^"]


# -- the teacher's config: missing, unreadable, unknown, or needing remote code

TEACHER_CASES = [
    ("missing config", None, "no config.json in", "point at a Hugging Face model directory"),
    ("unreadable config", "{ not json", "cannot read", None),
    ("unknown architecture", json.dumps({"model_type": "mamba_x", "num_hidden_layers": 6}),
     "model_type `mamba_x`, which has no known layer layout", "known: "),
    ("remote code not granted",
     json.dumps({"model_type": "weird_lm", "auto_map": {"AutoModelForCausalLM": "modeling_weird.WeirdLM"},
                 "num_hidden_layers": 6}),
     "the teacher's `weird_lm` architecture runs code from its repository", "trust_remote_code yes"),
]


@pytest.mark.parametrize("config, message, hint", [c[1:] for c in TEACHER_CASES], ids=[c[0] for c in TEACHER_CASES])
def test_teacher_config_errors_point_at_the_teacher(tmp_path, config, message, hint):
    (tmp_path / "t").mkdir()
    if config is not None:
        (tmp_path / "t" / "config.json").write_text(config)
    path = write(tmp_path, KEEP)
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{path}:2:1: error: ")
    assert message in first
    if hint:
        assert hint in info.value.hint


def test_unknown_architecture_lists_the_known_ones(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"model_type": "mamba_x"}))
    with pytest.raises(SurgeryError) as info:
        compile_file(write(tmp_path, KEEP))
    for family in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3"):
        assert family in info.value.hint


def test_granting_remote_code_passes_the_gate(tmp_path):
    """With `trust_remote_code yes` the remote-code check is passed; the unknown layout remains."""
    (tmp_path / "t").mkdir()
    config = {"model_type": "weird_lm", "auto_map": {"AutoModelForCausalLM": "m.W"}, "num_hidden_layers": 6}
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    text = 'boom 1\nteacher "t" {\n    trust_remote_code yes\n}\n' + STUDENT
    with pytest.raises(SurgeryError) as info:
        compile_file(write(tmp_path, text))
    assert "no known layer layout" in info.value.message


def test_known_architecture_needs_no_remote_code(tmp_path):
    """An auto_map next to a known model_type (common in hub configs) is not remote code we run."""
    (tmp_path / "t").mkdir()
    config = json.loads((QWEN / "config.json").read_text()) | {"auto_map": {"AutoModelForCausalLM": "m.W"}}
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    assert compile_file(write(tmp_path, KEEP)).graph.n_teacher == 6


def test_teacher_directory_not_found(tmp_path):
    path = write(tmp_path, 'boom 1\nteacher "./nope" {\n}\n' + STUDENT)
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    assert str(info.value).startswith(f"{path}:2:1: error: teacher directory not found")


def test_uncached_hub_teacher_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write(tmp_path, 'boom 1\nteacher "no-such-org/no-such-model" {\n}\n' + STUDENT)
    with pytest.raises(SurgeryError) as info:
        compile_file(path)
    assert str(info.value).startswith(f"{path}:2:1: error: teacher `no-such-org/no-such-model` is not cached")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(SurgeryError, match="recipe not found"):
        compile_file(tmp_path / "absent.boom")
