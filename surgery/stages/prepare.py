"""prepare: tokenise the distill block's data once into the shared token cache.

The cache is keyed by the tokenizer and the sources' content (surgery/distill/shards.py), not
by the run, so a second recipe over the same data finds it done. Distillation reads rows from
it by position when every source is complete, and streams otherwise.
"""

from __future__ import annotations

from pathlib import Path

from surgery.stages import Context

NAME = "prepare"


def skip_reason(ctx: Context) -> str | None:
    return None if ctx.recipe.distill else "no distill block: nothing to tokenise"


def inputs(ctx: Context) -> dict:
    from surgery.distill import shards

    return {"cache": shards.status(ctx.compiled).key}


def run(ctx: Context, *, workers: int | None = None, progress: bool = True) -> tuple[Path, ...]:
    """Tokenise what is not in the cache yet; the cache directories, one per source."""
    from surgery.distill import shards

    shards.prepare(ctx.compiled, progress=progress, workers=workers)
    return shards.status(ctx.compiled).directories


def intact(ctx: Context) -> bool:
    from surgery.distill import shards

    return shards.status(ctx.compiled).complete
