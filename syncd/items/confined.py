"""Reading a file of a watched folder only if it is inside the folder at the moment it is read.

A name checked when it was listed proves nothing by the time it is opened: a directory on the
way (``inbox/cam``) may have been swapped for a symlink to anywhere since. ``read_inside``
opens the path as it is, then asks the kernel where the open file really is
(``/proc/self/fd/N``) and refuses it unless that is below the folder's real path. Whatever was
swapped, and whenever, the bytes returned are those of a file inside the folder. It costs one
``readlink`` per file (open, fstat, readlink, read, close).

Symlinks whose target is inside the folder are followed, as before; symlinked directories are
never walked by scans (``syncd.items.convention.walk``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# O_NONBLOCK: a file swapped for a FIFO after its stat must not block the reader forever
# (regular files ignore the flag); O_NOCTTY: a terminal device never becomes ours.
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_real_roots: dict[str, str] = {}  # a folder's path -> its real path (symlinks resolved), checked on a miss


class OutsideFolder(Exception):
    """The file opened is not inside the folder; ``real`` is where it is."""

    def __init__(self, real: str):
        super().__init__(real)
        self.real = real


class NotRegular(OSError):
    """The path is not a regular file (a FIFO, a device, a socket)."""


def read_inside(path: str | Path, root: str | Path) -> bytes:
    """The bytes of the regular file ``path``, which must be inside the directory ``root``.

    Raises ``OutsideFolder`` when the file opened lies outside ``root`` (through a symlinked
    file or any symlinked directory on the way), ``IsADirectoryError`` or ``NotRegular`` for
    anything but a regular file, and what ``open``/``read`` raise (FileNotFoundError,
    PermissionError, ELOOP, EIO...).
    """
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        mode, size = st.st_mode, st.st_size
        real = _where(fd, path)
        if not _inside(real, os.fspath(root)):
            raise OutsideFolder(real)
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))
            raise NotRegular(errno.EINVAL, "not a regular file", os.fspath(path))
        return _read_all(fd, size)
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes: ``size`` from fstat, then read until a short read (a file object
    would add a buffer and a tty check per file)."""
    want = size + 1  # one more: a file that grew since is read on
    chunks = []
    while True:
        chunk = os.read(fd, want)
        chunks.append(chunk)
        if len(chunk) < want:  # end of file (a short read of a regular file)
            return b"".join(chunks) if len(chunks) > 1 else chunk
        want = 1 << 20


def _where(fd: int, path: str | Path) -> str:
    """The real path of the open file ``fd``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        # No /proc (a bare chroot): resolve the name, and accept it only if it still names
        # the very file that is open.
        real = os.path.realpath(path)
        opened, named = os.fstat(fd), _stat_or_none(real)
        if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            return f"{real} (changed while it was opened)"
        return real


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _inside(real: str, root: str) -> bool:
    known = _real_roots.get(root)
    if known is not None and real.startswith(known):
        return True
    fresh = os.path.realpath(root).rstrip("/") + "/"  # first use, or the folder moved
    _real_roots[root] = fresh
    return real.startswith(fresh)
