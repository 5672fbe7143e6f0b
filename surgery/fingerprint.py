"""Content fingerprints of files, model directories and recipe sections.

Stage records and evaluation caches are keyed by what was consumed, not by paths or times.
Hashing a multi-GB model on every run would dominate a skipped stage, so file digests are
memoised by (path, size, mtime, inode) in a JSON file: outputs are written to a temporary
directory and renamed into place, so a rewritten file has a new inode and is hashed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
from pathlib import Path

CHUNK = 1 << 20

# The files a loader reads from a model directory: weights, config and tokenizer. Provenance
# and notes may differ between two copies of the same model without changing what it computes.
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model",
                   "*.tiktoken")
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", *TOKENIZER_FILES)


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_value(value) -> str:
    """A digest of a value as `canonical` writes it."""
    return digest_bytes(json.dumps(canonical(value), sort_keys=True, separators=(",", ":")).encode())


def canonical(value):
    """`value` as plain JSON data: dataclasses become dicts without their positions (the fields
    left out of comparison), and anything JSON has no type for (a function in a task config,
    say) its repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (frozenset, set)):
        return sorted(canonical(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class Digests:
    """sha256 of files, memoised on disk by stat so unchanged files are hashed once."""

    def __init__(self, memo: Path | None = None):
        self.memo_path = memo
        self._memo: dict[str, list] = {}
        if memo is not None and memo.is_file():
            try:
                self._memo = json.loads(memo.read_text())
            except (OSError, json.JSONDecodeError):  # a damaged memo only costs rehashing
                self._memo = {}
        self._dirty = False

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self._memo.get(str(path))
        if known is not None and known[:3] == stamp:
            return known[3]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        self._memo[str(path)] = stamp + [h.hexdigest()]
        self._dirty = True
        return h.hexdigest()

    def files(self, paths, root: Path | None = None) -> str:
        """One digest of several files, by name (relative to `root` when given) and content."""
        entries = []
        for p in sorted(Path(p) for p in paths):
            name = str(p.relative_to(root)) if root is not None else str(p)
            entries.append([name, self.file(p)])
        return digest_value(entries)

    def model_dir(self, directory: Path) -> str:
        """What a loader would read from `directory`: weights, config, tokenizer."""
        return self.files(_matching(directory, MODEL_FILES), root=Path(directory))

    def tokenizer(self, directory: Path) -> str:
        return self.files(_matching(directory, TOKENIZER_FILES), root=Path(directory))

    def tree(self, directory: Path) -> str:
        """Every regular file under `directory`."""
        directory = Path(directory)
        return self.files((p for p in directory.rglob("*") if p.is_file()), root=directory)

    def save(self) -> None:
        if self.memo_path is None or not self._dirty:
            return
        from surgery.durable import write_atomic

        self.memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.memo_path, json.dumps(self._memo))
        self._dirty = False


def _matching(directory: Path, patterns) -> set[Path]:
    return {p for pattern in patterns for p in Path(directory).glob(pattern) if p.is_file()}


SAMPLE_PAGE = 4096
_HUB_BLOB = re.compile(r"[0-9a-f]{64}")


def safetensors_sample(path: Path) -> dict:
    """A cheap fingerprint of a safetensors file: size and sha256 of the header plus sampled pages of data.

    Hashing every byte would cost more than copying it. The samples (one 4 KiB page in every
    256, at least 64) change whenever a model is retrained. A file in the hub cache is stored
    under its full sha256, which is recorded too at no cost.
    """
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        h.update(f.read(length))
        data = 8 + length
        pages = max(64, (size - data) // (256 * SAMPLE_PAGE))
        for i in range(pages):
            f.seek(data + (size - data) * i // pages)
            h.update(f.read(SAMPLE_PAGE))
    out = {"bytes": size, "sampled_sha256": h.hexdigest()}
    blob = path.resolve()
    if blob.parent.name == "blobs" and _HUB_BLOB.fullmatch(blob.name):
        out["sha256"] = blob.name
    return out
