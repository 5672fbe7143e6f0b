"""A cache of evaluation results: one JSON file per (model fingerprint, evaluation key).

The model fingerprint is the content digest of the model directory (surgery.fingerprint), and
the key holds everything else the score depends on (metric, settings, data digests, versions),
so a re-emitted identical model reuses its scores and a changed one never does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from surgery.caches import cache_dir
from surgery.durable import write_atomic
from surgery.errors import SurgeryError
from surgery.fingerprint import canonical, digest_value


class ResultCache:
    """Scores on disk; by default in the machine's shared cache, so a teacher or a naive-pruning
    model that several runs evaluate the same way is scored once."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir("scores")

    def require_writable(self) -> None:
        """Refuse before any scoring, rather than after the first score, when the cache cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.directory, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            raise SurgeryError(f"cannot write the score cache {self.directory}",
                               hint="set SURGERY_CACHE to a writable folder")

    def _path(self, model: str, key: dict) -> Path:
        return self.directory / model[:16] / f"{digest_value(key)[:24]}.json"

    def get(self, model: str, key: dict):
        path = self._path(model, key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        # The file name holds digest prefixes only: the entry itself must name this model and key.
        return entry["result"] if entry.get("model") == model and entry.get("key") == canonical(key) else None

    def put(self, model: str, key: dict, result) -> None:
        path = self._path(model, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"model": model, "key": canonical(key), "result": result}, indent=1))
