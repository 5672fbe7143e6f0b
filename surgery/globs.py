"""The one reading of a recipe's text globs (`data text`, `perplexity text`, `calibration text`)."""

from __future__ import annotations

import glob
from pathlib import Path


def matching(pattern: str | Path) -> list[Path]:
    """The regular files `pattern` names, sorted; `**` matches across directories."""
    return sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
