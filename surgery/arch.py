"""The architecture registry: each family's layer layout, read from `architectures/*.yaml`.

Knowledge of a family is data, not code: where its layers live in the state dict, which
tensors travel with the first block (embeddings) and with the last (final norm, head),
whether the head may be tied, the config key for depth, the per-layer config lists, and for
each model type what transformers assumes for config keys left out and every tensor's shape
(surgery/shapes.py reads those, so parameter counts need neither torch nor transformers).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from surgery.caches import cache_dir
from surgery.errors import SurgeryError

REGISTRY_DIR = Path(__file__).resolve().parent / "architectures"
# A schedule lists a model per patch step, each as long as the teacher, so the work grows with
# depth squared: refused above this (in a second at this depth; published models have < 200 layers).
MAX_LAYERS = 1024


@dataclass(frozen=True)
class Architecture:
    """One family's layer layout, from its file in `architectures/`."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # state-dict prefix of layer i, with `{i}`
    depth: str  # config key holding the number of layers
    embeddings: tuple[str, ...]  # prefixes that come from the model supplying the first block
    final: tuple[str, ...]  # prefixes that come from the model supplying the last block
    embedding_weight: str
    head_weight: str
    head_aliases: tuple[str, ...]
    tie: str  # config key that says the head is tied to the embeddings
    per_layer: tuple[str, ...]  # config lists with one entry per layer
    positions: str = "max_position_embeddings"  # config key: the longest sequence the model takes
    # model_type -> {config key: value or expression} for keys a config.json may leave out
    defaults: dict[str, dict] = field(default_factory=dict, compare=False)
    # model_type -> {"model": {name: dims}, "layer": {name: dims}}, read by surgery/shapes.py
    tensors: dict[str, dict] = field(default_factory=dict, compare=False)

    def layer_prefix(self, i: int) -> str:
        return self.layers.format(i=i)

    @property
    def _layer_re(self) -> re.Pattern:
        head, tail = self.layers.split("{i}")
        return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))

    def layer_of(self, tensor: str) -> int | None:
        """The layer index a tensor belongs to, or None for embeddings and final tensors."""
        m = self._layer_re.match(tensor)
        return int(m.group(1)) if m else None

    def rename_layer(self, tensor: str, new_index: int) -> str:
        """`model.layers.7.mlp.up_proj.weight` renumbered to layer `new_index`."""
        return self._layer_re.sub(self.layer_prefix(new_index), tensor, count=1)

    def part_of(self, tensor: str) -> str:
        """'layer', 'embeddings' or 'final' for a tensor name; raises for one it cannot place."""
        if self.layer_of(tensor) is not None:
            return "layer"
        if any(tensor.startswith(p) for p in self.embeddings):
            return "embeddings"
        if any(tensor.startswith(p) for p in self.final):
            return "final"
        raise SurgeryError(
            f"tensor `{tensor}` is not part of the known {self.name} layout",
            hint=f"the {self.name} entry in surgery/architectures/ lists the prefixes it knows",
        )

    def depth_of(self, config: dict) -> int:
        """The number of layers the config gives: a whole number from 1 to MAX_LAYERS."""
        value = config.get(self.depth)
        if value is None:
            raise SurgeryError(f"the config has no `{self.depth}`", hint="is config.json complete?")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SurgeryError(f"the config's `{self.depth}` is {json.dumps(value)[:40]}, not a positive whole number",
                               hint="is config.json complete?")
        if value > MAX_LAYERS:
            raise SurgeryError(f"the config's `{self.depth}` is {value:,}; surgery handles models of at most "
                               f"{MAX_LAYERS:,} layers",
                               hint="the deepest published language models have under 200 layers; is config.json "
                                    "right?")
        return value

    def is_tied(self, config: dict) -> bool:
        tied = config.get(self.tie)
        if tied is None:
            tied = self.defaults.get(config.get("model_type"), {}).get(self.tie, False)
        return bool(tied)


@lru_cache(maxsize=1)
def registry() -> dict[str, Architecture]:
    """model_type -> Architecture, for every entry in the registry folder."""
    out: dict[str, Architecture] = {}
    for raw in _entries():
        arch = Architecture(
            name=raw["name"],
            model_types=tuple(raw["model_types"]),
            layers=raw["layers"],
            depth=raw["depth"],
            embeddings=tuple(raw["embeddings"]),
            final=tuple(raw["final"]),
            embedding_weight=raw["embedding_weight"],
            head_weight=raw["head_weight"],
            head_aliases=tuple(raw.get("head_aliases", ())),
            tie=raw["tie"],
            per_layer=tuple(raw.get("per_layer", ())),
            positions=raw.get("positions", "max_position_embeddings"),
            defaults=raw.get("defaults", {}),
            tensors=raw.get("tensors", {}),
        )
        for model_type in arch.model_types:
            out[model_type] = arch
    return out


def _entries() -> list[dict]:
    """The registry files, parsed, in name order.

    Importing and running yaml costs a tenth of `surgery check`, so the parsed entries are kept
    as JSON in the cache, named by the files' names and bytes: an edited file is parsed again.
    Entries that JSON would change (a non-string key, say) are not cached, only parsed.
    """
    paths = sorted(REGISTRY_DIR.glob("*.yaml"))
    texts = [path.read_bytes() for path in paths]
    digest = hashlib.sha256()
    for path, text in zip(paths, texts):
        digest.update(b"%s\0%d\0%s" % (path.name.encode(), len(text), text))
    key = digest.hexdigest()
    cached = cache_dir("registry") / f"architectures-{key[:16]}.json"
    try:
        kept = json.loads(cached.read_bytes())
        if kept["digest"] == key:
            return kept["entries"]
    except (OSError, ValueError, TypeError, KeyError):  # not cached yet, or unreadable: parse the files
        pass
    import yaml  # only here: see above

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's where installed: 10x faster
    entries = [yaml.load(text, Loader=loader) for text in texts]
    encoded = json.dumps({"digest": key, "entries": entries})
    if json.loads(encoded)["entries"] == entries:
        _keep(cached, encoded)
    return entries


def _keep(path: Path, text: str) -> None:
    """Write a cache file, or nothing where the cache cannot be written (it only saves time)."""
    from surgery.durable import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    except (OSError, SurgeryError):
        pass


def for_config(config: dict, where: str = "the teacher config") -> Architecture:
    """The architecture of a config.json dict, or a SurgeryError listing the known ones."""
    model_type = config.get("model_type")
    known = registry()
    if isinstance(model_type, str) and model_type in known:
        return known[model_type]
    raise SurgeryError(
        f"{where} has model_type `{model_type}`, which has no known layer layout",
        hint=f"known: {', '.join(sorted(known))}; add a YAML entry in surgery/architectures/",
    )
