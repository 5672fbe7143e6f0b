"""Rows for training: from the prepared token cache by position, or streamed as before.

`open_rows(compiled, world)` picks the source of rows: the recipe's token caches when `surgery
prepare` has made them all (surgery.distill.shards), the stream otherwise (surgery.distill.data).
Either way `Feed` makes the batches on a background thread, a few steps ahead, so an
accelerator's step does not wait for reading or tokenising. On a CPU the step already keeps
every core busy, and a reader thread beside it only competes for them (30 streamed steps of
the demo on 2 cores: 3-6% less wall time in the step's thread, three paired runs), so there
the batches are made in the step's own thread.

From the cache, a source's rows are its kept documents (not held out, not empty) in the order
the stream visits them, the same seeded permutation of files and of lines in each file per
epoch, cut at `seq` tokens (`pack yes`) or at each document's end (`pack no`). Row k of a
source is therefore a position: tokens [k·seq, (k+1)·seq) of its endless sequence of epochs, or
the k-th document piece. Which source row r of the mixture comes from is the stream's hash of
(seed, r). The position of the whole data is the rows taken from each source: resuming sets it,
and reads nothing before it. For local files the rows are exactly the stream's; a hub dataset
is read from the cache in a seeded permutation of its prepared records instead of the stream's
shuffled blocks.

With several processes, each reads the tokens of its own rows of each global batch only (and
the length of every row, from the index, for the loss's normalisation). The position is a
count of global rows, so a checkpoint resumes exactly on any number of processes that
divides `batch`.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from surgery.distill import data, shards
from surgery.errors import SurgeryError

READ_AHEAD = 2  # batches the background thread keeps ready


class SourceRows:
    """One source's rows by position, from its cache. `keep` marks the slots it may use (the
    training or validation side of the split); `cycle`: endless epochs, or one epoch."""

    def __init__(self, cache: shards.TokenCache, slots: int, keep: np.ndarray, *, seed: int, index: int,
                 seq: int, pack: bool, cycle: bool, describe: str):
        self.cache, self.slots, self.seq, self.pack, self.cycle = cache, slots, seq, pack, cycle
        self.seed, self.index, self.describe = seed, index, describe
        self.lengths = cache.lengths[:slots]
        self.kept = keep[:slots] & (self.lengths > 0)
        # A hub dataset's cache is one file; a prefix of it (the slots this run started with) too.
        self.file_slots = cache.file_slots if slots == cache.slots else np.asarray([slots])
        self.file_first = np.concatenate([[0], np.cumsum(self.file_slots)[:-1]])
        kept_lengths = self.lengths[self.kept]
        self.per_epoch = int(kept_lengths.sum()) if pack else int(((kept_lengths + seq - 1) // seq).sum())
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The kept slots in the order epoch `epoch` visits them, and where each starts: in
        tokens of the epoch (pack) or rows (pack no)."""
        if epoch not in self._epochs:
            files = np.random.default_rng([self.seed, self.index, epoch]).permutation(len(self.file_slots))
            if (self.file_slots == 1).all():
                order = self.file_first[files]
            else:
                order = np.concatenate(
                    [self.file_first[f] + (np.random.default_rng([self.seed, self.index, epoch, int(f)])
                                           .permutation(self.file_slots[f]) if self.file_slots[f] > 1
                                           else np.zeros(self.file_slots[f], dtype=np.int64)) for f in files])
            order = order[self.kept[order]]
            sizes = self.lengths[order] if self.pack else (self.lengths[order] + self.seq - 1) // self.seq
            starts = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(sizes, out=starts[1:])
            if len(self._epochs) >= 2:  # rows go forwards: an epoch and the next are enough
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (order, starts)
        return self._epochs[epoch]

    def exists(self, k: int) -> bool:
        if self.cycle:
            if not self.per_epoch:
                raise SurgeryError(f"{self.describe}: no documents to train on",
                                   hint="the files are empty, or every document is held out for validation")
            return True
        return (k + 1) * self.seq <= self.per_epoch if self.pack else k < self.per_epoch

    def _pieces(self, k: int):
        """(slot, first token, end token) of the documents that make row k."""
        if not self.pack:
            epoch, r = divmod(k, self.per_epoch)
            order, starts = self._epoch(epoch)
            i = int(np.searchsorted(starts, r, side="right")) - 1
            slot = int(order[i])
            first = (r - int(starts[i])) * self.seq
            yield slot, first, min(int(self.lengths[slot]), first + self.seq)
            return
        at, end = k * self.seq, (k + 1) * self.seq
        while at < end:
            epoch, offset = divmod(at, self.per_epoch)
            order, starts = self._epoch(epoch)
            i = int(np.searchsorted(starts, offset, side="right")) - 1
            slot = int(order[i])
            first = offset - int(starts[i])
            take = min(end - at, int(self.lengths[slot]) - first)
            yield slot, first, first + take
            at += take

    def length(self, k: int) -> int:
        if self.pack:
            return self.seq
        (_, first, end), = self._pieces(k)
        return end - first

    def row(self, k: int, out: np.ndarray) -> None:
        """Write row k's tokens into `out` (a row of int64; padding after a short document)."""
        at = 0
        for slot, first, end in self._pieces(k):
            out[at:at + end - first] = self.cache.read(int(self.cache.starts[slot]) + first, end - first)
            at += end - first
        out[at:] = self.cache.pad


class Positions:
    """Which source each row of a mixture comes from, as the stream's Mixture picks them."""

    def __init__(self, sources: list[SourceRows], weights, seed: int):
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.key = f"surgery-mix-{seed}".encode()
        self.rows = 0
        self.counts = [0] * len(sources)
        self.live = np.ones(len(sources), dtype=bool)

    def take(self, n: int) -> list[tuple[int, int]]:
        """(source, row of that source) for the next n rows; fewer when one-epoch sources end."""
        out = []
        while len(out) < n and self.live.any():
            i = 0 if len(self.sources) == 1 else data.pick(self.weights, self.live, self.key, self.rows)
            k = self.counts[i]
            if not self.sources[i].exists(k):
                self.live[i] = False
                continue
            self.counts[i] += 1
            self.rows += 1
            out.append((i, k))
        return out

    def read(self, picked: list[tuple[int, int]], seq: int) -> np.ndarray:
        tokens = np.empty((len(picked), seq), dtype=np.int64)
        for row, (i, k) in zip(tokens, picked):
            self.sources[i].row(k, row)
        return tokens

    def lengths(self, picked: list[tuple[int, int]]) -> np.ndarray:
        return np.asarray([self.sources[i].length(k) for i, k in picked], dtype=np.int64)


def cache_positions(directory, seq: int, *, pack: bool = True, seed: int = 0) -> Positions:
    """Every row of one prepared cache, in training's order, nothing held out (for benchmarks)."""
    cache = shards.TokenCache(directory)
    source = SourceRows(cache, cache.slots, np.ones(cache.slots, dtype=bool), seed=seed, index=0, seq=seq, pack=pack,
                        cycle=True, describe=str(directory))
    return Positions([source], [1.0], seed)


class CachedRows:
    """The recipe's rows from its token caches: training batches by position, validation rows."""

    def __init__(self, compiled, world, found: list[shards.Source]):
        d = compiled.recipe.distill
        self.recipe, self.distill, self.world = compiled.recipe, d, world
        self.caches = [shards.TokenCache(s.directory) for s in found]
        self.found = found
        self.fraction = d.validation.fraction if d.validation.text is None else 0.0
        self.train = self._positions(cycle=True, held=False)
        self.describe = "prepared token cache " + ", ".join(str(s.directory) for s in found[:len(d.data)])

    def _positions(self, *, cycle: bool, held: bool, slots: list[int] | None = None) -> Positions:
        d = self.distill
        threshold = np.float64(self.fraction)
        sources = []
        for i, (src, cache) in enumerate(zip(self.found[:len(d.data)], self.caches)):
            is_held = cache.hashes.astype(np.float64) / 2.0**64 < threshold  # as data.held_out decides
            n = cache.slots if slots is None else slots[i]
            sources.append(SourceRows(cache, n, is_held if held else ~is_held, seed=d.seed, index=i, seq=d.seq,
                                      pack=d.pack, cycle=cycle, describe=src.describe))
        return Positions(sources, [s.weight for s in d.data], d.seed)

    def validation(self, n_rows: int) -> data.Rows:
        d = self.distill
        if d.validation.text is not None:
            cache = self.caches[len(d.data)]
            source = SourceRows(cache, cache.slots, np.ones(cache.slots, dtype=bool), seed=d.seed, index=len(d.data),
                                seq=d.seq, pack=d.pack, cycle=False, describe=self.found[-1].describe)
            positions = Positions([source], [1.0], d.seed)
        else:
            positions = self._positions(cycle=False, held=True)
        picked = positions.take(n_rows)
        if not picked:
            raise SurgeryError("the validation split is empty", file=self.recipe.path,
                               pos=d.validation.pos or d.pos,
                               hint="raise `validation` (e.g. 5%), or give `validation text \"glob\"`")
        return data.Rows(positions.read(picked, d.seq), positions.lengths(picked))

    def take(self, n: int) -> data.Rows:
        """The next global batch of n rows: every row's length, and this process's rows' tokens."""
        picked = self.train.take(n)
        lengths = self.train.lengths(picked)
        world = self.world
        if world.size == 1:
            return data.Rows(self.train.read(picked, self.distill.seq), lengths)
        share = n // world.size
        mine = picked[world.rank * share:(world.rank + 1) * share]
        return data.Rows(self.train.read(mine, self.distill.seq), lengths, local=True)

    def state_dict(self) -> dict:
        return {"read": "cache", "rows": self.train.rows,
                "sources": [{"rows": c, "slots": s.slots} for c, s in zip(self.train.counts, self.train.sources)]}

    def load_state_dict(self, state: dict) -> None:
        d = self.distill
        if len(state["sources"]) != len(d.data):
            raise SurgeryError("the checkpoint's data position has a different number of data sources",
                               hint="the recipe's `data` lines changed since the checkpoint")
        if state.get("read") != "cache":
            state = self._from_stream(state)
        for s, cache in zip(state["sources"], self.caches):
            if s["slots"] > cache.slots:
                raise SurgeryError(f"the token cache {cache.directory} holds fewer documents than when the "
                                   f"checkpoint was made", hint="run `surgery prepare` again to extend it")
        self.train = self._positions(cycle=True, held=False, slots=[s["slots"] for s in state["sources"]])
        self.train.rows = state["rows"]
        self.train.counts = [s["rows"] for s in state["sources"]]

    def _from_stream(self, state: dict) -> dict:
        """A streamed run's position as a cache position: the same rows, for local files."""
        if any(s.kind == "hf" for s in self.distill.data):
            raise SurgeryError("the checkpoint streamed `data hf`, whose prepared cache gives other rows",
                               hint="move the token cache away to resume streaming, or delete the checkpoints "
                                    "to start over from the cache")
        positions = self._positions(cycle=True, held=False)
        positions.take(state["rows"])  # replays the stream's picks of sources; reads no tokens
        return {"read": "cache", "rows": positions.rows,
                "sources": [{"rows": c, "slots": s.slots} for c, s in zip(positions.counts, positions.sources)]}


class StreamedRows:
    """The recipe's rows streamed and tokenised as they are read (no prepared cache)."""

    def __init__(self, compiled):
        from surgery import source
        from surgery.hf import load_tokenizer

        recipe = compiled.recipe
        tokenizer = load_tokenizer(source.weights_dir(compiled.teacher), compiled.teacher.config,
                                   recipe.teacher.trust_remote_code)
        self.recipe = recipe
        self.corpus = data.Corpus(recipe, tokenizer)
        self.describe = "streamed (`surgery prepare` tokenises once, ahead)"

    def validation(self, n_rows: int) -> data.Rows:
        return self.corpus.validation(n_rows)

    def take(self, n: int) -> data.Rows:
        return self.corpus.train.take(n)

    def state_dict(self) -> dict:
        return self.corpus.train.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state.get("read") == "cache":
            raise SurgeryError("the checkpoint read its rows from a prepared token cache that is gone or incomplete",
                               hint=f"run `surgery prepare {self.recipe.path}` to make it again")
        self.corpus.train.load_state_dict(state)


def open_rows(compiled, world):
    """The recipe's rows: from its token caches when they are all prepared, else streamed."""
    if not shards.cache_root().is_dir():
        return StreamedRows(compiled)
    found = shards.sources(compiled)
    if all(shards.prepared(s, shards.read_manifest(s.directory)) for s in found):
        return CachedRows(compiled, world, found)
    return StreamedRows(compiled)


class Feed:
    """`count` batches of `batch` rows, each with the data position after it: made by a
    background thread up to READ_AHEAD batches before they are used, or, with `ahead=False`,
    when asked for."""

    def __init__(self, rows, batch: int, count: int, *, ahead: bool = True):
        self._rows, self._batch, self._left = rows, batch, count
        self._thread = None
        if ahead:
            self._queue: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True, name="surgery-data")
            self._thread.start()

    def _next_batch(self) -> tuple[data.Rows, dict]:
        if self._left <= 0:
            raise StopIteration
        self._left -= 1
        return self._rows.take(self._batch), self._rows.state_dict()

    def _run(self) -> None:
        try:
            while self._left > 0:
                if not self._put(self._next_batch()):
                    return
        except BaseException as err:  # raised again in the training thread
            self._put(err)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> tuple[data.Rows, dict]:
        if self._thread is None:
            return self._next_batch()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
