"""Training data: documents in, rows of exactly `seq` token ids out.

- A source is a glob of text files (one document per file), a glob of jsonl files (one
  document per line, read from `field`), or a Hugging Face dataset, streamed.
- Documents are tokenised with the teacher's tokenizer (its own special-token convention, e.g.
  a leading BOS), each followed by EOS, and packed back to back into rows: no padding. With
  `pack no` each document starts a new row and the tail of its last row is padding.
- Order is deterministic from `seed`: local files are visited in a seeded permutation per
  epoch, and the lines of a jsonl file too; a hub dataset is shuffled by `datasets` with a
  buffer. Several sources mix by weight: row r comes from a source picked by a hash of
  (seed, r), so each source supplies about its weight's share of rows.
- Validation: `validation 0.5%` holds out the documents whose content hash falls under 0.5%,
  from training in every epoch (the split does not depend on `seed`, so runs with different
  seeds share it); `validation text "glob"` reads separate files instead.
- The position in the stream is a small state (epoch, file and line reached, tokens read but
  not yet packed, rows emitted) that checkpoints save and resume from exactly. A hub stream's
  position is the `datasets` iterable state at the start of its current block, so resuming
  re-reads at most one block.

This module streams: documents are read and tokenised as training goes. `surgery prepare`
tokenises every source once instead (surgery.distill.shards), and training then reads rows by
position from that cache (surgery.distill.feed): the same rows, for local files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from surgery.errors import SurgeryError
from surgery.globs import matching
from surgery.recipe.ast import DataSource, Distill, Recipe

DOCS_PER_READ = 64  # documents tokenised per call: the fast tokenizer works in batches
HUB_SHUFFLE_BUFFER = 10_000


@dataclass
class Rows:
    """A batch of rows: token ids [n, seq] and the number of real tokens in each row.

    With `local`, the batch is a global one read for one process: `lengths` covers every row
    (the loss is normalised by the whole batch's tokens) but `tokens` holds only that
    process's share, the rows `part` gives it.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    local: bool = False

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, s: slice) -> "Rows":
        assert not self.local, "a process's share of a batch is taken with part()"
        return Rows(self.tokens[s], self.lengths[s])

    def part(self, rank: int, size: int) -> "Rows":
        """Process `rank`'s share of a global batch: the rank-th of `size` equal slices."""
        n = len(self) // size
        if not self.local:
            return self[rank * n:(rank + 1) * n]
        assert len(self.tokens) == n, (len(self.tokens), n)
        return Rows(self.tokens, self.lengths[rank * n:(rank + 1) * n])


def _uniform(key: bytes, *parts) -> float:
    """A number in [0, 1) from a hash: the same inputs give the same number everywhere."""
    h = hashlib.blake2b(key, digest_size=8)
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return int.from_bytes(h.digest(), "little") / 2**64


def document_hash(text: str) -> int:
    """A document's 64-bit content hash: it is held out when hash / 2**64 < the fraction."""
    h = hashlib.blake2b(b"surgery-validation", digest_size=8)
    h.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the validation split."""
    return document_hash(text) / 2**64 < fraction


def pick(weights: np.ndarray, live: np.ndarray, key: bytes, row: int) -> int:
    """The source of mixture row `row`: by weight among the live sources, from a hash of (key, row)."""
    w = np.where(live, weights, 0.0)
    edges = np.cumsum(w) / w.sum()
    return min(int(np.searchsorted(edges, _uniform(key, row), side="right")), len(w) - 1)


# ----------------------------------------------------------------------------- tokenizer


class Encoder:
    """Text -> token ids with the teacher's conventions, each document ending in EOS."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]  # long documents are fine
        return [np.asarray(x + [self.eos] if not x or x[-1] != self.eos else x, dtype=np.int64) for x in ids]


# ----------------------------------------------------------------------------- sources
# A source yields (text, position after it) for one epoch, from a position; (0, 0) is the
# start. Positions are (file, line within the file) for files, see HubSource for a hub stream.


class FileSource:
    """Text files (one document each) or jsonl files (one document per line)."""

    def __init__(self, spec: DataSource, recipe: Recipe, seed: int, index: int):
        self.spec, self.seed, self.index = spec, seed, index
        pattern = str(recipe.resolve(spec.path))
        self.paths = matching(pattern)
        if not self.paths:
            raise SurgeryError(f'no files match "{spec.path}"', file=recipe.path, pos=spec.pos,
                               hint=f"looked for {pattern}")

    @property
    def describe(self) -> str:
        size = sum(p.stat().st_size for p in self.paths)
        return f'{self.spec.kind} "{self.spec.path}": {len(self.paths)} files, {size / 1e6:.3g} MB'

    def _order(self, epoch: int, n: int, *more) -> np.ndarray:
        return np.random.default_rng([self.seed, self.index, epoch, *more]).permutation(n)

    def documents(self, epoch: int, position: tuple[int, int]) -> Iterator[tuple[str, tuple[int, int]]]:
        files = self._order(epoch, len(self.paths))
        first_file, first_line = position
        for f in range(first_file, len(files)):
            path = self.paths[files[f]]
            if self.spec.kind == "text":
                text = _read_text(path)
                if text.strip():
                    yield text, (f + 1, 0)
                continue
            offsets, numbers = _lines(path)
            lines = self._order(epoch, len(offsets), int(files[f]))
            start = first_line if f == first_file else 0
            with open(path, "rb") as fh:
                for i in range(start, len(lines)):
                    fh.seek(offsets[lines[i]])
                    text = _jsonl_text(fh.readline(), path, int(numbers[lines[i]]), self.spec.field)
                    if text is not None:
                        yield text, (f, i + 1)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SurgeryError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and 1-based line numbers of the non-blank lines of a file."""
    offsets, numbers, pos = [], [], 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                offsets.append(pos)
                numbers.append(number)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(numbers, dtype=np.int64)


def _jsonl_text(line: bytes, path: Path, lineno: int, field: str) -> str | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SurgeryError(f"{path}:{lineno}: not a JSON line ({err.__class__.__name__})") from None
    if not isinstance(record, dict) or field not in record:
        raise SurgeryError(f"{path}:{lineno}: no field `{field}`", hint='name the text field with `field "..."`')
    text = record[field]
    if not isinstance(text, str):
        raise SurgeryError(f"{path}:{lineno}: field `{field}` holds {type(text).__name__}, not text")
    return text or None


class HubSource:
    """A Hugging Face dataset, streamed (a hub id, or a local dataset directory)."""

    def __init__(self, spec: DataSource, recipe: Recipe, seed: int, index: int):
        self.spec, self.seed, self.index = spec, seed, index
        local = recipe.resolve(spec.path)
        self.path = str(local) if local.is_dir() else spec.path
        self.where = dict(file=recipe.path, pos=spec.pos)
        if not local.is_dir() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise SurgeryError(f'`data hf "{spec.path}"` streams from the Hugging Face hub, but HF_HUB_OFFLINE=1',
                               hint="run where the hub is reachable, or point `data jsonl`/`data text` at local "
                                    "files", **self.where)
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise SurgeryError("`data hf` needs the `datasets` package",
                               hint="pip install datasets (surgery's `data` extra)",
                               **self.where) from None

    @property
    def describe(self) -> str:
        return _hub_text(self.spec)

    def open(self):
        """The dataset as an iterable in its own order (a streamed `datasets.IterableDataset`)."""
        import datasets

        try:
            return datasets.load_dataset(self.path, name=self.spec.config, split=self.spec.split, streaming=True)
        except Exception as err:  # datasets raises many kinds for an unreachable or unknown dataset
            raise SurgeryError(f'cannot stream dataset "{self.spec.path}": {type(err).__name__}: '
                               f"{str(err).splitlines()[0] if str(err) else ''}",
                               hint="check the name, split and config, and that the hub is reachable",
                               **self.where) from None

    def text(self, record: dict) -> str | None:
        """A record's document, or None when it has none."""
        if self.spec.field not in record:
            raise SurgeryError(f'dataset "{self.spec.path}" has no field `{self.spec.field}`',
                               hint=f"its fields: {', '.join(sorted(record))}", **self.where)
        text = record[self.spec.field]
        return text if isinstance(text, str) and text else None

    def documents(self, epoch: int, position):
        """Blocks of HUB_SHUFFLE_BUFFER records, each shuffled by (seed, epoch, block). A position
        is (block, records of it used, the `datasets` state at the block's start): resuming loads
        that state and re-reads one block, never the records before it."""
        block, used, state = position if position != (0, 0) else (0, 0, None)
        ds = self.open()
        if state is not None:
            ds.load_state_dict(state)
        records = iter(ds)
        while True:
            texts = [self.text(r) for r in itertools.islice(records, HUB_SHUFFLE_BUFFER)]
            if not texts:
                return
            order = np.random.default_rng([self.seed, self.index, epoch, block]).permutation(len(texts))
            for i in range(used, len(texts)):
                if texts[order[i]] is not None:
                    yield texts[order[i]], (block, i + 1, state)
            state = ds.state_dict()  # where the next block starts
            block, used = block + 1, 0


def _hub_text(spec: DataSource, note: str = "streamed") -> str:
    return f'hf "{spec.path}" split {spec.split} ({note})'


def open_source(spec: DataSource, recipe: Recipe, seed: int, index: int):
    return (HubSource if spec.kind == "hf" else FileSource)(spec, recipe, seed, index)


# ----------------------------------------------------------------------------- packing


class Packer:
    """One source's documents -> rows, remembering exactly how far it has read.

    `keep(text)` filters documents (the training/validation split). With `cycle`, the source
    restarts in a new epoch (a new order) when it runs out; without, `row()` returns None.
    """

    def __init__(self, source, encode: Encoder, seq: int, pack: bool, keep, cycle: bool):
        self.source, self.encode, self.seq, self.pack, self.keep, self.cycle = source, encode, seq, pack, keep, cycle
        self.epoch, self.position = 0, (0, 0)
        self.buffer: list[np.ndarray] = []  # tokenised documents not yet packed, in order
        self._docs = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": list(self.position), "buffer": [d.tolist() for d in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], tuple(state["position"])
        self.buffer = [np.asarray(d, dtype=np.int64) for d in state["buffer"]]
        self._docs = None

    def _next_document(self) -> str | None:
        """The next kept document, going on into a new epoch at the end (None if not cycling)."""
        while True:
            if self._docs is None:
                self._docs = self.source.documents(self.epoch, self.position)
                self._whole_epoch, self._found = self.position == (0, 0), False
            item = next(self._docs, None)
            if item is None:
                self._docs = None
                if not self.cycle:
                    return None
                if self._whole_epoch and not self._found:
                    raise SurgeryError(f"{self.source.describe}: no documents to train on",
                                       hint="the files are empty, or every document is held out for validation")
                self.epoch, self.position = self.epoch + 1, (0, 0)
                continue
            text, self.position = item
            if self.keep(text):
                self._found = True
                return text

    def _read(self) -> bool:
        """Tokenise the next few documents into the buffer; False once a non-cycling source ends."""
        texts = []
        while len(texts) < DOCS_PER_READ:
            text = self._next_document()
            if text is None:
                break
            texts.append(text)
        self.buffer.extend(self.encode(texts) if texts else [])
        return bool(texts)

    def row(self) -> tuple[np.ndarray, int] | None:
        """The next row and its number of real tokens, or None when a non-cycling source ends."""
        if self.pack:
            while sum(len(d) for d in self.buffer) < self.seq:
                if not self._read():
                    return None
            pieces, need = [], self.seq
            while need:
                doc = self.buffer[0]
                pieces.append(doc[:need])
                if len(doc) > need:
                    self.buffer[0] = doc[need:]
                else:
                    self.buffer.pop(0)
                need -= len(pieces[-1])
            return np.concatenate(pieces), self.seq
        if not self.buffer and not self._read():
            return None
        doc = self.buffer[0]
        row = doc[: self.seq]
        if len(doc) > self.seq:
            self.buffer[0] = doc[self.seq:]
        else:
            self.buffer.pop(0)
        padded = np.full(self.seq, self.encode.pad, dtype=np.int64)
        padded[: len(row)] = row
        return padded, len(row)


class Mixture:
    """Rows from several packers, each row's source picked by weight from a hash of (seed, row)."""

    def __init__(self, packers: list[Packer], weights: list[float], seed: int):
        self.packers = packers
        self.weights = np.asarray(weights, dtype=np.float64)
        self.key = f"surgery-mix-{seed}".encode()
        self.rows = 0
        self.live = np.ones(len(packers), dtype=bool)  # non-cycling sources drop out at their end

    def state_dict(self) -> dict:
        return {"rows": self.rows, "sources": [p.state_dict() for p in self.packers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["sources"]) != len(self.packers):
            raise SurgeryError("the checkpoint's data position has a different number of data sources",
                               hint="the recipe's `data` lines changed since the checkpoint")
        self.rows = state["rows"]
        for p, s in zip(self.packers, state["sources"]):
            p.load_state_dict(s)

    def _pick(self) -> int:
        return pick(self.weights, self.live, self.key, self.rows)

    def take(self, n: int) -> Rows:
        """The next n rows (fewer only when non-cycling sources run out)."""
        tokens, lengths = [], []
        while len(tokens) < n and self.live.any():
            i = self._pick()
            got = self.packers[i].row()
            if got is None:
                self.live[i] = False
                continue
            self.rows += 1
            tokens.append(got[0])
            lengths.append(got[1])
        seq = self.packers[0].seq
        return Rows(np.stack(tokens) if tokens else np.zeros((0, seq), dtype=np.int64),
                    np.asarray(lengths, dtype=np.int64))


# ----------------------------------------------------------------------------- the corpus


class Corpus:
    """The recipe's training stream and validation rows."""

    def __init__(self, recipe: Recipe, tokenizer):
        d: Distill = recipe.distill
        self.recipe, self.distill = recipe, d
        self.encode = Encoder(tokenizer)
        self.sources = [open_source(s, recipe, d.seed, i) for i, s in enumerate(d.data)]
        self.fraction = d.validation.fraction if d.validation.text is None else 0.0
        keep = (lambda t: True) if not self.fraction else (lambda t: not held_out(t, self.fraction))
        self.train = Mixture([Packer(s, self.encode, d.seq, d.pack, keep, cycle=True) for s in self.sources],
                             [s.weight for s in d.data], d.seed)

    def validation(self, n_rows: int) -> Rows:
        """Up to n_rows validation rows: held-out documents, or the `validation text` files."""
        d = self.distill
        if d.validation.text is not None:
            spec = DataSource("text", d.validation.text, pos=d.validation.pos)
            packers = [Packer(FileSource(spec, self.recipe, d.seed, len(d.data)), self.encode, d.seq, d.pack,
                              lambda t: True, cycle=False)]
            weights = [1.0]
        else:
            packers = [Packer(s, self.encode, d.seq, d.pack, lambda t: held_out(t, self.fraction), cycle=False)
                       for s in self.sources]
            weights = [s.weight for s in d.data]
        rows = Mixture(packers, weights, d.seed).take(n_rows)
        if len(rows) == 0:
            raise SurgeryError("the validation split is empty", file=self.recipe.path, pos=d.validation.pos or d.pos,
                               hint="raise `validation` (e.g. 5%), or give `validation text \"glob\"`")
        return rows


def describe_sources(recipe: Recipe) -> list[str]:
    """One line per data source, for --dry-run: local globs are matched, hub data is named
    without being opened (that needs the hub, and `datasets` takes seconds to import)."""
    d = recipe.distill
    lines = [(_hub_text(s, "streamed when training starts, not opened now") if s.kind == "hf"
              else FileSource(s, recipe, d.seed, i).describe) + f", weight {s.weight:g}" for i, s in enumerate(d.data)]
    if d.validation.text is not None:
        spec = DataSource("text", d.validation.text, pos=d.validation.pos)
        lines.append("validation " + FileSource(spec, recipe, d.seed, len(d.data)).describe)
    return lines
