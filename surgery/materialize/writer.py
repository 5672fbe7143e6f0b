"""Write models on the layer graph as Hugging Face directories: the pruned student, any patched
model, every size of the schedule.

Each output is written to a temporary directory beside its target, checked against the
teacher's files (every tensor, right shape and dtype), then renamed into place with its
manifest. An existing output is replaced only with `force`, and only when surgery made it
(surgery.outputs); one built from the same inputs in the same way is left alone and reported as
up to date, so an interrupted `emit` resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from surgery import artifact, durable, outputs
from surgery.dtypes import DTYPES
from surgery.errors import SurgeryError, os_error
from surgery.graph import STUDENT, TEACHER, Assembly, node
from surgery.materialize.config import rewrite
from surgery.materialize.copylist import CopyList, copy_list
from surgery.fingerprint import digest_bytes, digest_value, safetensors_sample
from surgery.materialize.safetensors_io import (FLOATS, INDEX_NAME, OutTensor, TensorIndex,
                                                output_dtype, write_shards)
from surgery.materialize.teacher import teacher_weights

DEFAULT_SHARD = 5 * 10**9
STUDENT_CONFIG = "student_config.json"
# Copied from the teacher as they are: generation defaults and every tokenizer file format.
TEACHER_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                 "chat_template.jinja", "chat_template.json", "*.tiktoken")


@dataclass(frozen=True)
class _Job:
    """One output directory to write, and everything its content depends on."""

    compiled: object  # surgery.compile.Compiled
    assembly: Assembly
    out_dir: Path
    dtype: str  # recipe spelling: bf16 | fp16 | fp32
    shard: int
    inputs: dict[str, TensorIndex]  # role -> the files read (fingerprinted in the manifest)
    make_copies: Callable[[Path], CopyList]  # given a scratch directory
    init: dict | None = None  # for init-student: how the student was made

    @property
    def teacher_dir(self) -> Path:
        return self.inputs[TEACHER].directory


def write_model(compiled, assembly: Assembly, out_dir, *, student_dir=None, dtype: str | None = None,
                shard: int | None = None, force: bool = False) -> Path:
    """Write `assembly` (from `compiled.graph.assemble(...)`) to `out_dir` and return it.

    Student tensors come from `student_dir` (default: the recipe's student directory) and are
    read only when the assembly uses any; teacher tensors from the teacher's weights.
    """
    graph = compiled.graph
    dtype = dtype or compiled.emit_dtype
    if dtype not in DTYPES:
        raise SurgeryError(f"unknown dtype `{dtype}`", hint=f"use one of {', '.join(DTYPES)}")
    teacher = teacher_weights(compiled)
    inputs = {TEACHER: teacher}
    if STUDENT in {r.side for r in assembly.layers} | {assembly.embeddings, assembly.final}:
        inputs[STUDENT] = _student_index(Path(student_dir) if student_dir else compiled.student_dir)
    job = _Job(compiled, assembly, Path(out_dir), dtype, shard or _default_shard(compiled),
               inputs, lambda scratch: copy_list(graph, assembly, inputs, teacher))
    return _run(job, force)


def init_student(compiled, *, force: bool = False) -> Path:
    """Write the pruned student to `compiled.student_dir`, in the teacher's recipe dtype.

    `init teacher`: student layer i is a copy of the first teacher layer of block i, with the
    teacher's embeddings, final norm and head. `init random`: the same shapes, initialised by
    transformers (seeded with the distill seed), the one place a torch model is built.
    """
    graph = compiled.graph
    recipe = compiled.recipe
    teacher = teacher_weights(compiled)
    if recipe.student.init == "random":
        seed = recipe.distill.seed if recipe.distill else 0
        init = {"init": "random", "seed": seed}

        def make_copies(scratch: Path) -> CopyList:
            _random_student(graph, scratch, seed)
            return copy_list(graph, graph.student, {STUDENT: TensorIndex(scratch)}, teacher)
    else:
        init = {"init": "teacher", "copied_teacher_layers": list(graph.kept)}

        def make_copies(scratch: Path) -> CopyList:
            return copy_list(graph, graph.student, {STUDENT: teacher}, teacher,
                        student_layer=graph.init_of)
    job = _Job(compiled, graph.student, compiled.student_dir, recipe.teacher.dtype, _default_shard(compiled),
               {TEACHER: teacher}, make_copies, init)
    return _run(job, force)


def emit(compiled, *, force: bool = False, each=lambda name: nullcontext()) -> list[Path]:
    """Every step of `compiled.steps` (the plan's, for a measured order), into the recipe's emit
    template; `each(name)` is a context around each model's writing (a progress display)."""
    if compiled.recipe.emit is None:
        raise SurgeryError("the recipe has no `emit` block", file=compiled.recipe.path,
                           hint='add e.g. `emit "runs/models/{layers}L" { dtype bf16 }`')
    made = []
    for assembly, out in outputs.emit_paths(compiled):  # every path checked before the first write
        with each(assembly.name):
            made.append(write_model(compiled, assembly, out, force=force))
    return made


def _default_shard(compiled) -> int:
    return compiled.recipe.emit.shard if compiled.recipe.emit else DEFAULT_SHARD


def _student_index(directory: Path) -> TensorIndex:
    if not directory.is_dir():
        raise SurgeryError(f"no student at {directory}",
                           hint="run `surgery init-student RECIPE` first (and distill it)")
    return TensorIndex(directory)


def _random_student(graph, directory: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = rewrite(graph.teacher_config, graph.arch, graph.kept, tied=graph.tied, dtype="fp32")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.save_pretrained(directory)


# ---------------------------------------------------------------------------- one output
def _run(job: _Job, force: bool) -> Path:
    # The last line of defence for every output, however its path was chosen. The last name is
    # kept as written, so a link there is refused rather than followed.
    written = Path(os.path.abspath(job.out_dir.expanduser()))
    out = written.parent.resolve() / written.name
    read = tuple((f"{role}'s directory", index.directory.resolve()) for role, index in job.inputs.items())
    if job.init:
        outputs.check_student(job.compiled, read)
    else:
        outputs.check_output(job.compiled, out, also=read)
    graph = job.compiled.graph
    tied = graph.tied and job.assembly.embeddings == job.assembly.final
    origins = tuple(r.index if r.side == TEACHER else graph.init_of(r.index) for r in job.assembly.layers)
    config = rewrite(graph.teacher_config, graph.arch, origins, tied=tied, dtype=job.dtype)
    inputs = {role: {p: safetensors_sample(p) for p in index.files} for role, index in job.inputs.items()}
    manifest = _manifest(job, tied, inputs)
    # Inputs are identified by content fingerprint and modification time, so an edit is noticed.
    key = digest_value({"model": {k: manifest[k] for k in ("layers", "embeddings", "final", "tied", "init")},
                   "inputs": {role: [[str(p), fp, p.stat().st_mtime_ns] for p, fp in files.items()]
                              for role, files in inputs.items()},
                   "dtype": job.dtype, "shard": job.shard, "config": config})
    durable.clean(out)
    if out.exists() or out.is_symlink():
        if not out.is_symlink() and _up_to_date(out, key):
            return out
        if not force:
            raise SurgeryError(f"{out} already exists and differs from what this build writes",
                               hint="pass --force to replace it")
        outputs.check_replaceable(out)
    tmp = _temp_beside(out)
    try:
        scratch = durable.temp_dir(out, "scratch")
        try:
            copies = job.make_copies(scratch)
            _write(job, copies, config, tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        manifest["build_key"] = key
        manifest["outputs"] = {p.name: safetensors_sample(p) for p in sorted(tmp.glob("*.safetensors"))}
        _write_json(tmp / artifact.MANIFEST, manifest)
        # No fsync: it would wait for the disk (3x cp's time, measured), and a model is rebuilt
        # from its inputs; checkpoints and the distilled student, which are not, are synced.
        durable.swap_into_place(tmp, out, sync=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _temp_beside(out: Path) -> Path:
    """A new temporary directory next to `out`, its parents made; where that fails, the reason."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return durable.temp_dir(out)
    except OSError as err:
        raise os_error(err, f"cannot write {out}", out.parent) from None


def _write(job: _Job, copies: CopyList, config: dict, tmp: Path) -> None:
    dtype = DTYPES[job.dtype].safetensors
    tensors = [OutTensor(p.name, p.source, output_dtype(p.source.dtype, dtype)) for p in copies.tensors]
    write_shards(tensors, tmp, job.shard)
    verify(tmp, copies, dtype)
    _write_json(tmp / "config.json", config)
    for pattern in TEACHER_FILES:
        for path in sorted(job.teacher_dir.glob(pattern)):
            shutil.copyfile(path, tmp / path.name)
    if not job.assembly.patched:  # the student, readable by the authors' `build_intermediate_model`
        graph = job.compiled.graph
        _write_json(tmp / STUDENT_CONFIG, {"copied_teacher_layers": list(graph.kept),
                                           "pruned_teacher_layers": list(graph.pruned)})


def verify(directory: Path, copies: CopyList, dtype: str) -> None:
    """The written files hold exactly the tensors the teacher's files call for, shaped and typed right.

    `dtype` is the safetensors dtype every floating tensor must have.
    """
    written = TensorIndex(directory)
    for path in written.files:
        end = max(e.end for e in written.tensors.values() if e.file == path)
        if path.stat().st_size != end:
            raise SurgeryError(f"{path.name}: {path.stat().st_size} bytes on disk, {end} expected")
    heads = [e for name, e in written.tensors.items() if name in copies.head_names]
    for name, shape in copies.expected.items():
        if name not in written.tensors:
            raise SurgeryError(f"{directory}: the output lacks tensor `{name}`")
    for name, e in written.tensors.items():
        want = copies.head_shape if name in copies.head_names else copies.expected.get(name)
        if want is None:
            raise SurgeryError(f"{e.file.name}: unexpected tensor `{name}` in the output")
        if e.shape != want:
            raise SurgeryError(f"{e.file.name}: tensor `{name}` has shape {list(e.shape)}, expected {list(want)}")
        if e.dtype in FLOATS and e.dtype != dtype:
            raise SurgeryError(f"{e.file.name}: tensor `{name}` is {e.dtype}, expected {dtype}")
    if len(heads) > 1 or (not copies.tied and not heads):
        raise SurgeryError(f"{directory}: the output has {len(heads)} LM heads; an "
                           f"{'untied' if not copies.tied else 'tied'} model needs "
                           f"{'one' if not copies.tied else 'at most one'}")
    index = directory / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        for name, e in written.tensors.items():
            if weight_map.get(name) != e.file.name:
                raise SurgeryError(f"{index}: maps `{name}` to {weight_map.get(name)}, but it is in {e.file.name}")


def _manifest(job: _Job, tied: bool, inputs: dict[str, dict[Path, dict]]) -> dict:
    recipe = job.compiled.recipe
    a = job.assembly
    return artifact.manifest(
        "init-student" if job.init else "build",
        recipe_path=recipe.path, recipe_sha256=digest_bytes(recipe.path.read_bytes()),
        inputs={role: {"directory": str(job.inputs[role].directory),
                       "files": {p.name: fp for p, fp in files.items()}}
                for role, files in inputs.items()},
        model="pruned student" if job.init else a.name,
        patched=sorted(a.patched),
        layers=[node(r.side, r.index) for r in a.layers],
        embeddings=a.embeddings,
        final=a.final,
        tied=tied,
        init=job.init,
        dtype=job.dtype,
        shard_bytes=job.shard,
    )


def _up_to_date(out: Path, key: str) -> bool:
    try:
        recorded = json.loads((out / artifact.MANIFEST).read_text())
        files = recorded["outputs"]
        return recorded.get("build_key") == key and all(safetensors_sample(out / n) == fp for n, fp in files.items()) \
            and sorted(p.name for p in out.glob("*.safetensors")) == sorted(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
