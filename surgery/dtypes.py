"""The recipe's dtypes (`bf16`, `fp16`, `fp32`) and what each is called elsewhere: the one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dtype:
    """One storage dtype under each of its names."""

    name: str  # as a recipe writes it
    bytes: int  # per element
    safetensors: str  # the safetensors header's name
    config: str  # config.json's `dtype`, and torch's attribute name

    def torch(self):
        import torch

        return getattr(torch, self.config)


DTYPES = {d.name: d for d in (Dtype("bf16", 2, "BF16", "bfloat16"), Dtype("fp16", 2, "F16", "float16"),
                              Dtype("fp32", 4, "F32", "float32"))}


def torch_dtype(name: str):
    """The torch dtype a recipe's dtype name stands for."""
    return DTYPES[name].torch()
