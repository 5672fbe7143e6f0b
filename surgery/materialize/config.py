"""config.json of a written model: the teacher's, with depth, per-layer lists, tie and dtype rewritten.

Everything else is kept as the teacher has it. Per-layer lists (the registry's `per_layer`,
such as `layer_types`) follow the layers chosen: output layer j takes the entry of the teacher
layer it stands for (a student layer stands for the first layer of its block). A list the
teacher's config.json leaves out but transformers derives from other keys (Qwen2's `layer_types`
from `max_window_layers`) is written out, because the rule would give another pattern at the
new depth.
"""

from __future__ import annotations

from surgery.arch import Architecture
from surgery.dtypes import DTYPES
from surgery.errors import SurgeryError



def rewrite(config: dict, arch: Architecture, origins: tuple[int, ...], *, tied: bool, dtype: str) -> dict:
    """The teacher's `config` for a model whose layers stand for teacher layers `origins`."""
    out = dict(config)
    n_teacher = arch.depth_of(config)
    out[arch.depth] = len(origins)
    for key in arch.per_layer:
        values = config.get(key)
        if values is None:
            values = _derived(config, key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != n_teacher:
            raise SurgeryError(f"the teacher config's `{key}` should list one entry per layer ({n_teacher}), "
                               f"not {values!r}", hint="check the teacher's config.json")
        out[key] = [values[t] for t in origins]
    if arch.is_tied(config):  # a tied teacher's output is untied when embeddings and head come from two models
        out[arch.tie] = tied
    out.pop("torch_dtype", None)  # the transformers 4 spelling; transformers 5 writes `dtype`
    out["dtype"] = DTYPES[dtype].config
    return out


def _derived(config: dict, key: str) -> list | None:
    """The list `key` that transformers derives for `config`, or None if it derives none."""
    # transformers derives per-layer attention types from the sliding-window settings; without a
    # window in use there is no pattern to keep, and transformers (with torch) is not imported.
    if not config.get("sliding_window") or not config.get("use_sliding_window", True):
        return None
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:  # a remote-code architecture: nothing to derive from here
        return None
    return getattr(CONFIG_MAPPING[model_type].from_dict(config), key, None)
