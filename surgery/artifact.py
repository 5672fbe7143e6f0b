"""Artifacts: directories that surgery made, each holding a `manifest.json` that says so.

A manifest names the stage that wrote the directory, the tool version, the recipe's sha256 and
fingerprints of the inputs it was made from. Two rules rest on it:
- a consumer compares the manifest with what it would make now, and calls a mismatch stale;
- `--force` replaces a directory only when it holds a manifest, so nothing surgery did not
  make is ever deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from surgery import __version__

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    """A stage's output directory and its `manifest.json`."""

    path: Path
    manifest: dict

    @property
    def stage(self) -> str | None:
        return self.manifest.get("stage")

    @property
    def recipe_sha256(self) -> str | None:
        return self.manifest.get("recipe", {}).get("sha256")

    @property
    def inputs(self) -> dict:
        return self.manifest.get("inputs", {})


def manifest(stage: str, *, recipe_path: Path | None, recipe_sha256: str | None, inputs: dict, **extra) -> dict:
    """The manifest of a new artifact; `extra` holds what the stage wants to record besides."""
    return {"surgery": __version__, "stage": stage,
            "recipe": {"path": None if recipe_path is None else str(recipe_path), "sha256": recipe_sha256},
            "inputs": inputs, **extra}


def read(directory: Path) -> Artifact | None:
    """The artifact at `directory`, or None when it holds no readable manifest of surgery's."""
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "surgery" not in data or "stage" not in data:
        return None
    return Artifact(Path(directory), data)


def made_by_surgery(path: Path) -> bool:
    """Whether `path` is a directory surgery made (and so may replace with `--force`)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and read(path) is not None
