"""The journal's file on disk, watched from outside SQLite: who holds its write lock, and
whether the file at ``<state_dir>/syncd.db`` is still the journal the daemon opened.

SQLite cannot tell either. A write transaction another process keeps open (an operator's
``sqlite3`` shell after ``BEGIN``) is only "database is locked"; the file deleted, replaced
or truncated under an open connection goes unnoticed (the connection keeps its inode and
its page cache) until the next start finds an empty journal and sends everything again.

- ``write_lock_holder(db)``: the process holding the journal's write lock, as
  ``"pid 1234 (sqlite3)"``, or None. It reads the lock with ``F_GETLK``, which never reports
  the calling process's own locks: None while the journal is busy means syncd itself holds it.
- ``JournalFile``: the identity (device, inode) and size of the file when it was opened;
  ``check()`` (one ``stat``) raises ``JournalLost`` once it was deleted, replaced or truncated.
- ``check_before_open(state_dir)``: refuses to start on a state directory whose journal is
  gone or empty while the lock file says syncd has run there (``JournalLost``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import time
from pathlib import Path

from syncd.errors import JournalLost

HEADER = b"SQLite format 3\0"  # the first 16 bytes of every SQLite database file
# SQLite's unix VFS locks bytes of the -shm file: 120 the WAL write lock, 121 the checkpointer,
# 122 recovery (readers lock 123 and up, and never stop a writer).
SHM_WRITE_LOCKS = (120, 3)
# ... and, outside WAL mode or in locking_mode=EXCLUSIVE, its pending, reserved and shared
# bytes of the database file itself (from 2**30).
DB_LOCK_BYTES = (0x40000000, 512)
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (off_t is 64-bit)

ADVICE = ("Restore syncd.db from a backup into {dir}, or move {dir} aside (mv {dir} {dir}.old) to start "
          "with a new journal: every item is then delivered again under its own key (a platform's existing "
          "item is found and updated, not duplicated; the local target writes its files again)")


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


class JournalFile:
    """The journal file as opened: ``check()`` says when it is no longer that file."""

    def __init__(self, db: Path):
        self.path = db
        st = os.stat(db)
        self.identity = (st.st_dev, st.st_ino)
        self.size = st.st_size

    def check(self) -> None:
        """One ``stat``: raise ``JournalLost`` when the file was deleted, replaced or truncated."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise JournalLost(self._lost("was deleted"), kind="deleted") from None
        except OSError:
            return  # cannot look (a permission changed): the writes will say what is wrong
        if (st.st_dev, st.st_ino) != self.identity:
            raise JournalLost(self._lost("was replaced by another file"), kind="replaced")
        if st.st_size != self.size:
            # Only SQLite's checkpoints change the size: it grows, or after an operator's VACUUM
            # shrinks, and the header still says how long the file is.
            if not _whole(self.path, st.st_size, exact=st.st_size < self.size):
                raise JournalLost(self._lost(f"was truncated (from {self.size} to {st.st_size} bytes)"),
                                  kind="truncated")
            self.size = st.st_size

    def _lost(self, what: str) -> str:
        return f"the journal {self.path} {what} while syncd was running: syncd stopped"



def _whole(db: Path, size: int, *, exact: bool) -> bool:
    """The file starts with a database header and, with ``exact``, is at least as long as
    the header says (page size x page count; only when the header vouches for that count).
    Not ``exact`` while a write-ahead log may hold pages not yet copied into the file."""
    try:
        with open(db, "rb") as f:
            header = f.read(100)
    except OSError:
        return True  # cannot tell
    if len(header) < 100 or not header.startswith(HEADER):
        return False
    if not exact or header[92:96] != header[24:28]:  # "version-valid-for" != change counter: count unknown
        return True
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return page_size * int.from_bytes(header[28:32], "big") <= size


def check_before_open(state_dir: Path, db_name: str, lock_name: str) -> None:
    """Refuse a state directory whose journal was lost: syncd has used it (its lock file is
    there) but the journal is missing, empty or not a whole database, or a write-ahead log is
    left without its journal. Starting would make a new, empty journal (SQLite would even copy
    the orphaned log into it) and deliver every item again as if it were new."""
    db = state_dir / db_name
    used = (state_dir / lock_name).exists()
    try:
        wal_size = Path(f"{db}-wal").stat().st_size
    except OSError:
        wal_size = 0
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        rescued = sorted(state_dir.glob(f"{db_name}.rescued-*"))
        if rescued:
            raise JournalLost(f"the journal {db} is missing; syncd saved the last state it knew as {rescued[-1]}: "
                              f"move that to {db} to go on from there, restore syncd.db from a backup, or move "
                              f"{state_dir} aside to start with a new journal (every item is then delivered again "
                              "under its own key)",
                              kind="missing") from None
        if not used and not wal_size:
            return  # syncd never ran here (or the directory was moved aside): a new journal
        what = "is missing, though syncd has used this state directory before"
    except OSError:
        return  # the opening reports it
    else:
        if size == 0 and not used and not wal_size:
            return  # made by a first start that failed before writing anything
        if size and _whole(db, size, exact=not wal_size):
            return
        what = ("is empty, though syncd has used this state directory before" if size == 0
                else "is damaged or not a syncd journal (cut short, or no SQLite header)")
    raise JournalLost(f"the journal {db} {what}. " + ADVICE.format(dir=state_dir), kind="missing")


def abandon(conn: sqlite3.Connection, db: Path, lost: JournalLost) -> JournalLost:
    """Close the connection to a lost journal, keeping what can soundly be kept, and return
    the error to report (what happened, what was kept, what to do).

    SQLite copies its write-ahead log into the database file when the last connection
    closes. Deleted or replaced, the journal's own file is still open here, whole: it is
    copied out first (``VACUUM INTO <db>.rescued-<time>``), a consistent copy that can be
    moved back. Truncated in place, its pages are gone: it is renamed to
    ``<db>.truncated-<time>`` first, so that the log copied into it leaves no plausible-looking
    but holed journal at the path for the next start.
    """
    kept = ""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    if lost.kind in ("deleted", "replaced"):
        rescued = db.with_name(f"{db.name}.rescued-{stamp}")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)  # the whole state directory may be gone
            conn.execute("VACUUM INTO ?", (str(rescued),))
            kept = (f" Its last state is saved as {rescued}: to go on from there, stop anything using "
                    f"{db.parent} and move it to {db}.")
        except (sqlite3.Error, OSError):
            pass
    elif lost.kind == "truncated":
        aside = db.with_name(f"{db.name}.truncated-{stamp}")
        try:
            os.rename(db, aside)
            kept = f" The truncated file is kept as {aside}."
        except OSError:
            pass
    try:
        conn.close()
    except sqlite3.Error:
        pass
    advice = ADVICE.format(dir=db.parent)
    if kept:
        advice = "Or " + advice[0].lower() + advice[1:]
    return JournalLost(f"{lost}.{kept} {advice}", kind=lost.kind)
