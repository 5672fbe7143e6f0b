"""Materialize: overwrite rules, located errors, the commands, the byte-copy fallback, lazy
imports, `init random`, and the files written beside the weights."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import read_json, write_recipe

from surgery.cli import main
from surgery.compile import compile_file
from surgery.errors import SurgeryError
from surgery.materialize import emit, init_student, safetensors_io, write_model

KEEP = "keep 0, 2, 3, 5"  # blocks s0 = 0..1, s1 = 2, s2 = 3..4, s3 = 5


@pytest.fixture
def recipe(tmp_path, teachers):
    """A recipe over a 6-layer qwen3 teacher, with an emit block, and its initialised student."""
    path = write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP,
                        extra='emit "models/{layers}L" {\n    dtype fp32\n}')
    init_student(compile_file(path))
    return path


def _bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


def test_refuses_to_overwrite_without_force_and_replaces_with_it(recipe, tmp_path):
    compiled = compile_file(recipe)
    out = write_model(compiled, compiled.graph.assemble((0,)), tmp_path / "o")
    with pytest.raises(SurgeryError, match="already exists") as err:
        write_model(compiled, compiled.graph.assemble((2,)), out)
    assert "--force" in err.value.hint
    assert read_json(out / "manifest.json")["patched"] == [0]
    write_model(compiled, compiled.graph.assemble((2,)), out, force=True)
    assert read_json(out / "manifest.json")["patched"] == [2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp dirs left


def test_the_same_build_again_is_up_to_date_until_an_input_changes(recipe, tmp_path):
    compiled = compile_file(recipe)
    assembly = compiled.graph.assemble((1,))
    out = write_model(compiled, assembly, tmp_path / "o")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert write_model(compiled, assembly, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    student = compiled.student_dir / "model.safetensors"
    tensors = load_file(student)
    tensors["model.norm.weight"] += 1
    save_file(tensors, student, metadata={"format": "pt"})
    with pytest.raises(SurgeryError, match="already exists"):
        write_model(compiled, assembly, out)


def test_a_missing_student_tensor_is_named_with_its_file(recipe, tmp_path):
    compiled = compile_file(recipe)
    student = compiled.student_dir / "model.safetensors"
    tensors = load_file(student)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, student, metadata={"format": "pt"})
    with pytest.raises(SurgeryError) as err:
        write_model(compiled, compiled.graph.assemble((0,)), tmp_path / "o")
    assert str(student) in str(err.value) and "`model.layers.2.mlp.up_proj.weight`" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_a_student_tensor_of_the_wrong_shape_is_named_with_its_file(recipe, tmp_path):
    compiled = compile_file(recipe)
    student = compiled.student_dir / "model.safetensors"
    tensors = load_file(student)
    tensors["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(32, 16)
    save_file(tensors, student, metadata={"format": "pt"})
    with pytest.raises(SurgeryError) as err:
        write_model(compiled, compiled.graph.assemble(()), tmp_path / "o")
    message = str(err.value)
    assert str(student) in message and "`model.layers.1.self_attn.o_proj.weight`" in message
    assert "[32, 16]" in message and "`model.layers.2.self_attn.o_proj.weight` has [32, 32]" in message


def test_a_truncated_teacher_file_is_named(tmp_path, teachers):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in teachers("qwen3", layers=6).iterdir():
        (teacher / f.name).write_bytes(f.read_bytes())
    weights = teacher / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    compiled = compile_file(write_recipe(tmp_path / "r.boom", teacher, keep=KEEP))
    with pytest.raises(SurgeryError, match="does not fit") as err:
        init_student(compiled)
    assert str(weights) in str(err.value) and "`" in str(err.value)


def test_output_may_not_replace_a_source(recipe):
    compiled = compile_file(recipe)
    with pytest.raises(SurgeryError, match="is the student's directory"):
        write_model(compiled, compiled.graph.assemble((0,)), compiled.student_dir, force=True)
    with pytest.raises(SurgeryError, match="holds the (recipe|teacher's directory)"):
        write_model(compiled, compiled.graph.teacher, compiled.teacher.directory.parent, force=True)


def test_student_config_manifest_and_teacher_files(recipe, tmp_path):
    compiled = compile_file(recipe)
    student = compiled.student_dir
    assert read_json(student / "student_config.json") == {"copied_teacher_layers": [0, 2, 3, 5],
                                                           "pruned_teacher_layers": [1, 4]}
    out = write_model(compiled, compiled.graph.assemble((0, 2)), tmp_path / "o")
    assert not (out / "student_config.json").exists()  # a patched model is not a student
    prov = read_json(out / "manifest.json")
    assert prov["stage"] == "build" and read_json(student / "manifest.json")["stage"] == "init-student"
    assert prov["patched"] == [0, 2]
    assert prov["layers"] == ["T.L0", "T.L1", "S.L1", "T.L3", "T.L4", "S.L3"]
    assert (prov["embeddings"], prov["final"], prov["tied"]) == ("teacher", "student", False)
    assert prov["recipe"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    teacher_weights = compiled.teacher.directory / "model.safetensors"
    assert prov["inputs"]["teacher"]["files"]["model.safetensors"]["bytes"] == teacher_weights.stat().st_size
    assert set(prov["inputs"]) == {"teacher", "student"}
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (compiled.teacher.directory / name).read_bytes()


def test_the_teacher_needs_no_student(recipe, tmp_path):
    compiled = compile_file(recipe)
    for p in compiled.student_dir.iterdir():
        p.unlink()
    compiled.student_dir.rmdir()
    out = write_model(compiled, compiled.graph.teacher, tmp_path / "o")
    written, teacher = load_file(out / "model.safetensors"), load_file(compiled.teacher.directory / "model.safetensors")
    assert written.keys() == teacher.keys() and all(torch.equal(written[k], teacher[k]) for k in teacher)
    with pytest.raises(SurgeryError, match="no student at"):
        write_model(compiled, compiled.graph.assemble((0,)), tmp_path / "p")


def test_byte_copy_falls_back_when_the_kernel_refuses(recipe, tmp_path, monkeypatch):
    compiled = compile_file(recipe)
    assembly = compiled.graph.assemble((0, 2))
    fast = write_model(compiled, assembly, tmp_path / "fast")

    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(safetensors_io, "_methods", list(safetensors_io._methods))
    slow = write_model(compiled, assembly, tmp_path / "slow")
    assert safetensors_io._methods[0] is not safetensors_io._by_copy_file_range
    assert _bytes(slow) == _bytes(fast)


def test_build_emit_and_init_commands(recipe, tmp_path, capsys):
    assert main(["build", str(recipe), "--patch", "s0,s2", "--out", str(tmp_path / "a")]) == 0
    assert read_json(tmp_path / "a" / "manifest.json")["patched"] == [0, 2]
    # last_to_first, one step: the cut follows s0, so s1 (one layer), s2 and s3 come from the teacher.
    assert main(["build", str(recipe), "--layers", "5", "--out", str(tmp_path / "b")]) == 0
    assert read_json(tmp_path / "b" / "manifest.json")["patched"] == [1, 2, 3]
    assert main(["build", str(recipe), "--params", "1B", "--out", str(tmp_path / "c")]) == 0
    assert read_json(tmp_path / "c" / "config.json")["num_hidden_layers"] == 6
    assert main(["emit", str(recipe)]) == 0
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["5L", "6L"]
    assert main(["emit", str(recipe)]) == 0  # up to date: nothing to replace
    capsys.readouterr()
    assert main(["build", str(recipe), "--patch", "0,x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --patch: `0,x` is not a list of student layers") and "Traceback" not in err
    assert main(["build", str(recipe), "--patch", "9"]) == 1
    assert "no student layer s9" in capsys.readouterr().err
    assert main(["init-student", str(recipe)]) == 0


def test_emit_needs_an_emit_block(tmp_path, teachers):
    compiled = compile_file(write_recipe(tmp_path / "r.boom", teachers("qwen3", layers=6), keep=KEEP))
    with pytest.raises(SurgeryError, match="no `emit` block"):
        emit(compiled)


def test_building_without_conversion_imports_neither_torch_nor_transformers(recipe, tmp_path):
    """The teacher check reads its expected shapes from the registry, so a byte-copy build stays torch-free."""
    code = ("import sys; from surgery.cli import main; "
            f"assert main(['build', {str(recipe)!r}, '--patch', '1,2', '--out', {str(tmp_path / 'o')!r}]) == 0; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_init_random_uses_transformers_init_with_the_teachers_shapes(tmp_path, teachers):
    teacher = teachers("qwen3", layers=6)
    outs = []
    for name in ("a", "b"):
        path = write_recipe(tmp_path / f"{name}.boom", teacher, keep=KEEP, student=name)
        path.write_text(path.read_text().replace("keep 0, 2, 3, 5", "keep 0, 2, 3, 5\n    init random"))
        outs.append(init_student(compile_file(path)))
    assert _bytes(outs[0]) == _bytes(outs[1])  # seeded
    random = load_file(outs[0] / "model.safetensors")
    pruned_from_teacher = load_file(teacher / "model.safetensors")
    assert torch.equal(random["model.layers.1.input_layernorm.weight"], torch.ones(32))
    q = random["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == pruned_from_teacher["model.layers.2.self_attn.q_proj.weight"].shape
    assert 0.015 < q.std().item() < 0.025  # initializer_range 0.02
    assert read_json(outs[0] / "manifest.json")["init"] == {"init": "random", "seed": 0}
    assert json.loads((outs[0] / "config.json").read_text())["num_hidden_layers"] == 4
