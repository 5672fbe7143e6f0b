"""Tiny real models for tests: random weights, real transformers architectures, real files.

`save_teacher(dir, family)` writes a loadable HF model directory (safetensors, config.json,
generation_config.json and a small trained tokenizer). `write_recipe` writes a .boom file
pointing at it. Sizes are kept small so a 2-core CPU runs the suite in minutes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gpt2")

VOCAB = 320
CORPUS = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them. To die, to sleep; no more. "
) * 4


def config_for(family: str, layers: int = 6, tied: bool = False, hidden: int = 32) -> dict:
    """A tiny config.json dict for one family, with `layers` layers."""
    common = dict(vocab_size=VOCAB, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return dict(model_type="gpt2", n_layer=layers, n_embd=hidden, n_head=4, n_positions=128,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return dict(model_type="gpt_neox", num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4,
                    intermediate_size=2 * hidden, max_position_embeddings=128, rotary_pct=0.5,
                    hidden_dropout=0.0, attention_dropout=0.0, **common)
    extra = dict(head_dim=hidden // 4) if family == "qwen3" else {}
    return dict(model_type=family, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra, **common)


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return tok.to_str()


def save_tokenizer(directory: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(directory)


def save_teacher(directory: Path, family: str = "qwen3", *, layers: int = 6, tied: bool = False,
                 hidden: int = 32, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """Write a tiny random teacher of `family` to `directory` and return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**config_for(family, layers, tied, hidden))
    model = AutoModelForCausalLM.from_config(cfg).eval()
    # Random init leaves norms at 1 and biases at 0; perturb everything so every tensor matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    save_tokenizer(directory)
    return directory


def write_recipe(path: Path, teacher: Path | str, *, keep: str = "keep first 1 every 2 last 1",
                 student: str = "student", extra: str = "") -> Path:
    """A minimal recipe for `teacher`; `extra` adds blocks after the student block."""
    path = Path(path)
    path.write_text(
        f'boom 1\n\nteacher "{teacher}" {{\n    dtype fp32\n}}\n\n'
        f'student "{student}" {{\n    {keep}\n}}\n' + (f"\n{extra}\n" if extra else "")
    )
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
