"""Safetensors files as byte ranges: read headers, copy tensors between files, write shards.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. So a tensor whose dtype does not
change moves from one file to another as a byte range, inside the kernel
(`os.copy_file_range`, else `sendfile`, else read/write), and never becomes a tensor object.
Only a dtype conversion needs torch, and it converts one tensor at a time.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import SurgeryError

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOATS = ("F64", "F32", "F16", "BF16")  # converted to the output dtype; everything else is copied as is
HEADER_ALIGN = 8  # tensor data starts 8-byte aligned, as the safetensors library writes it
MAX_HEADER = 100 * 10**6
INDEX_NAME = "model.safetensors.index.json"
CHUNK = 64 << 20  # the read/write fallback's buffer


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in one file: where its bytes are."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict, int]:
    """(header dict without `__metadata__`, offset of the data section) of a safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SurgeryError(f"{path}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER:
                raise SurgeryError(f"{path}: header length {length} is not plausible; is this a safetensors file?")
            raw = f.read(length)
    except OSError as err:
        raise SurgeryError(f"cannot read {path}: {err.strerror}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SurgeryError(f"{path}: the safetensors header is not valid JSON", hint="the file may be truncated") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def entries(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of one file, checked against the file's size."""
    header, data_start = read_header(path)
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SurgeryError(f"{path}: tensor `{name}` has a malformed header entry") from None
        expected = _numel(shape) * ITEMSIZE.get(dtype, 0)
        if dtype not in ITEMSIZE or begin < 0 or end - begin != expected or data_start + end > size:
            raise SurgeryError(f"{path}: tensor `{name}` ({dtype}, shape {list(shape)}) has byte range "
                               f"{begin}..{end}, which does not fit", hint="the file may be truncated or damaged")
        out[name] = TensorEntry(path, name, dtype, shape, data_start + begin, data_start + end)
    return out


class TensorIndex:
    """All tensors of a model directory, across its shards."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.files = _weight_files(self.directory)
        self.tensors: dict[str, TensorEntry] = {}
        for path in self.files:
            for name, entry in entries(path).items():
                if name in self.tensors:
                    raise SurgeryError(f"{path}: tensor `{name}` is also in {self.tensors[name].file.name}")
                self.tensors[name] = entry


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError):
            raise SurgeryError(f"{index}: not a valid safetensors index (no `weight_map`)") from None
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise SurgeryError(f"{index} names {missing[0]}, which is not in {directory}",
                               hint="the download may be incomplete")
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise SurgeryError(f"{directory} has no *.safetensors files",
                           hint="surgery reads weights from safetensors only; convert with `save_pretrained`")
    return files


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------------------- fingerprints
# ---------------------------------------------------------------------------- copying bytes
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


def _by_copy_file_range(src: int, src_at: int, dst: int, dst_at: int, n: int) -> int:
    return os.copy_file_range(src, dst, n, src_at, dst_at)


def _by_sendfile(src: int, src_at: int, dst: int, dst_at: int, n: int) -> int:
    os.lseek(dst, dst_at, os.SEEK_SET)
    return os.sendfile(dst, src, src_at, n)


def _by_read_write(src: int, src_at: int, dst: int, dst_at: int, n: int) -> int:
    data = os.pread(src, min(n, CHUNK), src_at)
    return os.pwrite(dst, data, dst_at) if data else 0


# The ways to move bytes, best first; one that the kernel or filesystem refuses is dropped.
_methods = [m for m, ok in ((_by_copy_file_range, hasattr(os, "copy_file_range")),
                            (_by_sendfile, hasattr(os, "sendfile")), (_by_read_write, True)) if ok]


def copy_bytes(src: int, src_at: int, dst: int, dst_at: int, n: int) -> None:
    """Copy n bytes between two open files at the given offsets; EOFError if the source ends early."""
    while n > 0:
        try:
            done = _methods[0](src, src_at, dst, dst_at, n)
        except OSError as err:
            if err.errno in _UNSUPPORTED and len(_methods) > 1:
                _methods.pop(0)
                continue
            raise
        if done == 0:
            raise EOFError
        src_at, dst_at, n = src_at + done, dst_at + done, n - done


def _converted(src: int, entry: TensorEntry, dtype: str) -> memoryview:
    """The bytes of `entry` converted to `dtype` (a safetensors dtype name)."""
    import torch

    torch_dtype = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    buf = bytearray(entry.nbytes)
    view, at = memoryview(buf), 0
    while at < entry.nbytes:
        got = os.preadv(src, [view[at:]], entry.start + at)
        if got == 0:
            raise EOFError
        at += got
    tensor = torch.frombuffer(buf, dtype=torch_dtype[entry.dtype]).to(torch_dtype[dtype])
    return memoryview(tensor.view(torch.uint8).numpy())


def _pwrite_all(dst: int, data: memoryview, at: int) -> None:
    # One write moves at most about 2 GiB on Linux; a large embedding needs several.
    while data:
        done = os.pwrite(dst, data, at)
        data, at = data[done:], at + done


# ---------------------------------------------------------------------------- writing shards
@dataclass(frozen=True)
class OutTensor:
    name: str  # name in the output
    source: TensorEntry
    dtype: str  # safetensors dtype in the output

    @property
    def nbytes(self) -> int:
        return _numel(self.source.shape) * ITEMSIZE[self.dtype]


def output_dtype(source_dtype: str, dtype: str) -> str:
    """Floating tensors take the output dtype; integer and bool buffers keep their own."""
    return dtype if source_dtype in FLOATS else source_dtype


def shard_groups(tensors: list[OutTensor], shard_bytes: int) -> list[list[OutTensor]]:
    """Tensors in order, cut into shards of at most `shard_bytes` (a larger tensor gets its own)."""
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    return groups


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(tensors: list[OutTensor], directory: Path, shard_bytes: int) -> list[str]:
    """Write the tensors as safetensors shards (and the index when there are several)."""
    groups = shard_groups(tensors, shard_bytes)
    names = shard_names(len(groups))
    fds: dict[Path, int] = {}
    try:
        for name, group in zip(names, groups):
            _write_shard(directory / name, group, fds)
    finally:
        for fd in fds.values():
            os.close(fd)
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                 "weight_map": {t.name: name for name, group in zip(names, groups) for t in group}}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


def _write_shard(path: Path, group: list[OutTensor], fds: dict[Path, int]) -> None:
    # Wider dtypes first keeps every tensor aligned to its item size, as the safetensors library does.
    group = sorted(group, key=lambda t: -ITEMSIZE[t.dtype])
    header: dict = {"__metadata__": {"format": "pt"}}
    at = 0
    for t in group:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.source.shape), "data_offsets": [at, at + t.nbytes]}
        at += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % HEADER_ALIGN)
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(dst, struct.pack("<Q", len(raw)) + raw)
        at = 8 + len(raw)
        for t in group:
            src = fds.get(t.source.file)
            if src is None:
                src = fds[t.source.file] = os.open(t.source.file, os.O_RDONLY)
            try:
                if t.dtype == t.source.dtype:
                    copy_bytes(src, t.source.start, dst, at, t.nbytes)
                elif t.nbytes:
                    _pwrite_all(dst, _converted(src, t.source, t.dtype), at)
            except (OSError, EOFError) as err:
                why = "ends early" if isinstance(err, EOFError) else err.strerror
                raise SurgeryError(f"{t.source.file}: cannot copy tensor `{t.source.name}`: {why}",
                                   hint="the source file may be truncated or the disk full") from None
            at += t.nbytes
    finally:
        os.close(dst)
