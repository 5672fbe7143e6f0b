"""A cache of evaluation results: one JSON file per (model fingerprint, evaluation key).

The model fingerprint is the content digest of the model directory (surgery.fingerprint), and
the key holds everything else the score depends on (metric, settings, data digests, versions),
so a re-emitted identical model reuses its scores and a changed one never does.
"""

from __future__ import annotations

import json
from pathlib import Path

from surgery.durable import write_atomic
from surgery.fingerprint import canonical, digest_value


class ResultCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _path(self, model: str, key: dict) -> Path:
        return self.directory / model[:16] / f"{digest_value(key)[:24]}.json"

    def get(self, model: str, key: dict):
        path = self._path(model, key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry["result"] if entry.get("key") == canonical(key) else None

    def put(self, model: str, key: dict, result) -> None:
        path = self._path(model, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"model": model, "key": canonical(key), "result": result}, indent=1))
