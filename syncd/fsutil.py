"""Small filesystem helpers: atomic writes."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from syncd.errors import LocalError


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    Readers see the old content or the new content, never a half-written file. Raises
    LocalError with the fix when the disk is full or the directory is not writable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno == errno.ENOSPC:
            raise LocalError(f"no space left on the device holding {path.parent}: free some space") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LocalError(f"cannot write {path}: {exc.strerror}; check the directory's permissions") from exc
        raise
