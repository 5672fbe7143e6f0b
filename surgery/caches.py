"""Where surgery keeps what it can always recompute, shared by every run on the machine.

`$SURGERY_CACHE`, else `$XDG_CACHE_HOME/surgery`, else `~/.cache/surgery`. Everything under it
is keyed by content (token shards by tokenizer, sources, `seq` and `pack`; scores by model
digest and evaluation settings; the parsed grammar and architecture registry by their text),
so two recipes that share data or models compute them once, and deleting the folder only
costs recomputation.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache for one `kind` of thing: "tokens", "scores", "grammar" or "registry"."""
    base = os.environ.get("SURGERY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "surgery")
    return Path(base) / kind
