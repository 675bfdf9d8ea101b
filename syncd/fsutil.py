"""Small filesystem helpers: atomic writes, and what a failed write means for the user."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

from syncd.errors import LocalError

NAME_MAX = 255  # bytes of one file name on Linux filesystems (ext4, xfs, btrfs, tmpfs)
_serial = itertools.count()  # with the pid: temp names no other writer uses (O_EXCL checks anyway)
_pid = os.getpid()  # (a syscall per file otherwise)


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def write_atomic(path: Path | str, data: bytes, *, fsync: bool = True, make_parents: bool = True,
                 mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    Readers see the old content or the new content, never a half-written file. Raises
    LocalError with the fix when the disk is full or the directory is not writable.
    ``make_parents=False``: the caller knows the directory exists (FileNotFoundError if not).
    The file gets ``mode``, or by default what ``cp`` gives a new file: 0666 minus the umask
    (directories made: 0777 minus it).
    The temp file is ``.<name>.<pid>-<n>.tmp``, ``<name>`` shortened so that it fits in a file
    name (``.syncd.<pid>-<n>.tmp`` where even that is too long): a process killed while
    writing leaves it behind, for whoever writes that directory next to sweep
    (syncd.targets.local). A ``path`` whose own name is too long for its filesystem raises
    OSError(ENAMETOOLONG), as other errors but those above.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    if make_parents:
        os.makedirs(directory or ".", exist_ok=True)
    suffix = f".{_pid}-{next(_serial)}.tmp"
    # 0o666: the kernel takes the umask off (no process-wide os.umask() call, which threads race).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    create_mode = 0o666 if mode is None else 0o600
    tmp = os.path.join(directory, _temp_name(name, suffix))
    try:
        try:
            fd = os.open(tmp, flags, create_mode)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            tmp = os.path.join(directory, ".syncd" + suffix)  # a filesystem with shorter names (eCryptfs: 143)
            fd = os.open(tmp, flags, create_mode)
    except OSError as exc:
        _raise_local(exc, path)
    try:
        try:  # plain os calls: a file object would add a buffer and a tty check per file
            if mode is not None:
                os.fchmod(fd, mode)
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


def _temp_name(name: str, suffix: str) -> str:
    """``.<name><suffix>`` with ``name`` cut so that the whole fits in NAME_MAX bytes."""
    if 4 * len(name) < NAME_MAX - len(suffix):
        return f".{name}{suffix}"  # fits whatever the encoding (the usual case: no encoding per file)
    encoded = os.fsencode(name)
    room = NAME_MAX - 1 - len(suffix)
    if len(encoded) > room:
        name = os.fsdecode(encoded[:room])  # a character cut in two stays bytes (surrogate escapes)
    return f".{name}{suffix}"


def write_error(exc: OSError, path: str) -> LocalError | None:
    """The LocalError (what, where, what to do) for a write to ``path`` that failed with
    ``exc`` because of the machine (full, read-only, not permitted), or None for other errors."""
    directory = os.path.dirname(path) or "."
    if exc.errno == errno.ENOSPC:
        return LocalError(f"no space left on the device holding {directory}: free some space")
    if exc.errno == errno.EDQUOT:
        return LocalError(f"the disk quota of this user is used up on the device holding {directory}: "
                          "free some space or raise the quota")
    if exc.errno == errno.EROFS:
        return LocalError(f"{directory} is on a read-only filesystem: remount it read-write")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LocalError(f"cannot write {path}: {exc.strerror}; give the user syncd runs as write access "
                          f"to {directory}")
    return None


def _raise_local(exc: OSError, path: str):
    """Raise the LocalError of ``write_error``, else ``exc`` itself."""
    error = write_error(exc, path)
    if error is not None:
        raise error from exc
    raise exc
