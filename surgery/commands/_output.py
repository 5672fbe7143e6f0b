"""Writing command output to a file atomically, so a reader never sees half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from surgery.errors import SurgeryError, os_error


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
