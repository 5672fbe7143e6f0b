"""Recipes written from text, for the language tests: beside a config-only teacher `t`."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

TEACHERS = Path(__file__).resolve().parent / "recipes" / "teachers"
QWEN = TEACHERS / "tiny-qwen3"  # 6 layers, untied head: config.json only
LLAMA_TIED = TEACHERS / "tiny-llama-tied"  # 8 layers, tied head: config.json only

# Lines 1-4 of most test recipes; a student block then starts on line 5.
HEAD = 'boom 1\nteacher "t" {\n    dtype fp32\n}\n'


def write(tmp_path: Path, text: str, name: str = "r.boom", teacher: Path = QWEN) -> Path:
    """Write dedented `text` to tmp_path/name, with a copy of `teacher` at tmp_path/t."""
    if not (tmp_path / "t").exists():
        shutil.copytree(teacher, tmp_path / "t")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path
