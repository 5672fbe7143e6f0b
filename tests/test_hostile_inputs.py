"""Hostile inputs to every command: each ends in one `error:` line and exit status 1 (2 for a
wrong command line), never a traceback, and nothing is written before the inputs are checked.

The table drives `surgery.cli.main` in-process (so an exception that escapes fails the test
with its traceback); the cases marked `proc` run `python -m surgery` as a user would. Each
case writes its inputs into a fresh folder: `t` is a config-only Qwen3 teacher (6 layers,
4096 positions), `g` a config-only GPT-2 (128 positions), `real` a tiny Qwen3 with weights
(6 layers, 128 positions), `afile` a plain file, `locked` a folder nothing can be written to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from recipe_text import QWEN
from tiny import config_for, save_tokenizer

from surgery.cli import main
from surgery.recipe.fmt import format_text

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))

HEAD = 'boom 1\nteacher "t" {\n    dtype fp32\n}\n'  # lines 1-4
KEEP = 'student "s" {\n    keep 0, 2, 4\n}\n'  # lines 5-7
DISTILL = HEAD + KEEP + 'distill {\n    data text "x"\n'  # opens on line 8; the next line is 10
REAL = 'boom 1\nteacher "real" {\n    dtype fp32\n}\nstudent "s" {\n    keep first 1 every 2 last 1\n}\n'
EMIT = 'emit "m/{layers}L" {\n    dtype fp32\n}\n'


def distill(*lines: str) -> str:
    return DISTILL + "".join(f"    {line}\n" for line in lines) + "}\n"


@dataclass
class Case:
    id: str
    argv: list[str]  # `R` is the recipe; other words are paths inside the case folder where they exist
    match: str  # a regex the `error:` line must match
    recipe: str | bytes | None = None
    setup: Callable[[Path], None] | None = None  # more inputs, given the case folder
    rc: int = 1
    proc: bool = False  # run as a subprocess
    needs: tuple[str, ...] = ()  # "real" (a teacher with weights), "locked" (a folder nothing can write to)
    untouched: tuple[str, ...] = ()  # paths that must not exist afterwards: nothing was written


# --------------------------------------------------------------------------- inputs the cases share
def _config(path: Path, value) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(value if isinstance(value, str) else json.dumps(value))


def _edit_config(**changes):
    def setup(d: Path) -> None:
        config = json.loads((d / "t" / "config.json").read_text())
        config.update(changes)
        _config(d / "t", {k: v for k, v in config.items() if v is not None})
    return setup


def _raw_config(text: str):
    return lambda d: _config(d / "t", text)


def _broken_teacher(change: str):
    """A copy of the real teacher with one tensor dropped or cut to the wrong shape."""
    def setup(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        (d / "real").unlink()
        shutil.copytree(d / "real-src", d / "real")
        tensors = load_file(d / "real" / "model.safetensors")
        if change == "drop":
            del tensors["model.layers.3.mlp.up_proj.weight"]
        else:
            tensors["model.norm.weight"] = tensors["model.norm.weight"][:16].clone()
        save_file(tensors, d / "real" / "model.safetensors", metadata={"format": "pt"})
    return setup


def _pickled_model(name: str, layers: int = 2):
    """A real tiny model as a pickle: config.json and pytorch_model.bin, which transformers loads
    when nothing stops it. (transformers 5 ignores `safe_serialization=False`, so the state dict
    is written the way older versions wrote it.)"""
    def setup(d: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_for("qwen3", layers)))
        model.config.save_pretrained(d / name)
        torch.save(model.state_dict(), d / name / "pytorch_model.bin")
        save_tokenizer(d / name)
    return setup


def _student(d: Path) -> None:
    """The pruned student of the real teacher, in d/s."""
    (d / "ok.boom").write_text(REAL)
    assert main(["init-student", str(d / "ok.boom")]) == 0


def _truncated_student(d: Path) -> None:
    _student(d)
    weights = d / "s" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])


def _half_student(d: Path) -> None:
    """What an interrupted copy leaves: a config.json and no weights."""
    (d / "s").mkdir()
    shutil.copy(d / "real" / "config.json", d / "s" / "config.json")


def _other_student(d: Path) -> None:
    """A student of another teacher: same family and depth, twice the width."""
    from tiny import save_teacher

    other = save_teacher(d / "wide", "qwen3", layers=6, hidden=64)
    (d / "wide.boom").write_text(REAL.replace('"real"', '"wide"'))
    assert main(["init-student", str(d / "wide.boom")]) == 0
    assert other.is_dir()


def _both(*setups):
    def setup(d: Path) -> None:
        for s in setups:
            s(d)
    return setup


LONG = "0, " * 40_000

CASES = [
    # -- malformed recipes: syntax, characters, encoding, size
    Case("nbsp", ["check", "R"], r"r\.boom:2:12: error: unexpected invisible character U\+00A0 \(NO-BREAK SPACE\)",
         'boom 1\nteacher "t"\u00a0{\n}\n', proc=True),
    Case("zero width space", ["check", "R"], r"r\.boom:3:10: error: unexpected invisible character U\+200B",
         'boom 1\nteacher "t" {\n    dtype\u200b fp32\n}\n'),
    Case("curly quote", ["check", "R"], r"r\.boom:2:9: error: unexpected `\u201c` \(U\+201C",
         'boom 1\nteacher \u201ct" {\n}\n'),
    Case("unknown unit", ["check", "R"], r"r\.boom:10:15: error: unknown unit `Q`", distill("tokens 2.1Q")),
    Case("lower-case unit", ["check", "R"], r"r\.boom:10:15: error: unknown unit `b`", distill("tokens 2.1b")),
    Case("unit of the wrong kind", ["check", "R"], r"r\.boom:10:13: error: tokens takes a count", distill("tokens 1GB")),
    Case("missing brace", ["check", "R"], r"r\.boom:\d+:\d+: error: unexpected end of file", HEAD + 'student "s" {\n'),
    Case("not utf-8", ["check", "R"], r"error: cannot read recipe .*r\.boom", b'boom 1\nteacher "\xff" {\n}\n'),
    Case("nul byte", ["check", "R"], r"r\.boom:2:9: error: unexpected invisible character U\+0000",
         'boom 1\nteacher \x00"t" {\n}\n'),
    Case("empty recipe", ["check", "R"], r"r\.boom:1:1: error: unexpected end of file", ""),
    Case("recipe is a folder", ["check", "afolder"], r"error: cannot read recipe .*afolder",
         setup=lambda d: (d / "afolder").mkdir()),
    Case("recipe missing", ["check", "nowhere.boom"], r"error: recipe not found: .*nowhere\.boom"),
    Case("huge recipe", ["check", "R"], r"r\.boom: error: the recipe is [\d,]+ characters long",
         HEAD + f'student "s" {{\n    keep {LONG}1\n}}\n', proc=True),
    Case("fmt of a bad recipe", ["fmt", "R"], r"r\.boom:3:10: error: unexpected invisible character",
         'boom 1\nteacher "t" {\n    dtype\u200b fp32\n}\n'),
    Case("diff of a bad recipe", ["diff", "R", "R"], r"r\.boom:10:24: error: lr `1e999`",
         distill("optimizer adamw lr 1e999")),
    # -- numbers out of range
    Case("lr infinite", ["check", "R"], r"r\.boom:10:24: error: lr `1e999` is too large to be a number",
         distill("optimizer adamw lr 1e999"), proc=True),
    Case("tokens infinite", ["check", "R"], r"r\.boom:10:12: error: tokens `1e999` is too large", distill("tokens 1e999")),
    Case("tokens too large", ["check", "R"], r"r\.boom:10:12: error: tokens `1e300` is too large; the largest is 2\^53",
         distill("tokens 1e300")),
    Case("warmup 100%", ["check", "R"], r"r\.boom:10:28: error: warmup 100% is not below 100%",
         distill("schedule cosine warmup 100%")),
    Case("warmup fractional steps", ["check", "R"], r"r\.boom:10:28: error: warmup 2\.5 is a step count",
         distill("schedule cosine warmup 2.5")),
    Case("warmup as long as the run", ["check", "R"], r"r\.boom:11:5: error: warmup of 10 steps is not shorter than "
         r"the run's 10 steps", distill("steps 10", "schedule cosine warmup 10")),
    Case("seq above the positions", ["check", "R"], r"r\.boom:10:5: error: seq 8192 is longer than the teacher's "
         r"4,096 positions", distill("seq 8192")),
    Case("gpt2 seq above n_positions", ["audit", "R"], r"r\.boom:10:5: error: seq 256 is longer than the teacher's "
         r"128 positions", distill("seq 256"), setup=lambda d: _config(d / "t", config_for("gpt2"))),
    Case("default seq above n_positions", ["check", "R"], r"r\.boom:8:1: error: seq \(the default\) 2048 is longer",
         distill(), setup=lambda d: _config(d / "t", config_for("gpt2"))),
    Case("calibration seq above the positions", ["check", "R"], r"r\.boom:9:5: error: calibration seq 9000 is longer",
         HEAD + KEEP + 'patch {\n    calibration text "c" seq 9000\n}\n'),
    Case("perplexity seq above the positions", ["check", "R"], r"r\.boom:9:5: error: perplexity seq 9000 is longer",
         HEAD + KEEP + 'evaluate {\n    perplexity text "p" seq 9000 stride 10\n}\n'),
    Case("all loss weights zero", ["check", "R"], r"r\.boom:10:5: error: every loss weight is 0",
         distill("loss ce 0", "loss kl 0")),
    Case("clip zero", ["check", "R"], r"r\.boom:10:26: error: clip must be positive", distill("optimizer adamw clip 0")),
    Case("lr zero", ["check", "R"], r"r\.boom:10:24: error: lr must be positive", distill("optimizer adamw lr 0")),
    Case("weight decay overshoots", ["check", "R"], r"r\.boom:10:28: error: lr 0\.1 times weight_decay 10 is at least 1",
         distill("optimizer adamw lr 0.1 weight_decay 10")),
    Case("betas of one", ["check", "R"], r"r\.boom:10:27: error: betas must lie in \[0, 1\)",
         distill("optimizer adamw betas 1 1")),
    Case("temperature zero", ["check", "R"], r"r\.boom:10:27: error: temperature must be positive",
         distill("loss kl 1 temperature 0")),
    Case("jsd beta one", ["check", "R"], r"r\.boom:10:21: error: jsd beta must lie in \(0, 1\)", distill("loss jsd 1 beta 1")),
    Case("batch zero", ["check", "R"], r"r\.boom:10:11: error: batch must be at least 1", distill("batch 0")),
    Case("seed too large", ["check", "R"], r"r\.boom:10:10: error: seed `99999999999` is too large",
         distill("seed 99999999999")),
    Case("data weight zero", ["check", "R"], r"r\.boom:9:26: error: a data weight must be positive",
         DISTILL.replace('data text "x"', 'data text "x" weight 0') + "}\n"),
    Case("validation 100%", ["check", "R"], r"r\.boom:10:16: error: the validation fraction must be between",
         distill("validation 100%")),
    Case("shard infinite", ["check", "R"], r"r\.boom:9:11: error: a shard size `1e999` is too large",
         HEAD + KEEP + 'emit "m/{layers}" {\n    shard 1e999\n}\n'),
    Case("params budget infinite", ["check", "R"], r"r\.boom:9:18: error: a parameter count `1e999` is too large",
         HEAD + KEEP + "patch {\n    sizes params 1e999\n}\n"),
    Case("a 5,000-digit layer", ["check", "R"], r"r\.boom:6:13: error: a layer index `9{5000}` is too large",
         HEAD + f'student "s" {{\n    keep 0, {"9" * 5000}\n}}\n'),
    Case("a student layer beyond any", ["check", "R"], r"r\.boom:9:12: error: a student layer `s9{30}` is too large",
         HEAD + KEEP + f"patch {{\n    order [s{'9' * 30}]\n}}\n"),
    Case("a keep range of 10^12 layers", ["check", "R"], r"r\.boom:6:13: error: layer 6 is out of range",
         HEAD + 'student "s" {\n    keep 0, 2..999999999999\n}\n'),
    Case("a map block of 10^12 layers", ["check", "R"], r"r\.boom:7:14: error: layer 999999999999 is out of range",
         HEAD + 'student "s" {\n    map {\n        0 <- 0..999999999999\n    }\n}\n'),
    Case("build --params infinite", ["build", "R", "--params", "1e999", "--out", "o"],
         r"error: --params `1e999` is too large", HEAD + KEEP, untouched=("o",)),
    Case("build --patch past the student", ["build", "R", "--patch", "s9", "--out", "o"],
         r"error: no student layer s9", REAL, needs=("real",), untouched=("o",)),
    # -- the teacher: missing, a file, broken config.json, impossible sizes
    Case("teacher missing", ["check", "R"], r"r\.boom:2:1: error: teacher directory not found",
         HEAD.replace('"t"', '"missing/dir/x"') + KEEP),
    Case("teacher is a file", ["check", "R"], r"r\.boom:2:1: error: teacher path .*afile is a file, not a model directory",
         HEAD.replace('"t"', '"afile"') + KEEP, proc=True),
    Case("teacher under an unknown user", ["check", "R"],
         r"r\.boom:2:9: error: cannot expand `~nosuchuser4711` in `~nosuchuser4711/t`: there is no such user",
         HEAD.replace('"t"', '"~nosuchuser4711/t"') + KEEP),
    Case("student under an unknown user", ["audit", "R"], r"r\.boom:5:9: error: cannot expand `~nosuchuser4711`",
         HEAD + KEEP.replace('"s"', '"~nosuchuser4711/s"')),
    Case("config.json is a list", ["check", "R"], r"r\.boom:2:1: error: teacher: .*config\.json holds a JSON list, "
         r"not an object", HEAD + KEEP, setup=_raw_config("[1, 2]"), proc=True),
    Case("config.json is a string", ["audit", "R"], r"holds a JSON string, not an object", HEAD + KEEP,
         setup=_raw_config('"qwen3"')),
    Case("config.json is invalid", ["check", "R"], r"r\.boom:2:1: error: teacher: cannot read .*config\.json",
         HEAD + KEEP, setup=_raw_config("{nope")),
    Case("config.json is empty", ["check", "R"], r"teacher: cannot read .*config\.json", HEAD + KEEP,
         setup=_raw_config("")),
    Case("model_type is a list", ["check", "R"], r"has a `model_type` that is not a string", HEAD + KEEP,
         setup=_edit_config(model_type=["qwen3"])),
    Case("depth a string", ["check", "R"], r"r\.boom:2:1: error: the config's `num_hidden_layers` is \"six\", not a "
         r"positive whole number", HEAD + KEEP, setup=_edit_config(num_hidden_layers="six")),
    Case("depth negative", ["check", "R"], r"`num_hidden_layers` is -6, not a positive whole number", HEAD + KEEP,
         setup=_edit_config(num_hidden_layers=-6)),
    Case("depth overflows", ["check", "R"], r"`num_hidden_layers` is Infinity, not a positive whole number",
         HEAD + KEEP, setup=_raw_config('{"model_type": "qwen3", "num_hidden_layers": 1e400}')),
    Case("depth missing", ["check", "R"], r"r\.boom:2:1: error: the config has no `num_hidden_layers`", HEAD + KEEP,
         setup=_edit_config(num_hidden_layers=None)),
    Case("20,000 layers", ["check", "R"], r"`num_hidden_layers` is 20,000; surgery handles models of at most 1,024",
         HEAD + KEEP, setup=_edit_config(num_hidden_layers=20000)),
    Case("unknown architecture", ["check", "R"], r"r\.boom:2:1: error: the teacher config has model_type `mamba`",
         HEAD + KEEP, setup=_edit_config(model_type="mamba")),
    Case("no model_type", ["check", "R"], r"model_type `None`, which has no known layer layout", HEAD + KEEP,
         setup=_edit_config(model_type=None)),
    Case("remote code", ["check", "R"], r"r\.boom:2:1: error: the teacher's `weird_lm` architecture runs code",
         HEAD + KEEP, setup=_edit_config(model_type="weird_lm", auto_map={"AutoModelForCausalLM": "m.M"})),
    # -- the teacher's weights
    Case("teacher lacks a tensor: init-student", ["init-student", "R"],
         r"error: .*model\.safetensors: the teacher has no tensor `model\.layers\.3\.mlp\.up_proj\.weight`", REAL,
         setup=_broken_teacher("drop"), needs=("real",), untouched=("s",), proc=True),
    Case("teacher lacks a tensor: build", ["build", "R", "--patch", "all", "--out", "o"],
         r"the teacher has no tensor `model\.layers\.3\.mlp\.up_proj\.weight`", REAL,
         setup=_broken_teacher("drop"), needs=("real",), untouched=("o",)),
    Case("teacher tensor of the wrong shape: init-student", ["init-student", "R"],
         r"error: .*model\.safetensors: the teacher's tensor `model\.norm\.weight` has shape \[16\], but its "
         r"config\.json implies \[32\]", REAL, setup=_broken_teacher("shape"), needs=("real",), untouched=("s",)),
    Case("teacher tensor of the wrong shape: emit", ["emit", "R"], r"the teacher's tensor `model\.norm\.weight` has shape",
         REAL + EMIT, setup=_broken_teacher("shape"), needs=("real",), untouched=("m",)),
    Case("teacher lacks a tensor: distill", ["distill", "R", "--no-progress"],
         r"the teacher has no tensor `model\.layers\.3\.mlp\.up_proj\.weight`",
         REAL + 'distill {\n    data text "x.txt"\n    seq 32\n    steps 2\n    batch 1\n}\n',
         setup=_both(_student, _broken_teacher("drop")), needs=("real",), untouched=("s.checkpoints",)),
    Case("teacher only pickled", ["init-student", "R"], r"error: teacher directory .*real has no \*\.safetensors files",
         REAL, setup=lambda d: ((d / "real").unlink(), _pickled_model("real", 6)(d)), needs=("real",), untouched=("s",)),
    Case("truncated teacher weights", ["init-student", "R"], r"error: .*model\.safetensors: ", REAL,
         setup=lambda d: ((d / "real").unlink(), shutil.copytree(d / "real-src", d / "real"),
                          (d / "real" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")),
         needs=("real",), untouched=("s",)),
    # -- students: missing, half-written, truncated, of another teacher
    Case("build without a student", ["build", "R", "--patch", "none", "--out", "o"], r"error: no student in .*s", REAL,
         needs=("real",), untouched=("o",)),
    Case("interrupted student", ["build", "R", "--patch", "none", "--out", "o"], r"error: .*s has no \*\.safetensors",
         REAL, setup=_half_student, needs=("real",), untouched=("o",)),
    Case("truncated student", ["build", "R", "--patch", "s1", "--out", "o"], r"error: .*s/model\.safetensors: ", REAL,
         setup=_truncated_student, needs=("real",), untouched=("o",)),
    Case("student of another teacher", ["build", "R", "--patch", "none", "--out", "o"],
         r"error: .*model\.safetensors: tensor `model\.embed_tokens\.weight` has shape \[320, 64\]",
         REAL.replace('"s"', '"wide-s"'), setup=_both(_other_student, lambda d: (d / "s").rename(d / "wide-s")),
         needs=("real",), untouched=("o",)),
    Case("distill without a student", ["distill", "R"], r"r\.boom:5:1: error: no student in .*s",
         REAL + 'distill {\n    data text "x.txt"\n    seq 32\n    steps 2\n}\n', needs=("real",)),
    Case("distill --dry-run without tokens or steps", ["distill", "R", "--dry-run"],
         r"r\.boom:8:1: error: the distill block needs `tokens` or `steps`", distill()),
    Case("distill --dry-run without a distill block", ["distill", "R", "--dry-run"],
         r"r\.boom: error: the recipe has no `distill` block", HEAD + KEEP),
    Case("distill --dry-run with an infinite lr", ["distill", "R", "--dry-run"], r"r\.boom:10:24: error: lr `1e999`",
         distill("optimizer adamw lr 1e999")),
    # -- evaluation: safetensors only
    Case("evaluate a pickled model", ["evaluate", "R", "pickled"],
         r"error: the model in .*pickled has no \*\.safetensors files \(only pytorch_model\.bin\)",
         REAL + 'evaluate {\n    perplexity text "p.txt" seq 32 stride 32\n}\n',
         setup=_both(_pickled_model("pickled"), lambda d: (d / "p.txt").write_text("to be or not to be\n")),
         needs=("real",), proc=True),
    Case("evaluate a missing model", ["evaluate", "R", "nowhere"], r"error: no model directory .*nowhere",
         REAL + 'evaluate {\n    perplexity text "p.txt" seq 32 stride 32\n}\n',
         setup=lambda d: (d / "p.txt").write_text("to be or not to be\n"), needs=("real",)),
    Case("evaluate without an evaluate block", ["evaluate", "R"], r"r\.boom: error: the recipe has no `evaluate` block",
         HEAD + KEEP),
    # -- prepare and compare
    Case("prepare without a distill block", ["prepare", "R"],
         r"r\.boom: error: the recipe has no `distill` block, so no data to prepare", HEAD + KEEP),
    Case("prepare data that matches no file", ["prepare", "R"], r'r\.boom:9:10: error: no files match "x"',
         DISTILL.replace('teacher "t"', 'teacher "real"').replace("keep 0, 2, 4", "keep first 1 every 2 last 1")
         + "    seq 16\n}\n", needs=("real",)),
    Case("compare a missing run", ["compare", "nowhere"], r"^error: no recipe or run directory nowhere", None),
    Case("compare a run never evaluated", ["compare", "R"],
         r"^error: no evaluation for r\.boom \(no .*run/evaluation/evaluation\.json\)",
         HEAD.replace('"t"', '"real"') + 'student "run/student" {\n    keep first 1 every 2 last 1\n}\n', needs=("real",)),
    # -- outputs that cannot be written
    Case("audit -o into a missing folder", ["audit", "R", "-o", "no/such/a.md"],
         r"^error: cannot write no/such/a\.md: no/such does not exist", HEAD + KEEP),
    Case("audit -o onto a folder", ["audit", "R", "-o", "afolder"], r"^error: cannot write afolder: it is a folder",
         HEAD + KEEP, setup=lambda d: (d / "afolder").mkdir()),
    Case("audit -o under a file", ["audit", "R", "-o", "afile/a.md"],
         r"^error: cannot write afile/a\.md: afile is a file, not a folder", HEAD + KEEP),
    Case("audit -o into a locked folder", ["audit", "R", "-o", "locked/a.md"], r"^error: cannot write locked/a\.md: ",
         HEAD + KEEP, needs=("locked",)),
    Case("fmt in a locked folder", ["fmt", "locked/r.boom"], r"^error: cannot write locked/r\.boom: ", None,
         setup=lambda d: (d / "locked" / "r.boom").write_text("boom 1\nteacher \"t\" {dtype fp32}\n"),
         needs=("locked",)),
    Case("build --out under a file", ["build", "R", "--patch", "all", "--out", "afile/x"],
         r"^error: cannot write .*afile/x: .*afile is a file, not a folder", REAL, needs=("real",)),
    Case("build --out into a locked folder", ["build", "R", "--patch", "all", "--out", "locked/x"],
         r"^error: cannot write .*locked/x: ", REAL, needs=("real", "locked"), untouched=("locked/x",)),
    Case("emit into a locked folder", ["emit", "R"], r"^error: cannot write .*locked/\d+L: ",
         REAL + EMIT.replace('"m/', '"locked/'), setup=_student, needs=("real", "locked")),
    Case("init-student into a locked folder", ["init-student", "R"], r"^error: cannot write .*locked/s: ",
         REAL.replace('"s"', '"locked/s"'), needs=("real", "locked")),
    Case("init-student under a file", ["init-student", "R"], r"^error: cannot write .*afile/s: .*afile is a file",
         REAL.replace('"s"', '"afile/s"'), needs=("real",)),
    Case("plan --out under a file", ["plan", "R", "--out", "afile/plan", "--compare", "none"],
         r"error: .*afile", HEAD + KEEP),
    Case("run with the student under a file", ["run", "R"], r"error: cannot (write|use) .*afile.*: .*afile is a file",
         REAL.replace('"s"', '"afile/s"'), needs=("real",)),
    # -- the command line itself
    Case("check without a recipe", ["check"], r"surgery check: error: the following arguments are required", rc=2),
    Case("png without -o", ["audit", "R", "--format", "png"], r"surgery audit: error: --format png needs --output",
         HEAD + KEEP, rc=2),
    Case("build --layers not a number", ["build", "R", "--layers", "six"], r"argument --layers: invalid int value",
         HEAD + KEEP, rc=2),
    Case("unknown command", ["chek", "R"], r"surgery: error: argument COMMAND: invalid choice", rc=2),
]


def _ids(cases):
    seen = set()
    for case in cases:
        assert case.id not in seen, case.id
        seen.add(case.id)
    return [case.id for case in cases]


def test_the_table_covers_every_command_and_at_least_60_cases():
    from surgery.cli import _commands

    assert len(CASES) >= 60
    assert set(_commands()) <= {c.argv[0] for c in CASES}


@pytest.fixture
def lock():
    """Make a folder nothing can write to: immutable for root (who ignores permissions), read-only otherwise."""
    locked = []

    def make(folder: Path) -> None:
        if os.geteuid() == 0:
            if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode:
                pytest.skip("root, and this file system has no immutable flag")
        else:
            folder.chmod(0o555)
        locked.append(folder)

    yield make
    for folder in locked:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def _run(argv: list[str], cwd: Path, proc: bool, capsys) -> tuple[int, str]:
    if proc:
        done = subprocess.run([sys.executable, "-m", "surgery", *argv], capture_output=True, text=True, cwd=cwd,
                              env=ENV, timeout=300)
        return done.returncode, done.stderr
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        rc = stop.code
    return rc, capsys.readouterr().err


def assert_one_error(rc: int, err: str, case: Case) -> None:
    """Exit status, exactly one `error:` line matching the case, and after it only caret and hint lines."""
    assert "Traceback" not in err, err
    assert rc == case.rc, err
    lines = err.rstrip("\n").split("\n")
    errors = [i for i, line in enumerate(lines) if re.search(r"(^|: )error: ", line)]
    assert len(errors) == 1, err
    assert re.search(case.match, lines[errors[0]]), err
    if case.rc == 1:
        assert errors[0] == 0, err  # nothing else was printed before it
        rest = lines[1:]
        assert len(rest) <= 3 and all(line.startswith(("    ", "  hint: ")) for line in rest), err


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_hostile_input(case: Case, tmp_path, teachers, request, monkeypatch, capsys):
    shutil.copytree(QWEN, tmp_path / "t")
    (tmp_path / "afile").write_text("not a folder\n")
    if "real" in case.needs:
        source = teachers("qwen3")
        shutil.copytree(source, tmp_path / "real-src")
        (tmp_path / "real").symlink_to(tmp_path / "real-src")
    (tmp_path / "locked").mkdir()
    if case.recipe is not None:
        path = tmp_path / "r.boom"
        path.write_bytes(case.recipe if isinstance(case.recipe, bytes) else case.recipe.encode())
    monkeypatch.chdir(tmp_path)
    if case.setup is not None:
        case.setup(tmp_path)
    if "locked" in case.needs:
        request.getfixturevalue("lock")(tmp_path / "locked")
    argv = ["r.boom" if a == "R" else a for a in case.argv]
    rc, err = _run(argv, tmp_path, case.proc, capsys)
    assert_one_error(rc, err, case)
    for path in case.untouched:
        assert not (tmp_path / path).exists(), f"{path} was written"


# --------------------------------------------------------------------------- accepted as Python accepts them


def test_a_leading_bom_is_accepted_and_positions_stay_right(tmp_path, capsys):
    shutil.copytree(QWEN, tmp_path / "t")
    recipe = tmp_path / "r.boom"
    recipe.write_text("\ufeff" + HEAD + KEEP)
    assert main(["check", str(recipe)]) == 0
    assert "ok: 6 -> 3 layers" in capsys.readouterr().out
    recipe.write_text("\ufeff" + HEAD + 'student "s" {\n    keep 0, 2, 9\n}\n')
    assert main(["check", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{recipe}:6:16: error: layer 9 is out of range\n        keep 0, 2, 9\n{' ' * 19}^\n")
    recipe.write_text("\ufeff" + HEAD + KEEP)
    assert main(["fmt", str(recipe)]) == 0  # formatted as plain UTF-8, the BOM dropped
    assert recipe.read_text() == format_text(HEAD + KEEP) and not recipe.read_text().startswith("\ufeff")


# --------------------------------------------------------------------------- sizes that used to hang


def test_absurd_sizes_are_answered_not_hung(tmp_path):
    """Run under a generous timeout (a hang test, not a speed test): each recipe gets an answer."""
    for name, layers in (("deep", 20_000), ("d1024", 1024)):
        config = json.loads((QWEN / "config.json").read_text())
        _config(tmp_path / name, dict(config, num_hidden_layers=layers))
    shutil.copytree(QWEN, tmp_path / "t")
    recipes = {
        "deep.boom": HEAD.replace('"t"', '"deep"') + 'student "s" {\n    keep first 1 every 2 last 1\n}\n',
        "range.boom": HEAD + 'student "s" {\n    keep 0..1999999\n}\n',
        "map.boom": HEAD + 'student "s" {\n    map {\n        0 <- 0..1999999\n    }\n}\n',
        "list.boom": HEAD + 'student "s" {\n    keep ' + ", ".join(map(str, range(2_000_000))) + "\n}\n",
        "order.boom": HEAD + KEEP + "patch {\n    order [" + ", ".join(f"s{i}" for i in range(9000)) + "]\n}\n",
        "d1024.boom": HEAD.replace('"t"', '"d1024"') + 'student "s" {\n    keep first 1 every 2 last 1\n}\n'
                      + 'emit "m/{layers}L" {\n}\n',
    }
    for name, text in recipes.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, "-m", "surgery", "check", *recipes], capture_output=True, text=True,
                          cwd=tmp_path, env=ENV, timeout=60)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert "deep.boom:2:1: error: the config's `num_hidden_layers` is 20,000" in done.stderr
    assert "range.boom:6:10: error: layer 6 is out of range" in done.stderr
    assert "map.boom:7:14: error: layer 1999999 is out of range" in done.stderr
    assert "list.boom: error: the recipe is 16,888,952 characters long" in done.stderr
    assert "order.boom:8:1: error: the order names s3, but the student has 3 layers" in done.stderr
    assert done.stdout == "d1024.boom: ok: 1024 -> 513 layers, 511 patch steps, 511 sizes\n"


# --------------------------------------------------------------------------- lm-eval reads safetensors only


def test_lm_eval_refuses_a_pickled_model(tmp_path):
    pytest.importorskip("lm_eval")
    from surgery.errors import SurgeryError
    from surgery.evaluate import lmeval

    _pickled_model("pickled")(tmp_path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text(json.dumps({"context": "to be", "choices": ["or", "not"], "label": 0}) + "\n")
    (tasks / "tiny.yaml").write_text(
        "task: tiny_pick\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    with pytest.raises(SurgeryError, match=r"has no \*\.safetensors files \(only pytorch_model\.bin\)"):
        lmeval.run_tasks(tmp_path / "pickled", lmeval.Tasks(("tiny_pick",), tasks), ["tiny_pick"], limit=1,
                         device="cpu")
