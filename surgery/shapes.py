"""Exact tensor shapes of a model from its config alone: build it on the `meta` device.

No weights are read or allocated. This is exact for any architecture transformers knows,
which is why parameter and byte counts never come from hand-written formulas.
"""

from __future__ import annotations

import json
from functools import lru_cache

from surgery.errors import SurgeryError


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """State-dict name -> shape for the model `config` describes (tied heads included)."""
    return dict(_shapes(json.dumps(config, sort_keys=True)))


@lru_cache(maxsize=16)
def _shapes(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(config_json)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception as err:  # transformers raises many kinds for a config it cannot build
        raise SurgeryError(f"transformers cannot build a `{config.get('model_type')}` model from this config: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                           hint="check config.json, or the installed transformers version") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return tuple((name, tuple(t.shape)) for name, t in model.state_dict().items())


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
