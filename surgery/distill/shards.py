"""Token caches: each data source tokenised once, read by position by every recipe that uses it.

    prepare(compiled) -> the cache root     tokenise what is missing, on all cores; resumes after a crash
    status(compiled) -> Status              is every source of the recipe prepared? (for stage skipping)

Each source (every `data` line, and `validation text`) has its own cache directory, named by a
key: the digest of the teacher's tokenizer files and of the source itself (the content digests
of its files in path order, for local files; name, config, split and field, for a hub dataset;
the content of a local dataset directory). Neither the recipe's path nor `seed`, `seq`, `pack`
or the validation fraction is in it: the shards hold whole documents, in the source's own
order, and rows are cut from them when they are read (surgery.distill.feed). So any recipe over
the same data with the same tokenizer reads the same cache, whatever its `seq` or `pack`.

    <root>/<key>/manifest.json      the shards, in order; a shard exists once listed here
    <root>/<key>/00000.tokens       token ids of its documents back to back (uint16, or uint32 for
                                    vocabularies over 65,536), each document as the stream encodes it
    <root>/<key>/00000.docs.npy     per document slot: its length (0: a slot without text) and its
                                    validation hash (surgery.distill.data.document_hash)

A slot is what the stream counts as one place in a file: a text file, a non-blank jsonl line, a
hub record. Keeping empty ones keeps the stream's permutations, which run over slots, and so its
rows. The root is $SURGERY_CACHE/tokens (default ~/.cache/surgery/tokens).

Writing: the source is cut into pieces of about PIECE_BYTES of text (whole text files, line-
aligned byte ranges of jsonl files, runs of hub records); worker processes, each with the
teacher's fast tokenizer, write a piece's shard under a temporary name and fsync it; the main
process renames finished shards into place in order and then rewrites the manifest atomically.
`kill -9` at any point leaves a manifest that lists only complete shards; the next `prepare`
deletes anything else and goes on from the next piece. A hub dataset is read in its own order up
to what the recipe needs (its share of the planned tokens, or its validation rows, with a
margin); a later recipe that needs more extends the same cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.caches import cache_dir
from surgery.durable import sync_dir
from surgery.errors import SurgeryError

FORMAT = 1  # bump when the shard layout or the encoding convention changes: it is in every key
PIECE_BYTES = 32 << 20  # text per piece (one shard): small enough to spread over cores, large enough to be few
ENCODE_DOCS = 512  # documents per tokenizer call in a worker
MARGIN = 1.05  # a hub source is prepared to 5% more than its expected share, plus SLACK_ROWS rows
SLACK_ROWS = 1000
DOCS = np.dtype([("length", "<i8"), ("hash", "<u8")])
OPEN_FILES = 64  # shard files a reader keeps open


def cache_root() -> Path:
    return cache_dir("tokens")


# ----------------------------------------------------------------------------- sources and keys


@dataclass(frozen=True)
class Source:
    """One source as the cache sees it."""

    spec: object  # the recipe's DataSource
    describe: str
    key: str
    directory: Path
    files: tuple[Path, ...]  # local files, in path order (empty for a hub dataset)
    need: int | None  # tokens a hub dataset is prepared to; None: the whole source

    @property
    def hub(self) -> bool:
        return self.spec.kind == "hf"


@dataclass(frozen=True)
class Status:
    """Whether a recipe's sources are prepared: `key` is one digest of all their keys."""

    key: str
    directories: tuple[Path, ...]  # one per `data` line, then `validation text`'s
    missing: tuple[str, ...]  # the sources not (completely) prepared

    @property
    def complete(self) -> bool:
        return not self.missing


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def sources(compiled) -> list[Source]:
    """The recipe's sources (each `data` line, then `validation text`), with their keys."""
    from surgery import source as model_source
    from surgery.distill import data
    from surgery.fingerprint import Digests
    from surgery.recipe.ast import DataSource

    recipe = compiled.recipe
    d = recipe.distill
    if d is None:
        raise SurgeryError("the recipe has no `distill` block, so no data to prepare", file=recipe.path,
                           hint="add one: see docs/distill.md")
    root = cache_root()
    digests = Digests(root / "digests.json")
    teacher_dir = model_source.weights_dir(compiled.teacher)
    tokenizer = {"files": digests.tokenizer(teacher_dir), "trust_remote_code": recipe.teacher.trust_remote_code}
    specs = list(d.data)
    if d.validation.text is not None:
        specs.append(DataSource("text", d.validation.text, pos=d.validation.pos))
    out = []
    for i, spec in enumerate(specs):
        files: tuple[Path, ...] = ()
        need = None
        if spec.kind == "hf":
            data.HubSource(spec, recipe, d.seed, i)  # checks that it can be read here
            local = recipe.resolve(spec.path)
            what = {"dir": digests.tree(local)} if local.is_dir() else {"name": spec.path}
            what.update(config=spec.config, split=spec.split, field=spec.field)
            describe = f'hf "{spec.path}" split {spec.split}'
            need = _hub_need(compiled, i)
        else:
            found = data.FileSource(spec, recipe, d.seed, i)
            files = tuple(found.paths)
            what = {"files": [digests.file(p) for p in files]}
            if spec.kind == "jsonl":
                what["field"] = spec.field
            describe = f'{spec.kind} "{spec.path}"'
        key = _digest({"format": FORMAT, "tokenizer": tokenizer, "kind": spec.kind, **what})
        out.append(Source(spec, describe, key, root / key[:32], files, need))
    if root.is_dir():  # nothing is written where nothing was prepared
        digests.save()
    return out


def _hub_need(compiled, index: int) -> int:
    """Tokens of hub source `index` that the recipe reads: its share of the training rows, and
    enough for its share of the validation rows, each with a margin."""
    from surgery.distill import steps

    d = compiled.recipe.distill
    schedule = steps.make(compiled, 1, "cpu")
    share = d.data[index].weight / sum(s.weight for s in d.data)
    fraction = d.validation.fraction if d.validation.text is None else 0.0
    train = d.seq * (schedule.steps * schedule.batch * share * MARGIN + SLACK_ROWS) / (1 - fraction)
    held = d.seq * schedule.validation_rows(fraction) * share * MARGIN / fraction if fraction else 0
    return math.ceil(max(train, held))


def status(compiled) -> Status:
    """Whether every source of the recipe has a complete cache (cheap: file digests are memoised)."""
    found = sources(compiled)
    missing = tuple(s.describe for s in found if not prepared(s, read_manifest(s.directory)))
    return Status(_digest([s.key for s in found]), tuple(s.directory for s in found), missing)


def prepared(src: Source, manifest: dict | None) -> bool:
    """Whether `manifest` (a source's, or None) says the source is completely prepared."""
    if manifest is None:
        return False
    if manifest.get("done"):
        return True
    return src.need is not None and manifest["tokens"] >= src.need


def read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise SurgeryError(f"the token cache {directory} is damaged ({err})",
                           hint=f"delete {directory}; `surgery prepare` makes it again") from None
    return manifest if manifest.get("format") == FORMAT else None


# ----------------------------------------------------------------------------- prepare


def prepare(compiled, *, progress: bool = True, workers: int | None = None) -> Path:
    """Tokenise every source of the recipe that is not prepared yet; returns the cache root."""
    from surgery import source as model_source

    cache_root().mkdir(parents=True, exist_ok=True)
    found = sources(compiled)
    todo = [s for s in found if not prepared(s, read_manifest(s.directory))]
    if todo:
        recipe = compiled.recipe
        from surgery.hf import load_tokenizer

        tok = load_tokenizer(model_source.weights_dir(compiled.teacher), compiled.teacher.config,
                             recipe.teacher.trust_remote_code)
        if not getattr(tok, "is_fast", False):
            raise SurgeryError("`prepare` needs a fast tokenizer (a tokenizer.json)", file=recipe.path,
                               pos=recipe.teacher.pos, hint="save the teacher's tokenizer with transformers' "
                                                            "fast tokenizer, or train from the stream")
        encoding = Encoding(tok.backend_tokenizer.to_str(), tok.eos_token_id,
                            tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                            "uint16" if len(tok) <= 1 << 16 else "uint32")
        for src in todo:
            _prepare_source(compiled, src, encoding, workers or _cores(), progress)
    return cache_root()


@dataclass(frozen=True)
class Encoding:
    """What a worker needs to tokenise: the fast tokenizer, serialised, and the conventions."""

    tokenizer: str
    eos: int
    pad: int
    dtype: str


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _prepare_source(compiled, src: Source, encoding: Encoding, workers: int, progress: bool) -> None:
    from surgery.distill import data

    directory = src.directory
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per cache; a second prepare waits, then finds it done
        manifest = read_manifest(directory)
        if prepared(src, manifest):
            return
        if manifest is None:
            manifest = {"format": FORMAT, "key": src.key, "source": src.describe, "dtype": encoding.dtype,
                        "eos": encoding.eos, "pad": encoding.pad, "files": len(src.files) if src.files else 1,
                        "shards": [], "tokens": 0, "done": False}
        _remove_unlisted(directory, manifest)
        ended = {"ended": not src.hub}  # a hub dataset may end before `need`
        if src.hub:
            hub = data.HubSource(src.spec, compiled.recipe, 0, 0)
            pieces = _hub_pieces(hub, manifest, src.need, ended)
            total = src.need
        else:
            pieces = _file_pieces(src, len(manifest["shards"]))
            total = sum(p.stat().st_size for p in src.files)
        with _Progress(progress, src.describe, total, hub=src.hub, done=manifest["tokens"]) as bar:
            _run_pieces(directory, manifest, pieces, encoding, workers, bar)
        manifest["done"] = ended["ended"]
        _write_manifest(directory, manifest)


def _remove_unlisted(directory: Path, manifest: dict) -> None:
    """Delete what a crash left: temporary files and shards the manifest does not list."""
    listed = {f"{s['name']}{suffix}" for s in manifest["shards"] for suffix in (".tokens", ".docs.npy")}
    for p in directory.iterdir():
        if p.name not in listed and p.name not in ("manifest.json", ".lock"):
            p.unlink()


def _file_pieces(src: Source, skip: int):
    """Pieces of a local source, in order, from piece `skip`: deterministic, so a resumed
    prepare cuts the same pieces."""
    def cut():
        if src.spec.kind == "text":
            group, size = [], 0
            for i, p in enumerate(src.files):
                group.append((i, str(p)))
                size += p.stat().st_size
                if size >= PIECE_BYTES:
                    yield {"kind": "text", "files": group}, size
                    group, size = [], 0
            if group:
                yield {"kind": "text", "files": group}, size
            return
        for i, p in enumerate(src.files):
            end = p.stat().st_size
            with open(p, "rb") as fh:
                start = 0
                while start < end:
                    fh.seek(min(start + PIECE_BYTES, end))
                    if fh.tell() < end:
                        fh.readline()  # to the start of the next line
                    stop = fh.tell()
                    yield {"kind": "jsonl", "file": i, "path": str(p), "start": start, "stop": stop,
                           "field": src.spec.field}, stop - start
                    start = stop

    return itertools.islice(cut(), skip, None)


def _hub_pieces(hub, manifest: dict, need: int, ended: dict):
    """Pieces of a hub dataset in its own order, from where the manifest's last shard ended,
    until the manifest holds `need` tokens or the dataset ends (then `ended["ended"]`)."""
    ds = hub.open()
    if manifest["shards"]:
        ds.load_state_dict(manifest["shards"][-1]["after"])
    records = iter(ds)
    while manifest["tokens"] < need:
        texts, size = [], 0
        for record in records:
            text = hub.text(record)
            texts.append(text)
            size += len(text) if text else 0
            if size >= PIECE_BYTES:
                break
        if not texts:
            ended["ended"] = True
            return
        yield {"kind": "texts", "texts": texts, "after": ds.state_dict()}, size


def _run_pieces(directory: Path, manifest: dict, pieces, encoding: Encoding, workers: int, bar) -> None:
    """Tokenise pieces on `workers` processes (in this one when there is a single piece) and
    add their shards to the manifest in order."""
    pieces = iter(pieces)
    first = list(itertools.islice(pieces, 2))
    number = itertools.count(len(manifest["shards"]))

    def finish(piece: dict, size: int, result: dict, name: str) -> None:
        if "error" in result:
            message, hint = result["error"]
            raise SurgeryError(message, hint=hint)
        for suffix in (".tokens", ".docs.npy"):
            os.replace(directory / f".tmp-{name}{suffix}", directory / f"{name}{suffix}")
        sync_dir(directory)
        shard = {"name": name, "slots": result["slots"], "tokens": result["tokens"], "files": result["files"]}
        if "after" in piece:
            shard["after"] = piece["after"]
        manifest["shards"].append(shard)
        manifest["tokens"] += result["tokens"]
        _write_manifest(directory, manifest)
        bar.advance(size, result["tokens"])

    if len(first) < 2:
        _Worker.start(encoding, threads=True)
        for piece, size in first:
            name = f"{next(number):05d}"
            finish(piece, size, _Worker.run(piece, str(directory / f".tmp-{name}")), name)
        return
    import multiprocessing

    # spawn: fresh workers, so neither the parent's threads nor its tokenizer state are copied.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_Worker.start, initargs=(encoding,)) as pool:
        pending: deque = deque()
        for piece, size in itertools.chain(first, pieces):
            name = f"{next(number):05d}"
            pending.append((piece, size, name, pool.apply_async(_Worker.run, (piece, str(directory / f".tmp-{name}")))))
            while len(pending) >= 2 * workers or (pending and pending[0][3].ready()):
                piece_, size_, name_, job = pending.popleft()
                finish(piece_, size_, job.get(), name_)
        while pending:
            piece_, size_, name_, job = pending.popleft()
            finish(piece_, size_, job.get(), name_)


class _Worker:
    """Tokenises pieces in a worker process (or in this one, for a single piece)."""

    encoding: Encoding
    tokenizer = None

    @classmethod
    def start(cls, encoding: Encoding, threads: bool = False) -> None:
        if not threads:  # a worker process: one thread each, the processes are the parallelism
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        from tokenizers import Tokenizer

        cls.encoding = encoding
        cls.tokenizer = Tokenizer.from_str(encoding.tokenizer)
        cls.tokenizer.no_truncation()
        cls.tokenizer.no_padding()

    @classmethod
    def run(cls, piece: dict, tmp: str) -> dict:
        from surgery.distill.data import document_hash

        enc = cls.encoding
        dtype = np.dtype(enc.dtype)
        lengths, hashes, files = [], [], {}
        try:
            with open(tmp + ".tokens", "wb") as out:
                for batch in _batched(_piece_texts(piece), ENCODE_DOCS):
                    texts = [t for _, t in batch if t is not None]
                    ids = [e.ids for e in cls.tokenizer.encode_batch(texts, add_special_tokens=True)]
                    texts_ids = iter(zip(texts, ids))
                    flat = []
                    for file, text in batch:
                        files[file] = files.get(file, 0) + 1
                        if text is None:
                            lengths.append(0)
                            hashes.append(0)
                            continue
                        _, x = next(texts_ids)
                        if not x or x[-1] != enc.eos:
                            x.append(enc.eos)
                        flat.append(x)
                        lengths.append(len(x))
                        hashes.append(document_hash(text))
                    count = sum(map(len, flat))
                    out.write(np.fromiter(itertools.chain.from_iterable(flat), dtype=dtype, count=count).tobytes())
                out.flush()
                os.fsync(out.fileno())
            docs = np.empty(len(lengths), dtype=DOCS)
            docs["length"], docs["hash"] = lengths, np.asarray(hashes, dtype=np.uint64)
            with open(tmp + ".docs.npy", "wb") as out:
                np.save(out, docs)
                out.flush()
                os.fsync(out.fileno())
        except SurgeryError as err:
            return {"error": (err.message, err.hint)}
        return {"slots": len(lengths), "tokens": int(sum(lengths)), "files": [[f, n] for f, n in files.items()]}


def _batched(items, n: int):
    items = iter(items)
    while batch := list(itertools.islice(items, n)):
        yield batch


def _piece_texts(piece: dict):
    """(file index, text or None) for each slot of a piece, in order."""
    from surgery.distill.data import _jsonl_text, _read_text

    if piece["kind"] == "texts":
        for text in piece["texts"]:
            yield 0, text
    elif piece["kind"] == "text":
        for i, path in piece["files"]:
            text = _read_text(Path(path))
            yield i, text if text.strip() else None
    else:
        path = Path(piece["path"])
        with open(path, "rb") as fh:
            fh.seek(piece["start"])
            offset = piece["start"]
            while offset < piece["stop"]:
                line = fh.readline()
                if line.strip():
                    try:
                        text = _jsonl_text(line, path, 0, piece["field"])
                    except SurgeryError:  # now count the lines, for the message
                        _jsonl_text(line, path, _line_number(path, offset), piece["field"])
                    yield piece["file"], text
                offset += len(line)


def _line_number(path: Path, offset: int) -> int:
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / ".tmp-manifest.json"
    with open(tmp, "w") as out:
        json.dump(manifest, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, directory / "manifest.json")
    sync_dir(directory)


class _Progress:
    """A progress bar on stderr (rich): bytes of text, or tokens for a hub dataset."""

    def __init__(self, enabled: bool, describe: str, total: int, *, hub: bool, done: int):
        self.enabled, self.describe, self.total, self.hub = enabled, describe, total, hub
        self.tokens, self.started, self.done = done, time.monotonic(), done

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("prepare {task.description}"), BarColumn(),
                                TextColumn("{task.fields[tokens]} tokens, {task.fields[rate]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.describe, total=self.total, completed=self.done if self.hub else 0,
                                          tokens=f"{self.tokens:,}", rate="")
        return self

    def advance(self, size: int, tokens: int) -> None:
        self.tokens += tokens
        if self.enabled:
            rate = (self.tokens - self.done) / max(time.monotonic() - self.started, 1e-9)
            self.bar.update(self.task, advance=tokens if self.hub else size, tokens=f"{self.tokens:,}",
                            rate=f"{rate / 1e6:.2f}M tokens/s")

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


# ----------------------------------------------------------------------------- reading


class TokenCache:
    """A prepared source, read by position: `read(start, count)` returns tokens
    [start, start + count) of the documents back to back, with one pread per shard touched.
    Only the per-slot index is in memory (16 bytes a slot); the tokens stay on disk."""

    def __init__(self, directory: Path):
        manifest = read_manifest(directory)
        if manifest is None:
            raise SurgeryError(f"no token cache in {directory}", hint="run `surgery prepare RECIPE`")
        self.directory, self.manifest = directory, manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.eos, self.pad = manifest["eos"], manifest["pad"]
        docs = [np.load(directory / f"{s['name']}.docs.npy") for s in manifest["shards"]]
        docs = np.concatenate(docs) if docs else np.zeros(0, dtype=DOCS)
        self.lengths = np.ascontiguousarray(docs["length"])
        self.hashes = np.ascontiguousarray(docs["hash"])
        self.starts = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        self.shard_starts = np.cumsum([0] + [s["tokens"] for s in manifest["shards"]])
        self.file_slots = np.zeros(manifest["files"], dtype=np.int64)
        for s in manifest["shards"]:
            for f, n in s["files"]:
                self.file_slots[f] += n
        self._files: OrderedDict[int, int] = OrderedDict()

    @property
    def slots(self) -> int:
        return len(self.lengths)

    def read(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=self.dtype)
        done = 0
        while done < count:
            s = int(np.searchsorted(self.shard_starts, start + done, side="right")) - 1
            first = start + done - int(self.shard_starts[s])
            n = min(count - done, int(self.shard_starts[s + 1]) - (start + done))
            got = os.preadv(self._fd(s), [memoryview(out[done:done + n]).cast("B")], first * self.dtype.itemsize)
            if got != n * self.dtype.itemsize:
                raise SurgeryError(f"the token cache {self.directory} is shorter than its manifest says",
                                   hint=f"delete {self.directory}; `surgery prepare` makes it again")
            done += n
        return out

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is None:
            if len(self._files) >= OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
            fd = self._files[shard] = os.open(self.directory / f"{self.manifest['shards'][shard]['name']}.tokens",
                                              os.O_RDONLY)
        else:
            self._files.move_to_end(shard)
        return fd

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
