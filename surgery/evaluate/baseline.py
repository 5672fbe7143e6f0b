"""`baseline naive_pruning`: the teacher with the same layers dropped, and no training.

For every size, the naive model is the same Assembly built from the untrained pruned student
(whose layers are plain copies of teacher layers) instead of the distilled one. So it has
exactly the interpolated model's layers and parameters; only the distillation is missing.
The pruned student is always initialised from the teacher, also for `init random` recipes,
because the baseline is defined by the teacher's layers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from surgery.graph import Assembly
from surgery.outputs import NAIVE_DIR


def pruned_compiled(compiled, directory: Path):
    """`compiled` with the student written to `directory`, initialised from the teacher."""
    recipe = compiled.recipe
    student = dataclasses.replace(recipe.student, path=str(Path(directory).resolve()), init="teacher")
    return dataclasses.replace(compiled, recipe=dataclasses.replace(recipe, student=student))


def write_pruned_student(compiled, directory: Path) -> Path:
    """The untrained pruned student in `directory` (left alone when already up to date)."""
    from surgery.materialize import init_student

    return init_student(pruned_compiled(compiled, directory), force=True)


def naive_dir(run_dir: Path, assembly: Assembly) -> Path:
    return Path(run_dir) / NAIVE_DIR / f"{assembly.depth}L"


def write_naive(compiled, assembly: Assembly, pruned: Path, run_dir: Path) -> Path:
    """The naive-pruning model of `assembly`'s size (left alone when already up to date)."""
    from surgery.materialize import write_model

    return write_model(compiled, assembly, naive_dir(run_dir, assembly), student_dir=pruned, force=True)
