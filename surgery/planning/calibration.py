"""Calibration rows: `calibration text "glob" samples N seq L`, tokenized with the teacher's tokenizer.

Files are read in sorted order, each tokenized on its own without special tokens and closed with
EOS, and the stream is cut into rows of exactly L tokens until N rows are full. Rows need no
padding or mask, and the same recipe always gives the same rows.
"""

from __future__ import annotations

from surgery.errors import SurgeryError
from surgery.globs import matching
from surgery.recipe.ast import Calibration, Recipe


def token_rows(recipe: Recipe, calibration: Calibration, tokenizer):
    """A [rows, seq] LongTensor of token ids, rows <= samples."""
    import torch

    pattern = recipe.resolve(calibration.text)
    files = matching(pattern)
    where = dict(file=recipe.path, pos=calibration.pos)
    if not files:
        raise SurgeryError(f"no files match the calibration text glob {pattern}", **where,
                           hint="the glob is relative to the recipe's directory")
    need = calibration.samples * calibration.seq
    stream: list[int] = []
    for path in files:
        stream += tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
        if len(stream) >= need:
            break
    rows = min(len(stream) // calibration.seq, calibration.samples)
    if rows == 0:
        raise SurgeryError(f"the calibration text has {len(stream)} tokens, fewer than one row of `seq "
                           f"{calibration.seq}`", **where, hint="add text or use a smaller `seq`")
    return torch.tensor(stream[:rows * calibration.seq], dtype=torch.long).view(rows, calibration.seq)
