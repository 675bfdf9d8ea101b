"""Small filesystem helpers: atomic writes."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

from syncd.errors import LocalError

_serial = itertools.count()  # with the pid: temp names no other writer uses (O_EXCL checks anyway)
_pid = os.getpid()  # (a syscall per file otherwise)


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def write_atomic(path: Path | str, data: bytes, *, fsync: bool = True, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    Readers see the old content or the new content, never a half-written file. Raises
    LocalError with the fix when the disk is full or the directory is not writable.
    ``make_parents=False``: the caller knows the directory exists (FileNotFoundError if not).
    The temp file is ``.<name>.<pid>-<n>.tmp``: a process killed while writing leaves it
    behind, for whoever writes that directory next to sweep (syncd.targets.local).
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    if make_parents:
        os.makedirs(directory or ".", exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{_pid}-{next(_serial)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        _raise_local(exc, path)
    try:
        try:  # plain os calls: a file object would add a buffer and a tty check per file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _raise_local(exc, path)


def _raise_local(exc: OSError, path: str):
    """Raise the LocalError (with the fix) for a full disk or a directory not writable, else ``exc``."""
    if exc.errno == errno.ENOSPC:
        raise LocalError(f"no space left on the device holding {os.path.dirname(path)}: free some space") from exc
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise LocalError(f"cannot write {path}: {exc.strerror}; check the directory's permissions") from exc
    raise exc
