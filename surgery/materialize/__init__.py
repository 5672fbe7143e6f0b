"""Materialize models on the layer graph as Hugging Face safetensors directories, streamed.

No torch model is built (except for `init random`) and no model is held in memory: tensors
move between safetensors files as byte ranges, and are converted one at a time when the
dtype changes. See docs/materialize.md for the output layout and the rules it follows.
"""

from surgery.materialize.writer import emit, init_student, write_model

__all__ = ["emit", "init_student", "write_model"]
