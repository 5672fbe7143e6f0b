"""The correctness oracle for streamed models: every written model computes what the same model
assembled in memory from the teacher and the (perturbed) student computes, bit for bit.

The oracle below swaps torch modules between the two loaded models. It shares no code with
surgery.materialize and reads the layer layout from its own table, not from the registry.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import read_json, write_recipe
from transformers import AutoModelForCausalLM

from surgery.compile import compile_file
from surgery.materialize import init_student, write_model

# family -> (layer list, embedding modules, final norm); every family's head is `lm_head` in memory.
MODULES = {
    "llama": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "mistral": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "qwen2": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "qwen3": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "gpt_neox": ("gpt_neox.layers", ("gpt_neox.embed_in",), "gpt_neox.final_layer_norm"),
    "gpt2": ("transformer.h", ("transformer.wte", "transformer.wpe"), "transformer.ln_f"),
    # Welcome extras: tests/tiny.py gives them its generic Llama-like config.
    "olmo2": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "phi3": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "gemma2": ("model.layers", ("model.embed_tokens",), "model.norm"),
    "gemma3_text": ("model.layers", ("model.embed_tokens",), "model.norm"),
}
DEPTH = {"gpt2": "n_layer"}
# 6 teacher layers kept as 0, 2, 3, 5: blocks s0 = 0..1, s1 = 2, s2 = 3..4, s3 = 5, so one-layer
# blocks sit between and after the patchable ones.
KEEP = "keep 0, 2, 3, 5"
BLOCKS = [(0, 1), (2,), (3, 4), (5,)]
PATCH_SETS = {"none": (), "all": (0, 1, 2, 3), "prefix": (0, 1), "suffix": (2, 3), "scattered": (0, 2)}


# ---------------------------------------------------------------------------- the oracle
def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def oracle(family: str, models: dict, layers: list[tuple[str, int]], embeddings: str, final: str,
           tied: bool) -> torch.nn.Module:
    """The model with `layers` [(side, index)], assembled by copying modules of the loaded models."""
    layer_path, embedding_paths, norm_path = MODULES[family]
    config = copy.deepcopy(models["teacher"].config)
    setattr(config, DEPTH.get(family, "num_hidden_layers"), len(layers))
    config.tie_word_embeddings = tied
    if getattr(config, "layer_types", None):
        config.layer_types = [models[side].config.layer_types[i] for side, i in layers]
    model = AutoModelForCausalLM.from_config(config).eval()
    _set(model, layer_path, torch.nn.ModuleList(copy.deepcopy(_get(models[s], layer_path)[i]) for s, i in layers))
    for path in embedding_paths:
        _set(model, path, copy.deepcopy(_get(models[embeddings], path)))
    _set(model, norm_path, copy.deepcopy(_get(models[final], norm_path)))
    if tied:
        model.lm_head.weight = _get(model, embedding_paths[0]).weight
    else:
        model.lm_head = copy.deepcopy(models[final].lm_head)  # a tied model's head: a copy of its embeddings
    return model


def expected_layers(patched) -> tuple[list[tuple[str, int]], str, str]:
    """(layers, embeddings side, final side) for a patched set, from BLOCKS alone."""
    layers = []
    for s, block in enumerate(BLOCKS):
        layers += [("teacher", t) for t in block] if s in patched else [("student", s)]
    side = lambda s: "teacher" if s in patched else "student"  # noqa: E731
    return layers, side(0), side(len(BLOCKS) - 1)


# ---------------------------------------------------------------------------- helpers
def perturb(directory: Path, seed: int = 1) -> None:
    """Make a 'distilled' student: every tensor moved, so student and teacher really differ."""
    gen = torch.Generator().manual_seed(seed)
    for path in sorted(directory.glob("*.safetensors")):
        tensors = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})


def load(directory: Path) -> torch.nn.Module:
    """Load with transformers and fail on any missing, unexpected or re-initialised weight."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    noisy = [r.getMessage() for r in records if any(w in r.getMessage().lower() for w in
                                                   ("missing", "unexpected", "initialized", "not used", "mismatch"))]
    assert not noisy, noisy
    return model.eval()


def assert_same_model(written: torch.nn.Module, expected: torch.nn.Module, vocab: int = 320) -> None:
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = written(ids, use_cache=False).logits
        want = expected(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got_sd, want_sd = written.state_dict(), expected.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for name, tensor in want_sd.items():
        assert torch.equal(got_sd[name], tensor), f"{name} is not bit-identical"


@pytest.fixture
def setup(tmp_path, teachers):
    """(family, tied, **teacher kw, emit=...) -> (compiled recipe, loaded models)."""

    def make(family: str, tied: bool = False, emit: str = "", **kw):
        teacher = teachers(family, layers=6, tied=tied, **kw)
        recipe = write_recipe(tmp_path / "r.boom", teacher, keep=KEEP, extra=emit)
        compiled = compile_file(recipe)
        student = init_student(compiled)
        perturb(student)
        models = {"teacher": load(teacher), "student": load(student)}
        return compiled, models

    return make


# ---------------------------------------------------------------------------- tests
CASES = [("llama", False), ("mistral", False), ("qwen2", False), ("qwen3", False), ("qwen3", True),
         ("gpt_neox", False), ("gpt2", True), ("olmo2", False), ("phi3", False), ("gemma2", True),
         ("gemma3_text", True)]


@pytest.mark.parametrize("family,tied", CASES, ids=[f"{f}{'-tied' if t else ''}" for f, t in CASES])
def test_patched_models_match_the_in_memory_oracle(family, tied, setup, tmp_path):
    compiled, models = setup(family, tied)
    for label, patched in PATCH_SETS.items():
        out = write_model(compiled, compiled.graph.assemble(patched), tmp_path / label)
        layers, embeddings, final = expected_layers(patched)
        untied = tied and embeddings != final
        assert read_json(out / "config.json")["tie_word_embeddings"] is (tied and not untied)
        assert read_json(out / "config.json")[DEPTH.get(family, "num_hidden_layers")] == len(layers)
        assert_same_model(load(out), oracle(family, models, layers, embeddings, final, tied and not untied))


def test_tied_output_keeps_no_head_and_untied_output_writes_one(setup, tmp_path):
    compiled, _ = setup("qwen3", tied=True)
    graph = compiled.graph
    same_side = write_model(compiled, graph.assemble((1, 2)), tmp_path / "tied")  # s0 and s3: both student
    mixed = write_model(compiled, graph.assemble(PATCH_SETS["suffix"]), tmp_path / "untied")
    assert "lm_head.weight" not in load_file(same_side / "model.safetensors")
    written = load_file(mixed / "model.safetensors")
    teacher = load_file(Path(compiled.teacher.directory) / "model.safetensors")
    student = load_file(compiled.student_dir / "model.safetensors")
    assert torch.equal(written["lm_head.weight"], teacher["model.embed_tokens.weight"])
    assert torch.equal(written["model.embed_tokens.weight"], student["model.embed_tokens.weight"])


def test_gpt_neox_head_keeps_its_file_name(setup, tmp_path):
    compiled, _ = setup("gpt_neox")
    out = write_model(compiled, compiled.graph.assemble(PATCH_SETS["suffix"]), tmp_path / "o")
    names = load_file(out / "model.safetensors").keys()
    assert "embed_out.weight" in names and "lm_head.weight" not in names


def test_sharded_inputs_and_outputs(setup, tmp_path):
    # Teacher saved by transformers in 20KB shards, student and outputs written in 30KB shards.
    compiled, models = setup("llama", emit='emit "models/{patched}" {\n    dtype fp32\n    shard 30KB\n}',
                             max_shard_size="20KB")
    assert len(list(Path(compiled.teacher.directory).glob("*.safetensors"))) > 2
    assert len(list(compiled.student_dir.glob("*.safetensors"))) > 2
    for label in ("prefix", "scattered"):
        patched = PATCH_SETS[label]
        out = write_model(compiled, compiled.graph.assemble(patched), tmp_path / label)
        shards = sorted(out.glob("*.safetensors"))
        assert len(shards) > 2
        for shard in shards:  # at most 30KB of tensors, or one tensor larger than that
            sizes = [t.numel() * t.element_size() for t in load_file(shard).values()]
            assert sum(sizes) <= 30_000 or len(sizes) == 1
        weight_map = read_json(out / "model.safetensors.index.json")["weight_map"]
        assert sorted(set(weight_map.values())) == [p.name for p in shards]
        assert_same_model(load(out), oracle("llama", models, *expected_layers(patched), tied=False))


AUTHORS_ORDERS = [("last_to_first", k) for k in (1, 2)] + [("first_to_last", k) for k in (1, 2)]


@pytest.mark.parametrize("order,k", AUTHORS_ORDERS)
def test_sequential_orders_reproduce_the_authors_models(order, k, setup, tmp_path):
    """The authors cut the student next to the (k+1)-th patchable block and take every teacher
    layer beyond the cut; re-derived here from `copied_teacher_layers` as their code does."""
    compiled, models = setup("qwen3", tied=True)
    copied = read_json(compiled.student_dir / "student_config.json")["copied_teacher_layers"]
    n_teacher = 6
    if order == "last_to_first":  # cut points: after each multi-layer block, counted from the end
        cuts = [(i + 1, copied[i + 1]) for i in range(len(copied) - 1) if copied[i + 1] - copied[i] > 1]
        s, t = cuts[-(k + 1)] if k + 1 <= len(cuts) else (0, 0)
        layers = [("student", i) for i in range(s)] + [("teacher", i) for i in range(t, n_teacher)]
        embeddings, final = ("student" if s else "teacher"), "teacher"
    else:  # cut points: before each multi-layer block, counted from the start
        cuts = [(i, copied[i]) for i in range(len(copied) - 1) if copied[i + 1] - copied[i] > 1]
        s, t = cuts[k] if k < len(cuts) else (len(copied), n_teacher)
        layers = [("teacher", i) for i in range(t)] + [("student", i) for i in range(s, len(copied))]
        embeddings, final = "teacher", ("student" if s < len(copied) else "teacher")
    out = write_model(compiled, compiled.graph.sequential(order, k), tmp_path / "o")
    tied = embeddings == final
    assert_same_model(load(out), oracle("qwen3", models, layers, embeddings, final, tied))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_dtype_conversion_is_tensor_by_tensor_and_exact(dtype, setup, tmp_path):
    compiled, _ = setup("qwen2")
    out = write_model(compiled, compiled.graph.assemble(PATCH_SETS["prefix"]), tmp_path / "o", dtype=dtype)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert read_json(out / "config.json")["dtype"] == str(torch_dtype).removeprefix("torch.")
    written = load_file(out / "model.safetensors")
    teacher = load_file(Path(compiled.teacher.directory) / "model.safetensors")
    student = load_file(compiled.student_dir / "model.safetensors")
    assert torch.equal(written["model.layers.0.mlp.up_proj.weight"],
                       teacher["model.layers.0.mlp.up_proj.weight"].to(torch_dtype))
    assert torch.equal(written["model.layers.3.self_attn.q_proj.bias"],  # T0 T1 T2 S2 S3: s2 is layer 3
                       student["model.layers.2.self_attn.q_proj.bias"].to(torch_dtype))
    assert all(t.dtype == torch_dtype for t in written.values())
    load(out)


def test_per_layer_config_lists_follow_the_layers(tmp_path, teachers):
    """A teacher whose layers alternate sliding and full attention, with a window shorter than
    the input: the written models must attend like the oracle, layer by layer."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in teachers("qwen3", layers=6).iterdir():
        (teacher / f.name).write_bytes(f.read_bytes())
    config = read_json(teacher / "config.json")
    types = ["sliding_attention", "full_attention", "full_attention", "sliding_attention", "full_attention",
             "sliding_attention"]
    config.update(layer_types=types, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    (teacher / "config.json").write_text(json.dumps(config))
    compiled = compile_file(write_recipe(tmp_path / "r.boom", teacher, keep=KEEP))
    student = init_student(compiled)
    assert read_json(student / "config.json")["layer_types"] == [types[t] for t in (0, 2, 3, 5)]
    perturb(student)
    models = {"teacher": load(teacher), "student": load(student)}
    patched = PATCH_SETS["prefix"]  # T0 T1 T2 S2 S3: the last layer stands for teacher layer 5
    out = write_model(compiled, compiled.graph.assemble(patched), tmp_path / "o")
    layers, embeddings, final = expected_layers(patched)
    assert read_json(out / "config.json")["layer_types"] == [types[t] for t in (0, 1, 2, 3, 5)]
    assert_same_model(load(out), oracle("qwen3", models, layers, embeddings, final, tied=False))


def test_the_paper_llama_order_ends_at_the_teacher():
    """Llama (first 2, every 2, last 1) ends in a one-layer block: the authors' 13th step is the teacher."""
    graph = compile_file(Path(__file__).parent.parent / "recipes" / "llama-3.2-3b.boom").graph
    assert graph.sequential("first_to_last", 13) == graph.teacher
    assert graph.sequential("first_to_last", 1).patched == {0, 1}


def test_per_layer_lists_that_transformers_derives_are_written_out(tmp_path, teachers):
    """Qwen2 without `layer_types`: transformers derives them from `max_window_layers` (layers
    3.. slide), a rule that would give another pattern at the student's depth."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in teachers("qwen2", layers=6).iterdir():
        (teacher / f.name).write_bytes(f.read_bytes())
    config = read_json(teacher / "config.json")
    config.pop("layer_types", None)
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=3)
    (teacher / "config.json").write_text(json.dumps(config))
    assert load(teacher).config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    compiled = compile_file(write_recipe(tmp_path / "r.boom", teacher, keep=KEEP))
    student = init_student(compiled)
    assert read_json(student / "config.json")["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2
    perturb(student)
    models = {"teacher": load(teacher), "student": load(student)}
    patched = PATCH_SETS["prefix"]
    out = write_model(compiled, compiled.graph.assemble(patched), tmp_path / "o")
    layers, embeddings, final = expected_layers(patched)
    assert load(out).config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 2
    assert_same_model(load(out), oracle("qwen2", models, layers, embeddings, final, tied=False))
