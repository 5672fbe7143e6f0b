"""Parameter counts from the architecture registry equal transformers', for every registry family.

The registry (surgery/architectures/*.yaml, read by surgery/shapes.py) lists each family's
tensors in config keys so that `check` and `audit` need neither torch nor transformers. Here
each one is held to the model transformers builds on the meta device from the same config:
the same state-dict names and shapes, the same parameter count, tied and untied.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from surgery.arch import registry
from surgery.errors import SurgeryError
from surgery.graph import LayerGraph
from surgery.layout import Block
from surgery.shapes import numel, tensor_shapes

MODEL_TYPES = sorted(registry())
BUNDLED = sorted((Path(__file__).resolve().parents[1] / "surgery" / "configs").glob("*/*/config.json"))
LAYERS = 4
# The student of every test graph: blocks (0, 1), (2,), (3,) of a 4-layer teacher.
BLOCKS = (Block(0, (0, 1)), Block(1, (2,)), Block(2, (3,)))


def minimal(model_type: str, layers: int = LAYERS) -> dict:
    """A tiny config with the size keys only: every other key takes the family default."""
    if model_type == "gpt2":
        return dict(model_type="gpt2", vocab_size=320, n_embd=32, n_head=4, n_layer=layers, n_positions=64)
    return dict(model_type=model_type, vocab_size=320, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=layers, max_position_embeddings=64, pad_token_id=0)


def explicit(model_type: str, layers: int = LAYERS) -> dict:
    """Every optional key the registry knows, set away from its default (ignored by families without it)."""
    return dict(minimal(model_type, layers), head_dim=16, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                n_inner=48)


VARIANTS = {
    "defaults": lambda mt, layers=LAYERS: minimal(mt, layers),
    "tied": lambda mt, layers=LAYERS: dict(minimal(mt, layers), tie_word_embeddings=True),
    "untied": lambda mt, layers=LAYERS: dict(minimal(mt, layers), tie_word_embeddings=False),
    "explicit": explicit,
    "explicit-tied": lambda mt, layers=LAYERS: dict(explicit(mt, layers), tie_word_embeddings=True),
}


def meta_model(config: dict):
    """The model transformers builds from `config`, on the meta device (no memory, no weights)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    finally:
        transformers.logging.set_verbosity(verbosity)


def is_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_every_registry_family_has_shapes():
    assert {"llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3", "gemma2", "gemma3_text", "gpt_neox",
            "gpt2"} <= set(MODEL_TYPES)
    for model_type, arch in registry().items():
        assert set(arch.tensors[model_type]) == {"model", "layer"}, model_type


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_registry_shapes_and_counts_equal_transformers(model_type, variant):
    config = VARIANTS[variant](model_type)
    model = meta_model(config)
    want = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert tensor_shapes(config) == want

    graph = LayerGraph(registry()[model_type], config, BLOCKS)
    assert graph.tied == is_tied(model)
    teacher = graph.size(graph.teacher)
    assert teacher.params == sum(p.numel() for p in model.parameters())  # a tied head once
    assert teacher.params_untied == sum(numel(s) for s in want.values())  # the head apart
    assert teacher.params_untied - teacher.params == (graph.part_params[3] if graph.tied else 0)

    student = meta_model(VARIANTS[variant](model_type, layers=len(BLOCKS)))
    assert graph.size(graph.student).params == sum(p.numel() for p in student.parameters())


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_published_configs_count_like_transformers(path):
    """The teachers of the shipped recipes, at full size (the meta device allocates nothing)."""
    config = json.loads(path.read_text())
    model = meta_model(config)
    assert tensor_shapes(config) == {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_a_missing_size_key_is_one_error():
    config = minimal("qwen3")
    del config["intermediate_size"]
    with pytest.raises(SurgeryError, match="the teacher config has no `intermediate_size`"):
        tensor_shapes(config)


def test_a_null_key_takes_the_family_default_as_in_transformers():
    config = dict(minimal("llama"), head_dim=None, num_key_value_heads=None)
    shapes = tensor_shapes(config)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (32, 32)  # 4 heads of 32 // 4
    assert shapes == {name: tuple(t.shape) for name, t in meta_model(config).state_dict().items()}
