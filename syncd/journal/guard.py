"""The journal's file on disk, watched from outside SQLite: who holds its write lock.

SQLite cannot tell: a write transaction another process keeps open (an operator's
``sqlite3`` shell after ``BEGIN``) is only "database is locked" to it.

- ``write_lock_holder(db)``: the process holding the journal's write lock, as
  ``"pid 1234 (sqlite3)"``, or None. It reads the lock with ``F_GETLK``, which never reports
  the calling process's own locks: None while the journal is busy means syncd itself holds it.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# SQLite's unix VFS locks bytes of the -shm file: 120 the WAL write lock, 121 the checkpointer,
# 122 recovery (readers lock 123 and up, and never stop a writer).
SHM_WRITE_LOCKS = (120, 3)
# ... and, outside WAL mode or in locking_mode=EXCLUSIVE, its pending, reserved and shared
# bytes of the database file itself (from 2**30).
DB_LOCK_BYTES = (0x40000000, 512)
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (off_t is 64-bit)


def _holder(path: str, start: int, length: int, kind: int) -> int | None:
    """The pid of a process whose lock on ``path`` conflicts with a ``kind`` lock on the
    range (0: in another pid namespace); None when none does or the file cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0) + bytes(8)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    finally:
        os.close(fd)
    kind_found, _whence, _start, _length, pid = struct.unpack_from(_FLOCK, answer)
    return None if kind_found == fcntl.F_UNLCK else pid


def write_lock_holder(db: Path, *, but: int | None = None) -> str | None:
    """Who holds the journal's write lock (another process than this one and than ``but``), or None."""
    pid = _holder(f"{db}-shm", *SHM_WRITE_LOCKS, fcntl.F_WRLCK)
    if pid is None:
        pid = _holder(str(db), *DB_LOCK_BYTES, fcntl.F_RDLCK)  # conflicts only with a write lock
    if pid is None or pid == but:
        return None
    return describe_process(pid)


def describe_process(pid: int) -> str:
    """``"pid 1234 (sqlite3 /srv/syncd/state/syncd.db)"``: the command line where /proc shows it."""
    if pid <= 0:
        return "another process (in another pid namespace)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = " ".join(f.read(400).decode(errors="replace").replace("\0", " ").split())
    except OSError:
        command = ""
    if len(command) > 80:
        command = command[:77] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"
