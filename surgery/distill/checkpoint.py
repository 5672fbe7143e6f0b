"""Checkpoints and the final student, written so that a crash never leaves a broken one.

`<student_dir>.checkpoints/step-000050/` holds:
- the student as a loadable HF model directory (config.json + fp32 safetensors);
- `optimizer.pt`: the AdamW state (loaded back with weights_only=True);
- `rng.pt`: each process's random-number states;
- `state.json`: the step, tokens seen, the data position and the settings fingerprint.

Each checkpoint is written into a hidden temporary directory and renamed into place, so one
either exists complete or not at all; `kill -9` at any moment leaves the last good one. The
newest KEEP are kept. Weights that are not finite are never checkpointed, and a checkpoint whose
weights give a non-finite loss is discarded (train.py), so a rerun resumes from the last one
whose weights gave a finite step.
Every process reads a checkpoint (multi-node runs need the directory on a shared filesystem);
the main process alone writes.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from surgery import artifact, durable
from surgery.distill import parallel
from surgery.errors import SurgeryError
from surgery.fingerprint import digest_bytes, safetensors_sample

KEEP = 2
PREFIX = "step-"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def directory(student_dir: Path) -> Path:
    return student_dir.with_name(student_dir.name + ".checkpoints")


def clean(root: Path) -> None:
    """Remove what a crash left half-written."""
    for tmp in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob(f".{PREFIX}*.old"):
        durable.clean(root / old.name[1:-len(".old")])


def discard(path: Path) -> None:
    """Remove a checkpoint; renamed aside first, so a kill midway leaves no half of one that looks whole."""
    if path.is_dir():
        aside = path.with_name(f".tmp-{path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)


def finite(model) -> bool:
    """Whether every parameter is finite, on every process."""
    tensors = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).sum().reshape(1)
    return int(parallel.sum_all(bad).item()) == 0


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = sorted(p for p in root.glob(PREFIX + "*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _rng_state() -> dict:
    # numpy's global generator is not saved: nothing in the engine draws from it.
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def save(root: Path, step: int, student, optimizer, state: dict, world: parallel.World) -> Path:
    """Write checkpoint `step` (every process calls this; the main one writes)."""
    model_sd = get_model_state_dict(student, options=_FULL)
    optim_sd = get_optimizer_state_dict(student, optimizer, options=_FULL)
    rngs = parallel.gather_objects(_rng_state(), world)
    final = root / f"{PREFIX}{step:06d}"
    if world.main:
        tmp = root / f".tmp-{PREFIX}{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        student.save_pretrained(tmp, state_dict=model_sd)
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(rngs, tmp / "rng.pt")
        _write_json(tmp / "state.json", {**state, "step": step})
        durable.swap_into_place(tmp, final)
        for old in sorted(root.glob(PREFIX + "*"))[:-KEEP]:
            discard(old)
    parallel.barrier()
    return final


def load(path: Path, student, optimizer, world: parallel.World) -> dict:
    """Restore the student, optimizer and this process's RNG from a checkpoint; its state.json."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    weights = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(f))
    result = set_model_state_dict(student, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    missing = set(result.missing_keys) - tied_keys(student)
    if missing or result.unexpected_keys:
        bad = sorted(missing or result.unexpected_keys)[0]
        raise SurgeryError(f"checkpoint {path} does not fit the student: tensor `{bad}` is "
                           f"{'missing' if missing else 'unexpected'}",
                           hint=f"the student changed since the checkpoint; delete {path.parent} to start over")
    optim_sd = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    set_optimizer_state_dict(student, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
    rngs = torch.load(path / "rng.pt", weights_only=True)
    if len(rngs) == world.size:
        _set_rng_state(rngs[world.rank])
    return state


def tied_keys(model) -> set[str]:
    """Names of parameters that share storage with an earlier one (a tied head)."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def export(student, student_dir: Path, dtype: torch.dtype, summary: dict, world: parallel.World) -> None:
    """Write the distilled student over the student directory, atomically: a complete new
    directory is renamed into place, then the old one is removed. Everything beside the weights
    (tokenizer, student_config.json, any folder) carries over; student_config.json gains
    `distillation`, the run's summary, and the manifest becomes the distillation's."""
    model_sd = get_model_state_dict(student, options=_FULL)
    if world.main:
        durable.clean(student_dir)
        tmp = durable.temp_dir(student_dir)
        try:
            saved_dtype = student.config.dtype
            student.config.dtype = dtype
            try:
                student.save_pretrained(tmp, state_dict={k: v.to(dtype) for k, v in model_sd.items()})
            finally:
                student.config.dtype = saved_dtype
            weights = {"model.safetensors.index.json"}
            for f in student_dir.iterdir():
                if (tmp / f.name).exists() or f.suffix == ".safetensors" or f.name in weights:
                    continue
                if f.is_dir() and not f.is_symlink():
                    shutil.copytree(f, tmp / f.name, symlinks=True)
                else:
                    shutil.copy2(f, tmp / f.name, follow_symlinks=False)
            config_path = tmp / "student_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            _write_json(config_path, {**config, "distillation": summary})
            _write_json(tmp / artifact.MANIFEST, _manifest(student_dir, tmp, summary))
            durable.swap_into_place(tmp, student_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    parallel.barrier()


def _manifest(student_dir: Path, tmp: Path, summary: dict) -> dict:
    """Stage `distill`: made by surgery (so init-student --force may replace it), from the student
    whose manifest `student_dir` holds (its stage and build key) and that student's inputs."""
    before = artifact.read(student_dir)
    recipe = Path(summary["recipe"])
    started = {"stage": before.stage, "build_key": before.manifest.get("build_key")} if before else None
    return artifact.manifest("distill", recipe_path=recipe,
                             recipe_sha256=digest_bytes(recipe.read_bytes()),
                             inputs={**(before.inputs if before else {}), "student": started},
                             distillation=summary,
                             outputs={p.name: safetensors_sample(p) for p in sorted(tmp.glob("*.safetensors"))})
