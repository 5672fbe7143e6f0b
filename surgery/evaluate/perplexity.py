"""Token-level perplexity with a sliding window over held-out text (`perplexity text "glob"`).

Each file is one document, tokenized on its own without special tokens. Windows of `seq`
tokens start every `stride` tokens, and each window scores only the tokens that no earlier
window scored. So every token but a document's first is scored exactly once, with at least
`seq - stride` tokens of context once the window is full. With `stride == seq` the windows are
disjoint and a window's first token is context only: the usual chunked evaluation.

Windows from all documents are batched (right-padded, masked), so short documents share a
forward pass. Logits are upcast to fp32 one row at a time, never for the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from surgery import devices
from surgery.errors import SurgeryError
from surgery.globs import matching

BATCH_TOKENS = 8192  # tokens per forward pass; windows per batch = BATCH_TOKENS // seq


@dataclass(frozen=True)
class Window:
    doc: int
    begin: int  # first token fed to the model
    end: int  # one past the last token fed
    first: int  # first scored token; tokens before it in the window are context only


@dataclass(frozen=True)
class Score:
    nll: float  # summed negative log-likelihood, nats
    tokens: int  # scored tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)


def windows(n: int, seq: int, stride: int, doc: int = 0) -> list[Window]:
    """The windows over a document of n tokens."""
    out: list[Window] = []
    scored_to = 1  # a document's first token has no context
    for begin in range(0, n, stride):
        end = min(begin + seq, n)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append(Window(doc, begin, end, first))
        scored_to = end
        if end == n:
            break
    return out


def text_files(pattern: Path | str) -> list[Path]:
    """The files a `perplexity text` glob names, sorted; an error when there are none."""
    files = matching(pattern)
    if not files:
        raise SurgeryError(f"no files match the perplexity text glob {pattern}",
                           hint="the glob is relative to the recipe's directory")
    return files


def tokenize(tokenizer, files: list[Path]) -> list[list[int]]:
    docs = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        docs.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if sum(len(d) for d in docs) < 2:
        raise SurgeryError(f"the perplexity text ({len(files)} files) has fewer than 2 tokens",
                           hint="point `perplexity text` at held-out text")
    return docs


def score(model, docs: list[list[int]], seq: int, stride: int, *, batch_size: int | None = None,
          pad_id: int = 0) -> Score:
    """Summed NLL and token count of `docs` under `model`, on the model's device."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq > limit:
        raise SurgeryError(f"perplexity seq {seq} is longer than the model's {limit} positions",
                           hint=f"use `seq {limit}` or less")
    batch_size = batch_size or max(1, BATCH_TOKENS // seq)
    work = [w for i, d in enumerate(docs) for w in windows(len(d), seq, stride, i)]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(work), batch_size):
            batch = work[start:start + batch_size]
            width = max(w.end - w.begin for w in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, w in enumerate(batch):
                tokens = torch.tensor(docs[w.doc][w.begin:w.end])
                ids[row, :len(tokens)] = tokens
                mask[row, :len(tokens)] = 1
                labels[row, w.first - w.begin:len(tokens)] = tokens[w.first - w.begin:]
                count += w.end - w.first
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            labels = labels.to(device)
            for row in range(len(batch)):  # position t predicts token t + 1
                nll += F.cross_entropy(logits[row, :-1].float(), labels[row, 1:], ignore_index=-100,
                                       reduction="sum").item()
    return Score(nll, count)



def load_model(directory: Path, device: str = "auto", *, trust_remote_code: bool = False):
    """A model directory loaded for scoring: its stored dtype on GPU, fp32 on CPU."""
    import torch
    from transformers.utils import logging

    from surgery.hf import load_causal_lm

    logging.disable_progress_bar()  # one bar per load would drown the pipeline's display
    device = devices.resolve(device)
    dtype = "auto" if device != "cpu" else torch.float32
    return load_causal_lm(directory, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def perplexity_of(directory: Path, docs: list[list[int]], seq: int, stride: int, *, device: str = "auto",
                  trust_remote_code: bool = False) -> Score:
    """Load the model in `directory` and score the tokenized documents."""
    import torch

    model = load_model(directory, device, trust_remote_code=trust_remote_code)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    try:
        return score(model, docs, seq, stride, pad_id=pad)
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
