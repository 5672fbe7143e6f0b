"""Exact tensor shapes of a model from its config.json alone, read from the architecture registry.

Each model type in `surgery/architectures/*.yaml` lists every tensor of its state dict with its
dimensions written in config keys (`[num_attention_heads * head_dim, hidden_size]`), and what
transformers assumes for keys a config leaves out. No model is built and neither torch nor
transformers is imported, so `check` and `audit` start fast; tests/test_param_counts.py holds
every family to a transformers model built on the meta device.
"""

from __future__ import annotations

import ast
import operator

from surgery import arch as arch_registry
from surgery.errors import SurgeryError

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """State-dict name -> shape for the model `config` describes (tied heads included)."""
    architecture = arch_registry.for_config(config)
    model_type = config["model_type"]
    spec = architecture.tensors.get(model_type)
    if spec is None:
        raise SurgeryError(f"the registry has no tensor shapes for model_type `{model_type}`",
                           hint=f"add `{model_type}` under `tensors` in surgery/architectures/{architecture.name}.yaml")
    value = _config_values(config, architecture.defaults.get(model_type, {}))
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in _present(spec["model"], value):
        out[name] = _shape(dims, value)
    layer = dict(_present(spec["layer"], value))
    for i in range(architecture.depth_of(config)):
        prefix = architecture.layer_prefix(i)
        for name, dims in layer.items():
            out[prefix + name] = _shape(dims, value)
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _config_values(config: dict, defaults: dict):
    """key -> the config's value, or the family default when the config leaves it out or null."""

    def value(key: str):
        if config.get(key) is not None:
            return config[key]
        if key not in defaults:
            raise SurgeryError(f"the teacher config has no `{key}`", hint="is config.json complete?")
        default = defaults[key]
        return _evaluate(default, value) if isinstance(default, str) else default

    return value


def _present(tensors: dict, value):
    """(name, dims) of the tensors that exist for this config: `NAME if KEY` needs KEY true."""
    for written, dims in tensors.items():
        name, _, condition = written.partition(" if ")
        if not condition or value(condition.strip()):
            yield name, dims


def _shape(dims: list, value) -> tuple[int, ...]:
    shape = tuple(_evaluate(d, value) for d in dims)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SurgeryError(f"the teacher config gives a tensor the shape {shape} (from {dims})",
                           hint="is config.json complete?")
    return shape


def _evaluate(expression: str | int, value) -> int:
    """A dimension as the registry writes it: a whole number, or config keys joined by
    + - * // and parentheses; `value(key)` supplies each key."""
    if isinstance(expression, int):
        return expression

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Name):
            return value(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"registry dimension `{expression}`: write config keys, whole numbers, + - * // and ()")

    try:
        return walk(ast.parse(expression, mode="eval").body)
    except (TypeError, ZeroDivisionError):  # a config value that is not a usable number
        raise SurgeryError(f"the teacher config cannot give the dimension `{expression}`",
                           hint="its keys must be whole numbers in config.json") from None
