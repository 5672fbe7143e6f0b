"""The distillation engine: train the recipe's student against its teacher (docs/distill.md).

    distill(compiled) -> the student directory, now holding the distilled student

Modules: `data` (corpus -> packed rows, streamed), `shards` (token caches: `surgery prepare`),
`feed` (rows by position from the caches, batches on a background thread), `losses` (the loss
terms), `models` (teacher, student, hidden-state capture), `schedule` (what the distill block means
here), `parallel` (torch.distributed), `checkpoint` (atomic checkpoints and the final export),
`progress` (progress bar and metrics.jsonl), `train` (the loop).
"""

from __future__ import annotations

from pathlib import Path


def distill(compiled, *, dry_run: bool = False, progress: bool = True) -> Path:
    """Distill `compiled.recipe`'s student (written by `surgery init-student`) against its teacher.

    Resumes from the newest checkpoint in `<student_dir>.checkpoints/` when there is one. When
    training ends, the student directory holds the distilled student (HF safetensors, config,
    tokenizer, student_config.json); metrics go to `metrics.jsonl` beside it. With `dry_run`,
    prints the schedule (tokens, steps, memory estimate) and trains nothing.
    """
    from surgery.distill.train import run

    return run(compiled, dry_run=dry_run, progress=progress)
