"""Helpers for the distillation tests: small corpora, recipes with a distill block, students."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tiny import CORPUS, write_recipe


# The distill block the engine tests share: 6 steps of 4 rows of 32 tokens, checkpoints every 2.
BODY = """
data jsonl "{corpus}"
validation 10%
seq 32
steps 6
batch 4
micro_batch 2
optimizer adamw lr 1e-3
checkpoint every 2 steps
"""

WORDS = CORPUS.split()


def documents(n: int, seed: int = 0, words: tuple[int, int] = (5, 40)) -> list[str]:
    """n pseudo-documents of Shakespeare's words, in a seeded order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = rng.randrange(len(WORDS))
        length = rng.randint(*words)
        out.append(f"{i}: " + " ".join(WORDS[(start + k) % len(WORDS)] for k in range(length)))
    return out


def text_corpus(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (directory / f"doc{i:04d}.txt").write_text(doc)
    return directory


def jsonl_corpus(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def distill_recipe(directory: Path, teacher: Path, body: str, keep: str = "keep first 1 every 2 last 1") -> Path:
    """A recipe in `directory` with the student in directory/run/student and `body` as the distill block."""
    return write_recipe(directory / "recipe.boom", teacher, keep=keep, student="run/student",
                        extra="distill {\n" + body.strip() + "\n}")


def make_student(compiled) -> Path:
    """Write the pruned student of a compiled recipe into its student directory."""
    from surgery.materialize import init_student

    return init_student(compiled, force=True)
