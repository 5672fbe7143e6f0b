"""Directories that appear complete or not at all, and survive a power cut once they do.

A directory is written under a temporary name, its files are fsynced, and it is renamed into
place. Replacing an existing one takes two renames (old aside, new in); `recover` finishes the
swap if a crash fell between them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def sync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the directories themselves."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        _sync_dir(Path(root))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Make the finished directory `tmp` be `out`, replacing any `out` there was."""
    sync_tree(tmp)
    old = _aside(out)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _sync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Put back the old `out` if a crash came between `swap_into_place`'s two renames."""
    old = _aside(out)
    if not out.exists() and old.is_dir():
        os.replace(old, out)


def _aside(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
