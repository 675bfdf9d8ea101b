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

import errno
import fcntl
import os
import sqlite3
from pathlib import Path

from syncd.errors import LocalError

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
]

SCHEMA_VERSION = len(MIGRATIONS)  # the user_version of an up-to-date journal


class StateLock:
    """An exclusive ``flock`` on the state directory: one daemon per journal."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
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


def connect(state_dir: Path) -> sqlite3.Connection:
    """The read-write connection to the journal in ``state_dir``, created and migrated.

    Autocommit mode (``isolation_level=None``): every transaction is an explicit
    ``BEGIN IMMEDIATE ... COMMIT`` (see ``Store``). Raises ``LocalError`` with the fix when
    the state directory or its disk cannot be used.
    """
    path = state_dir / DB_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _private(path)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with conn:
                conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    except sqlite3.OperationalError as exc:
        raise local_error(exc, path) from None
    except sqlite3.DatabaseError as exc:  # "file is not a database": overwritten, or not ours
        raise damaged(exc, path) from None
    except OSError as exc:
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


def damaged(exc: sqlite3.DatabaseError, path: Path) -> LocalError:
    """The ``LocalError`` for a journal file SQLite cannot read as a database."""
    return LocalError(f"the journal {path} is damaged or not a syncd journal ({exc}): stop syncd, move it away "
                      "(and its -wal and -shm files) and start again; everything is then delivered again "
                      "(the platform pages say what that costs)")


def connect_readonly(state_dir: Path, *, migrate: bool = True) -> sqlite3.Connection:
    """A read-only connection to the journal (``syncd status``); ``LocalError`` when there is
    no journal yet. A journal from an older syncd (its daemon not restarted since the
    upgrade) is migrated first, so the queries find the tables and indexes they expect.

    ``migrate=False`` (the HTTP listener, inside the daemon's process) never writes: a journal
    not at this schema yet is a ``LocalError`` instead, since the daemon is opening (and
    migrating) it at that moment and a second migration would race with it."""
    path = state_dir / DB_NAME
    if not path.exists():
        raise LocalError(f"no journal at {path}: has syncd run with this configuration yet?")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn.close()
            if not migrate:
                raise LocalError(f"the journal {path} is being opened by the daemon: try again in a moment")
            connect(state_dir).close()
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError as exc:
        raise local_error(exc, path) from None
    except sqlite3.DatabaseError as exc:
        raise damaged(exc, path) from None
    return conn


def local_error(exc: sqlite3.Error, path: Path) -> LocalError:
    """The ``LocalError`` (what happened, what to do) for an SQLite error on the journal."""
    text = str(exc)
    if "full" in text:
        return LocalError(f"the disk holding {path} is full: free some space (syncd resumes by itself)")
    if "readonly" in text or "unable to open" in text:
        return LocalError(f"cannot write the journal {path}: {text}; check permissions of the state directory")
    return LocalError(f"journal error on {path}: {text}")
