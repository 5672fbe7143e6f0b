"""Load what measurement needs: the teacher, the student, the calibration rows.

Returns None with a reason where something is missing (a paper recipe with a config-only
teacher, no student yet, no calibration block), so `surgery plan` can still plan sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery import devices
from surgery.compile import Compiled
from surgery.dtypes import torch_dtype
from surgery.errors import SurgeryError
from surgery.materialize.teacher import teacher_weights


@dataclass
class Loaded:
    measurer: object  # surgery.planning.measure.Measurer, on the calibration rows
    info: dict  # what was measured on, for the report
    teacher: object
    student: object
    tokenizer: object


def _safetensors(directory: Path | None) -> bool:
    return directory is not None and directory.is_dir() and any(directory.glob("*.safetensors"))


def missing(compiled: Compiled) -> str | None:
    """Why KL cannot be measured for this recipe here, or None when it can."""
    recipe = compiled.recipe
    if recipe.patch.calibration is None:
        return "no `calibration` in the patch block"
    if not compiled.teacher.has_weights:
        return f"the teacher `{recipe.teacher.source}` has no weights on this machine"
    if not _safetensors(compiled.student_dir):
        return f"no student weights in {compiled.student_dir} (run `surgery distill`)"
    return None



def load(compiled: Compiled, device: str = "auto", dtype: str | None = None) -> Loaded:
    """The teacher and student on `device`, in `dtype` (default: fp32 on CPU, the teacher's
    dtype on a GPU)."""
    from surgery.hf import load_causal_lm, load_tokenizer

    from surgery.planning.calibration import token_rows
    from surgery.planning.measure import Measurer

    recipe, graph = compiled.recipe, compiled.graph
    device = devices.resolve(device)
    dtype = dtype or ("fp32" if device == "cpu" else recipe.teacher.dtype)
    remote = recipe.teacher.trust_remote_code
    models = {what: load_causal_lm(directory, dtype=torch_dtype(dtype), device=device, what=what,
                                   trust_remote_code=remote)
              for what, directory in (("teacher", teacher_weights(compiled).directory),
                                      ("student", compiled.student_dir))}
    depth = graph.arch.depth_of(models["student"].config.to_dict())
    if depth != graph.n_student:
        raise SurgeryError(f"the student in {compiled.student_dir} has {depth} layers; the recipe's student has "
                           f"{graph.n_student}", hint="rerun `surgery init-student` and `surgery distill`")
    tokenizer = load_tokenizer(compiled.teacher.directory, compiled.teacher.config, remote)
    rows = token_rows(recipe, recipe.patch.calibration, tokenizer)
    measurer = Measurer(models["teacher"], models["student"], graph, rows)
    info = {"text": recipe.patch.calibration.text, "rows": rows.shape[0], "seq": rows.shape[1],
            "device": device, "dtype": dtype}
    return Loaded(measurer, info, models["teacher"], models["student"], tokenizer)
