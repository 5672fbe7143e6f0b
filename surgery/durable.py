"""Directories that appear complete or not at all, and (when synced) survive a power cut.

A directory is written under a temporary name, its files are fsynced, and it is renamed into
place. Replacing an existing one takes two renames (old aside, new in); `recover` finishes the
swap if a crash fell between them, and `clean` also removes what a killed run left beside the
target: `.NAME.XXXXXXXX.tmp` and `.NAME.XXXXXXXX.scratch` directories (the names `temp_dir`
gives) and `.NAME.old`. Nothing of another name is touched. One run writes one target at a time.

`rewrite` is the whole dance for a directory written in one go (a plan, a report, a
comparison), and `write_atomic` does the same for one file (a manifest, a command's output).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from surgery.errors import SurgeryError, os_error

# tempfile's alphabet and length, so leftovers of versions that used tempfile match too.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_KINDS = ("tmp", "scratch")


def temp_dir(out: Path, kind: str = "tmp") -> Path:
    """A new empty directory `.NAME.XXXXXXXX.KIND` beside `out`. Unlike tempfile's (0700), it is
    made with the umask's permissions, as `cp` or `mkdir` would make it."""
    while True:
        path = out.with_name(f".{out.name}.{''.join(secrets.choice(_ALPHABET) for _ in range(8))}.{kind}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def clean(out: Path) -> None:
    """Finish or undo an interrupted swap of `out`, then remove the leftovers of killed writes."""
    recover(out)
    if not out.parent.is_dir():
        return
    ours = re.compile(rf"\.{re.escape(out.name)}(?:\.[{_ALPHABET}]{{8}}\.(?:{'|'.join(_KINDS)})|\.old)")
    for path in out.parent.iterdir():
        if ours.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def sync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directories themselves."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        sync_dir(Path(root))


def swap_into_place(tmp: Path, out: Path, *, sync: bool = True) -> None:
    """Make the finished directory `tmp` be `out`, replacing any `out` there was. With `sync`,
    `tmp`'s files reach the disk first, so the new `out` survives a power cut whole."""
    if sync:
        sync_tree(tmp)
    old = _aside(out)
    _remove(old)
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    if sync:
        sync_dir(out.parent)
    _remove(old)


@contextmanager
def rewrite(out: Path) -> Iterator[Path]:
    """Write the directory `out` whole: the block fills the new directory it is given, which then
    replaces `out`. What a killed write left beside `out` goes first. No fsync: what is written
    this way (a plan, a report, a comparison) is made again from its inputs at will."""
    clean(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(out)
    except OSError as err:
        raise os_error(err, f"cannot write {out}", out.parent) from None
    try:
        yield tmp
        swap_into_place(tmp, out, sync=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(out: Path) -> None:
    """Put back the old `out` if a crash came between `swap_into_place`'s two renames."""
    old = _aside(out)
    if not out.exists() and old.is_dir():
        os.replace(old, out)


def _aside(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _remove(path: Path) -> None:
    """Delete what is at `path` (what `--force` replaced may be a file or a link), if anything."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- single files
def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    An existing file keeps its permissions. A path that cannot be written (no such folder, a
    folder in the way, no permission, a full disk) is a SurgeryError naming it and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise SurgeryError(f"cannot write {path}: it is a folder", hint=f"give a file name, e.g. {path / 'out'}")
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise SurgeryError(f"cannot write {path}: {path.parent} {what}", hint="write into an existing folder")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise os_error(err, f"cannot write {path}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        raise os_error(err, f"cannot write {path}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
