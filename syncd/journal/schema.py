"""The journal's file: its schema and migrations, opening it, and the state-directory lock.

The journal is one SQLite file, ``<state_dir>/syncd.db``, in WAL mode. Its schema is the
list ``MIGRATIONS``; a journal records how many it has applied in ``PRAGMA user_version``,
and opening it read-write applies the rest, each in one transaction with its version
number, so a journal made by any earlier syncd opens (tests/core/test_journal.py).

Two ways in:

- ``connect(state_dir)``: the read-write connection the daemon's coordinator owns (and
  ``syncd retry``); creates and migrates the journal.
- ``connect_readonly(state_dir)``: what ``syncd status`` reads through, while a daemon may
  be running. It only migrates a journal left behind by an older syncd.

Both are plain ``sqlite3`` connections: see docs/architecture.md ("The journal") for why
sqlite-utils is not used here, with the measurements.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from syncd.errors import JournalBusy, JournalLost, LocalError, SyncdError
from syncd.journal import guard

log = logging.getLogger("syncd.journal")

DB_NAME = "syncd.db"
LOCK_NAME = "syncd.lock"

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        folder TEXT NOT NULL,
        key TEXT NOT NULL,
        image TEXT NOT NULL,
        sidecar TEXT,
        mask TEXT,
        stat_sig TEXT,
        version TEXT,
        state TEXT NOT NULL DEFAULT 'settling',   -- settling | ready | invalid | gone | deleted
        error TEXT,
        first_seen REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (folder, key)
    );
    CREATE INDEX items_state ON items (state);
    CREATE TABLE deliveries (
        item_id INTEGER NOT NULL REFERENCES items (id),
        target TEXT NOT NULL,
        want_version TEXT,
        acked_version TEXT,
        inflight_version TEXT,
        failed_version TEXT,
        state TEXT NOT NULL,                      -- waiting | pending | in_flight | acked | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        outcome_unknown INTEGER NOT NULL DEFAULT 0,
        receipt TEXT,
        error TEXT,
        pending_since REAL,
        updated_at REAL NOT NULL,
        acked_at REAL,
        PRIMARY KEY (item_id, target)
    );
    CREATE INDEX deliveries_due ON deliveries (target, state, next_attempt_at);
    CREATE TABLE targets (
        name TEXT PRIMARY KEY,
        paused_reason TEXT,
        last_success REAL,
        last_error TEXT,
        last_error_at REAL
    );
    """,
    # 2: labels/mask problems of a delivered item; what a target cannot represent
    """
    ALTER TABLE items ADD COLUMN label_error TEXT;
    ALTER TABLE deliveries ADD COLUMN note TEXT;
    """,
    # 3: directory digests for cheap rescans (syncd.scan); indexes for counts by state
    """
    CREATE INDEX items_folder_state ON items (folder, state);
    CREATE INDEX deliveries_state ON deliveries (state);
    CREATE TABLE scanned_dirs (
        folder TEXT NOT NULL,
        dir TEXT NOT NULL,              -- absolute path with a trailing '/', as rtrim() below gives it
        digest TEXT NOT NULL,
        items INTEGER NOT NULL,
        PRIMARY KEY (folder, dir)
    );
    -- A digest vouches for a directory whose items are all settled at exactly the listed
    -- files: any change of an item's state, signature or image forgets its directory's digest.
    CREATE TRIGGER items_scanned_insert AFTER INSERT ON items BEGIN
        DELETE FROM scanned_dirs WHERE folder=NEW.folder AND dir=rtrim(NEW.image, replace(NEW.image, '/', ''));
    END;
    CREATE TRIGGER items_scanned_update AFTER UPDATE OF state, stat_sig, image ON items
    WHEN NEW.state IS NOT OLD.state OR NEW.stat_sig IS NOT OLD.stat_sig OR NEW.image IS NOT OLD.image BEGIN
        DELETE FROM scanned_dirs WHERE folder=OLD.folder AND dir=rtrim(OLD.image, replace(OLD.image, '/', ''));
        DELETE FROM scanned_dirs WHERE folder=NEW.folder AND dir=rtrim(NEW.image, replace(NEW.image, '/', ''));
    END;
    """,
    # 4: the few rows `syncd status` lists, found without reading every row
    """
    CREATE INDEX deliveries_noted ON deliveries (target) WHERE note IS NOT NULL;
    CREATE INDEX items_label_error ON items (folder) WHERE label_error IS NOT NULL;
    """,
    # 5: engine v2: remote jobs holding in-flight deliveries, items sent alone, a target's rate
    """
    ALTER TABLE deliveries ADD COLUMN job_id TEXT;           -- the remote job holding it while in_flight
    ALTER TABLE deliveries ADD COLUMN solo INTEGER NOT NULL DEFAULT 0;  -- 1: send it alone, not in a batch
    CREATE INDEX deliveries_job ON deliveries (target, job_id) WHERE job_id IS NOT NULL;
    CREATE TABLE jobs (
        target TEXT NOT NULL,
        job_id TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        next_poll_at REAL NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (target, job_id)
    );
    ALTER TABLE targets ADD COLUMN rate REAL;                -- requests/s the target is held to (NULL: unlimited)
    ALTER TABLE targets ADD COLUMN rate_reason TEXT;         -- why: "configured limit", "slowed by 429 at ..."
    """,
    # 6: subdirectories of a watched folder the daemon cannot read (skipped; `syncd status` names them);
    # items deleted after upload with a companion that came later and was not delivered (items.error)
    """
    CREATE TABLE unreadable_dirs (
        folder TEXT NOT NULL,
        path TEXT NOT NULL,
        reason TEXT NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY (folder, path)
    );
    CREATE INDEX items_late_companion ON items (folder) WHERE state='deleted' AND error IS NOT NULL;
    """,
    # 7: steering: a target paused by the operator (syncd pause), what retention removed
    """
    ALTER TABLE targets ADD COLUMN operator_paused_at REAL;  -- syncd pause: since when (NULL: not paused)
    CREATE TABLE retention (
        folder TEXT PRIMARY KEY,
        items INTEGER NOT NULL DEFAULT 0,     -- items whose local files retention removed (state 'deleted')
        bytes INTEGER NOT NULL DEFAULT 0,     -- what those files held
        last_at REAL,                         -- when it last removed one
        last_key TEXT
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)  # the user_version of an up-to-date journal


class StateLock:
    """An exclusive ``flock`` on the state directory: one daemon per journal.

    A lock found taken is tried again for up to ``BUSY_SECONDS``: commands that only look
    whether a daemon runs (``syncd pause``, a dry run) hold a shared lock for an instant."""

    BUSY_SECONDS = 1.0

    def __init__(self, state_dir: Path):
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None
        self._warned = False  # the lock file could not be made again (said once)

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if read_only(self.path.parent):
                raise LocalError(read_only_message(self.path.parent)) from None
            raise LocalError(f"cannot open the lock file {self.path}: {exc.strerror}; check permissions of the "
                             "state directory, or set [daemon] state_dir") from None
        deadline = time.monotonic() + self.BUSY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES) and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise LocalError(
                        f"another syncd (pid {owner}) is already using the state directory {self.path.parent}: "
                        "stop it first, or give this instance its own [daemon] state_dir"
                    ) from None
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def check(self) -> None:
        """The lock file is still the one locked (one stat and one fstat). Deleted or replaced
        (a cleanup script), a second syncd could take the state directory beside this one: it
        is made again and locked; ``LocalError`` when another syncd already took it."""
        if self._fd is None:
            return
        try:
            st, mine = os.stat(self.path), os.fstat(self._fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return
        except FileNotFoundError:
            pass
        except OSError:
            return  # cannot look: the journal's writes say what is wrong
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # the directory is gone or read-only: keep holding the old lock
            if not self._warned:
                log.warning("the lock file %s was deleted and cannot be made again: %s", self.path, exc.strerror)
                self._warned = True
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LocalError(f"the lock file {self.path} was deleted while syncd ran, and another syncd (pid {owner}) "
                             f"has taken the state directory {self.path.parent} since: this one stops") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.close(self._fd)
        self._fd, self._warned = fd, False
        log.warning("the lock file %s was deleted; made it again (only one syncd may use a state directory)",
                    self.path)


BUSY_TIMEOUT = 10.0  # seconds a command (syncd retry) waits for another process's write transaction


def connect(state_dir: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """The read-write connection to the journal in ``state_dir``, created and migrated.

    Autocommit mode (``isolation_level=None``): every transaction is an explicit
    ``BEGIN IMMEDIATE ... COMMIT`` (see ``Store``). ``busy_timeout``: how long one statement
    waits for another process's write lock before "database is locked" (the daemon waits in
    short slices: syncd.journal.writer). Raises ``LocalError`` with the fix when the state
    directory or its disk cannot be used, ``JournalLost`` when the file is not a journal.
    """
    path = state_dir / DB_NAME
    new = not path.exists()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _private(path)
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with conn:
                conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    except sqlite3.DatabaseError as exc:
        _forget_if_empty(path, new)
        raise local_error(exc, path) if failure(exc) else exc from None
    except OSError as exc:
        _forget_if_empty(path, new)
        raise LocalError(
            f"cannot open the journal {path}: {exc.strerror}; check state_dir and its permissions") from None
    return conn


def _private(path: Path) -> None:
    """Make the journal file (created empty if missing) and its WAL files readable by this
    user only, whatever the umask: SQLite gives the WAL files the main file's mode."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if name == path else 0), 0o600)
        except FileNotFoundError:
            continue
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _forget_if_empty(path: Path, new: bool) -> None:
    """A journal this opening made and could not write (disk full) is removed: left empty, the
    next start would take it for a journal that was truncated (syncd.journal.guard)."""
    try:
        if new and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


READ_TIMEOUT = 5.0  # seconds `syncd status` waits for a lock (readers wait only for a WAL recovery)


def _has_log(path: Path) -> bool:
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except OSError:
        return False


def connect_readonly(state_dir: Path, *, migrate: bool = True) -> sqlite3.Connection:
    """A read-only connection to the journal (``syncd status``); ``LocalError`` when there is
    no journal yet, ``JournalLost`` when it was lost or is damaged. A journal from an older
    syncd (its daemon not restarted since the upgrade) is migrated first, so the queries find
    the tables and indexes they expect. Never waits long: a lock held elsewhere is an error
    that names its holder.

    ``migrate=False`` (the HTTP listener, inside the daemon's process) never writes: a journal
    not at this schema yet is a ``LocalError`` instead, since the daemon is opening (and
    migrating) it at that moment and a second migration would race with it."""
    path = state_dir / DB_NAME
    guard.check_before_open(state_dir, DB_NAME, LOCK_NAME)
    if not path.exists():
        raise LocalError(f"no journal at {path}: has syncd run with this configuration yet?")
    # On a read-only filesystem SQLite cannot make the -shm file a WAL reader needs: with no
    # log to read either, the file alone is the whole journal and nothing can change it.
    immutable = "&immutable=1" if read_only(state_dir) and not _has_log(path) else ""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro{immutable}", uri=True, timeout=READ_TIMEOUT)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and migrate:
            conn.close()  # every journal syncd made has its tables: this file lost them
            raise JournalLost(f"the journal {path} is damaged or not a syncd journal (it has no tables). "
                              + guard.ADVICE.format(dir=state_dir))
        if version < SCHEMA_VERSION:
            conn.close()
            if not migrate:
                raise LocalError(f"the journal {path} is being opened by the daemon: try again in a moment")
            connect(state_dir, busy_timeout=READ_TIMEOUT).close()
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=READ_TIMEOUT)
    except sqlite3.DatabaseError as exc:
        raise local_error(exc, path) if failure(exc) else exc from None
    return conn


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Raise SQLite's errors about the journal file met inside (reads, mostly: the writes are
    translated by syncd.journal.writer) as what they mean (``local_error``)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if not failure(exc):
            raise
        raise local_error(exc, path) from None


def failure(exc: sqlite3.Error) -> bool:
    """The error is about the journal's file or its disk (not a bug in a statement: a
    constraint, a misuse), so ``local_error`` says what it means."""
    return type(exc) in (sqlite3.DatabaseError, sqlite3.OperationalError)


def read_only(directory: Path) -> bool:
    """The filesystem holding ``directory`` is mounted read-only (``ST_RDONLY``)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_message(directory: Path) -> str:
    return (f"the filesystem holding {directory} is read-only (after a disk error the kernel may remount it so: "
            "dmesg says why): make it writable again (mount -o remount,rw); a running syncd goes on by itself")


def local_error(exc: sqlite3.Error, path: Path) -> SyncdError:
    """What an SQLite error on the journal means for the user, as the error to raise:
    ``JournalBusy`` (another process's transaction, named), ``JournalLost`` (the file is
    damaged or not a journal) or ``LocalError`` (disk full, read-only, permissions)."""
    text = str(exc)
    if "database is locked" in text:
        holder = guard.write_lock_holder(path) or "another process"
        return JournalBusy(f"the journal {path} is locked by {holder}, which keeps a write transaction open: "
                           "end it (COMMIT, or quit that sqlite3 shell) and try again")
    if "malformed" in text or "not a database" in text:
        return JournalLost(f"the journal {path} is damaged or not a syncd journal ({text}). "
                           + guard.ADVICE.format(dir=path.parent))
    if read_only(path.parent):  # "readonly", "disk I/O error", "unable to open": what EROFS becomes
        return LocalError(read_only_message(path.parent))
    if "full" in text:
        return LocalError(f"the disk holding {path} is full: free some space (syncd resumes by itself)")
    if "readonly" in text or "unable to open" in text:
        return LocalError(f"cannot write the journal {path}: {text}; check permissions of the state directory")
    return LocalError(f"journal error on {path}: {text}")
