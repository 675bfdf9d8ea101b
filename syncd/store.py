"""The SQLite journal (WAL, via sqlite-utils): items, deliveries, targets.

The coordinator thread owns the one read-write connection. Every state change of the
exactly-once protocol is one transaction:

- ``observe``/``settled``/``invalid``: what the item's files are and which version is due;
- ``intend``: ``(item, target, version)`` goes ``in_flight`` before any request is made;
- ``acked``/``failed``/``retry_later``: the outcome of one attempt.

A row still ``in_flight`` when the store is opened had an unknown outcome (crash):
``recover()`` turns it back to ``pending`` with ``outcome_unknown = 1``, so create-only
targets look the item up before re-sending.

Delivery states: ``waiting`` (item not ready), ``pending`` (due at ``next_attempt_at``),
``in_flight``, ``acked`` (the wanted version is remote), ``failed`` (until the files change or
``syncd retry``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
]


@dataclass(frozen=True)
class DueDelivery:
    item_id: int
    target: str
    folder: str
    key: str
    version: str
    outcome_unknown: bool
    receipt: dict[str, Any] | None
    attempts: int


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


def _sqlite_utils():
    """The sqlite_utils module, imported without pandas.

    sqlite-utils imports pandas whenever it is installed, for DataFrame helpers syncd never
    uses: that cost the daemon ~40 MB of memory and ~0.4 s of start-up. pandas is hidden
    only while sqlite_utils is imported; other code can still import it afterwards.
    """
    if "sqlite_utils" not in sys.modules:
        hide = "pandas" not in sys.modules
        if hide:
            sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` fail
        try:
            import sqlite_utils  # noqa: F401
        finally:
            if hide and sys.modules.get("pandas", 0) is None:
                del sys.modules["pandas"]
    return sys.modules["sqlite_utils"]


def connect_readonly(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection to the journal (``syncd status``), without sqlite_utils: a
    command that only reads should not pay for importing it."""
    path = state_dir / DB_NAME
    if not path.exists():
        raise LocalError(f"no journal at {path}: has syncd run with this configuration yet?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    if conn.execute("PRAGMA user_version").fetchone()[0] < len(MIGRATIONS):
        # A journal from an older syncd (its daemon not restarted yet): bring it up to date
        # first, so the queries find the tables and indexes they expect.
        conn.close()
        open_db(state_dir).conn.close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    return conn


def open_db(state_dir: Path, *, readonly: bool = False) -> "sqlite_utils.Database":
    """Open (and migrate, unless ``readonly``) the journal in ``state_dir``."""
    path = state_dir / DB_NAME
    if readonly:
        return _sqlite_utils().Database(connect_readonly(state_dir))
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db = _sqlite_utils().Database(conn)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with conn:
                conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    except sqlite3.OperationalError as exc:
        raise _local_error(exc, path) from None
    except OSError as exc:
        raise LocalError(f"cannot open the journal {path}: {exc.strerror}; check state_dir and its permissions") from None
    return db


def _local_error(exc: sqlite3.Error, path: Path) -> LocalError:
    text = str(exc)
    if "full" in text:
        return LocalError(f"the disk holding {path} is full: free some space (syncd resumes by itself)")
    if "readonly" in text or "unable to open" in text:
        return LocalError(f"cannot write the journal {path}: {text}; check permissions of the state directory")
    return LocalError(f"journal error on {path}: {text}")


class Store:
    """The journal's queries and transactions (see the module docstring)."""

    def __init__(self, db: "sqlite_utils.Database", path: Path):
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> "Store":
        return cls(open_db(state_dir), state_dir / DB_NAME)

    def close(self) -> None:
        self.conn.close()

    def _tx(self, statements: Iterable[tuple[str, tuple]]) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self.conn.execute(sql, args)
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back by itself (SQLITE_FULL, I/O errors): a
                # failing ROLLBACK must not hide the error that says what went wrong.
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.OperationalError as exc:
            raise _local_error(exc, self.path) from None

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        cursor = self.conn.execute(sql, args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # -- start-up -------------------------------------------------------------------------
    def recover(self, now: float) -> int:
        """In-flight rows of a previous run had an unknown outcome: make them due again."""
        count = self.conn.execute("SELECT count(*) FROM deliveries WHERE state='in_flight'").fetchone()[0]
        self._tx(
            [
                (
                    "UPDATE deliveries SET state='pending', outcome_unknown=1, next_attempt_at=0, "
                    "inflight_version=NULL, updated_at=? WHERE state='in_flight'",
                    (now,),
                )
            ]
        )
        return count

    # -- items ----------------------------------------------------------------------------
    # -- rescans (syncd.scan) ----------------------------------------------------------------
    def dir_digests(self, folder: str) -> dict[str, tuple[str, int]]:
        """``dir -> (digest, item count)`` of the directories of ``folder`` last seen unchanged."""
        rows = self.conn.execute("SELECT dir, digest, items FROM scanned_dirs WHERE folder=?", (folder,))
        return {directory: (digest, items) for directory, digest, items in rows}

    @staticmethod
    def _children(base: str) -> tuple[str, tuple]:
        """SQL condition (and its arguments) for item keys ``base + stem``, stem without '/'."""
        if not base:
            return "instr(key, '/')=0", ()
        # base ends with '/'; '0' is the character after '/': an index range scan.
        return "key>=? AND key<? AND instr(substr(key, ?), '/')=0", (base, base[:-1] + "0", len(base) + 1)

    def dir_signatures(self, folder: str, base: str) -> dict[str, tuple[int, str | None, str]]:
        """``key -> (id, stat_sig, state)`` of the items keyed ``base + stem`` (one directory)."""
        where, args = self._children(base)
        rows = self.conn.execute(f"SELECT key, id, stat_sig, state FROM items WHERE folder=? AND {where}",
                                 (folder, *args))
        return {key: (item_id, sig, state) for key, item_id, sig, state in rows}

    def save_dir_digests(self, folder: str, entries: list[tuple[str, str, str, int]]) -> None:
        """Store ``(dir, base, digest, items)`` digests of directories a scan found unchanged —
        each only if every item keyed under ``base`` is still settled (``syncd retry`` may
        have requeued one since the scan looked)."""
        statements = []
        for directory, base, digest, items in entries:
            where, args = self._children(base)
            statements.append((
                "INSERT OR REPLACE INTO scanned_dirs (folder, dir, digest, items) SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                f"(SELECT 1 FROM items WHERE folder=? AND {where} AND state NOT IN ('ready','invalid','gone','deleted'))",
                (folder, directory, digest, items, folder, *args)))
        if statements:
            self._tx(statements)

    def forget_dir_digests(self, folder: str, dirs: list[str]) -> None:
        if dirs:
            self._tx([("DELETE FROM scanned_dirs WHERE folder=? AND dir=?", (folder, d)) for d in dirs])

    def live_count(self, folder: str) -> int:
        """Items of ``folder`` that are not gone or deleted (an index count)."""
        return self.conn.execute("SELECT count(*) FROM items WHERE folder=? AND state NOT IN ('gone','deleted')",
                                 (folder,)).fetchone()[0]

    def live_items(self, folder: str) -> list[tuple[str, int]]:
        """``(key, id)`` of every item of ``folder`` that is not gone or deleted."""
        return self.conn.execute("SELECT key, id FROM items WHERE folder=? AND state NOT IN ('gone','deleted')",
                                 (folder,)).fetchall()

    def item_id(self, folder: str, key: str) -> int | None:
        row = self.conn.execute("SELECT id FROM items WHERE folder=? AND key=?", (folder, key)).fetchone()
        return row[0] if row else None

    def observe(self, folder: str, key: str, image: str, sidecar: str | None, mask: str | None, sig: str, now: float) -> int:
        """Record that the item's files changed (new signature): it must settle again."""
        self._tx(
            [
                (
                    "INSERT INTO items (folder, key, image, sidecar, mask, stat_sig, state, first_seen, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'settling', ?, ?) "
                    "ON CONFLICT (folder, key) DO UPDATE SET image=excluded.image, sidecar=excluded.sidecar, "
                    "mask=excluded.mask, stat_sig=excluded.stat_sig, state='settling', error=NULL, updated_at=excluded.updated_at",
                    (folder, key, image, sidecar, mask, sig, now, now),
                )
            ]
        )
        return self.item_id(folder, key)  # type: ignore[return-value]

    def settled(self, item_id: int, version: str, targets: list[str], now: float, *,
                label_error: str | None = None, notes: dict[str, str | None] | None = None,
                stat_sig: str | None = None) -> None:
        """The item is complete and valid at ``version``: every target of its folder wants it.

        ``label_error``: its labels or mask were left out (delivered without them), and why.
        ``notes``: per target, what that platform cannot represent of this item.
        ``stat_sig``: the files' stat signature it settled at (kept unless given).
        """
        statements: list[tuple[str, tuple]] = [
            ("UPDATE items SET version=?, state='ready', error=NULL, label_error=?, updated_at=?, "
             "stat_sig=COALESCE(?, stat_sig) WHERE id=?",
             (version, label_error, now, stat_sig, item_id))
        ]
        for target in targets:
            statements.append(
                (
                    "INSERT INTO deliveries (item_id, target, want_version, state, pending_since, updated_at) "
                    "VALUES (?, ?, ?, 'pending', ?, ?) "
                    "ON CONFLICT (item_id, target) DO UPDATE SET want_version=excluded.want_version, "
                    "error=CASE WHEN deliveries.state='in_flight' THEN deliveries.error ELSE NULL END, "
                    "state=CASE "
                    "  WHEN deliveries.state='in_flight' THEN 'in_flight' "
                    "  WHEN deliveries.acked_version=excluded.want_version THEN 'acked' "
                    "  WHEN deliveries.state='failed' AND deliveries.failed_version=excluded.want_version THEN 'failed' "
                    "  ELSE 'pending' END, "
                    "attempts=CASE WHEN deliveries.state IN ('in_flight','pending') THEN deliveries.attempts ELSE 0 END, "
                    "next_attempt_at=CASE WHEN deliveries.state='pending' THEN deliveries.next_attempt_at ELSE 0 END, "
                    "pending_since=COALESCE(CASE WHEN deliveries.state IN ('pending','in_flight') "
                    "  THEN deliveries.pending_since END, excluded.pending_since), "
                    "updated_at=excluded.updated_at",
                    (item_id, target, version, now, now),
                )
            )
        statements += [("UPDATE deliveries SET note=? WHERE item_id=? AND target=?", ((notes or {}).get(t), item_id, t))
                       for t in targets]
        self._tx(statements)

    def invalid(self, item_id: int, error: str, targets: list[str], now: float) -> None:
        """The item's files are bad: it is failed for every target until they change."""
        statements: list[tuple[str, tuple]] = [
            ("UPDATE items SET state='invalid', error=?, updated_at=? WHERE id=?", (error, now, item_id))
        ]
        for target in targets:
            statements.append(
                (
                    "INSERT INTO deliveries (item_id, target, state, error, updated_at) VALUES (?, ?, 'failed', ?, ?) "
                    "ON CONFLICT (item_id, target) DO UPDATE SET "
                    "state=CASE WHEN deliveries.state='in_flight' THEN 'in_flight' ELSE 'failed' END, "
                    "error=excluded.error, failed_version=NULL, updated_at=excluded.updated_at",
                    (item_id, target, error, now),
                )
            )
        self._tx(statements)

    def settling_error(self, item_id: int, error: str, now: float) -> None:
        self._tx([("UPDATE items SET error=?, updated_at=? WHERE id=?", (error, now, item_id))])

    def gone(self, item_id: int, now: float, *, state: str = "gone") -> None:
        """The item's image disappeared (or was deleted after upload): nothing more to send."""
        self._tx(
            [
                ("UPDATE items SET state=?, stat_sig=NULL, updated_at=? WHERE id=?", (state, now, item_id)),
                (
                    "UPDATE deliveries SET state=CASE WHEN acked_version IS NOT NULL AND state!='in_flight' THEN 'acked' "
                    "WHEN state='in_flight' THEN 'in_flight' ELSE 'waiting' END, updated_at=? "
                    "WHERE item_id=? AND state!='acked'",
                    (now, item_id),
                ),
            ]
        )

    def resettle(self, item_id: int, now: float) -> None:
        """The files changed under a delivery: settle again before anything is sent."""
        self._tx([("UPDATE items SET state='settling', stat_sig=NULL, updated_at=? WHERE id=?", (now, item_id))])

    # -- deliveries -----------------------------------------------------------------------
    def due(self, target: str, now: float, limit: int, *, horizon: float = float("inf")) -> list[DueDelivery]:
        """Pending deliveries of ``target`` due at ``now``.

        ``horizon`` is the longest delay the daemon ever schedules: a row due further ahead
        was scheduled under a clock that has since been set back, and is due now.
        """
        rows = self.conn.execute(
            "SELECT d.item_id, d.target, i.folder, i.key, d.want_version, d.outcome_unknown, d.receipt, d.attempts "
            "FROM deliveries d JOIN items i ON i.id = d.item_id "
            "WHERE d.target=? AND d.state='pending' AND (d.next_attempt_at<=? OR d.next_attempt_at>?) AND i.state='ready' "
            "ORDER BY d.next_attempt_at, d.item_id LIMIT ?",
            (target, now, now + horizon, limit),
        ).fetchall()
        return [
            DueDelivery(r[0], r[1], r[2], r[3], r[4], bool(r[5]), json.loads(r[6]) if r[6] else None, r[7]) for r in rows
        ]

    def intend(self, item_id: int, target: str, version: str, now: float) -> None:
        """Record the intent before any request: this (item, target, version) is in flight."""
        self._tx(
            [
                (
                    "UPDATE deliveries SET state='in_flight', inflight_version=?, attempts=attempts+1, updated_at=? "
                    "WHERE item_id=? AND target=?",
                    (version, now, item_id, target),
                )
            ]
        )

    def acked(self, item_id: int, target: str, receipt: dict[str, Any], now: float) -> None:
        self._tx(
            [
                (
                    "UPDATE deliveries SET acked_version=inflight_version, inflight_version=NULL, receipt=?, "
                    "state=CASE WHEN want_version=inflight_version THEN 'acked' ELSE 'pending' END, "
                    "pending_since=CASE WHEN want_version=inflight_version THEN NULL ELSE pending_since END, "
                    "attempts=0, next_attempt_at=0, outcome_unknown=0, error=NULL, acked_at=?, updated_at=? "
                    "WHERE item_id=? AND target=?",
                    (json.dumps(receipt), now, now, item_id, target),
                ),
                (
                    "INSERT INTO targets (name, last_success) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET last_success=excluded.last_success",
                    (target, now),
                ),
            ]
        )

    def requeue_incomplete(self, now: float) -> int:
        """``syncd retry --incomplete``: deliver again what was acked without some parts."""
        before = self.conn.total_changes
        self._tx([(
            "UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=0, pending_since=?, updated_at=? "
            "WHERE state='acked' AND note LIKE '%not sent:%'",
            (now, now),
        )])
        return self.conn.total_changes - before

    def add_note(self, item_id: int, target: str, text: str) -> None:
        """Add ``text`` to the delivery's note (shown by ``status``), once."""
        self._tx([(
            "UPDATE deliveries SET note=CASE WHEN note IS NULL THEN ? WHEN instr(note, ?) > 0 THEN note "
            "ELSE note || '; ' || ? END WHERE item_id=? AND target=?",
            (text, text, text, item_id, target),
        )])

    def failed(self, item_id: int, target: str, error: str, now: float) -> None:
        """A permanent failure of the in-flight version (a newer wanted version still goes)."""
        self._tx(
            [
                (
                    "UPDATE deliveries SET failed_version=inflight_version, "
                    "state=CASE WHEN want_version=inflight_version THEN 'failed' ELSE 'pending' END, "
                    "inflight_version=NULL, outcome_unknown=0, error=?, next_attempt_at=0, updated_at=? "
                    "WHERE item_id=? AND target=?",
                    (error, now, item_id, target),
                ),
                self._target_error(target, error, now),
            ]
        )

    def retry_later(self, item_id: int, target: str, error: str | None, at: float, outcome_unknown: bool, now: float, *, count: bool = True) -> None:
        """A transient failure (or a paused target): due again at ``at``."""
        statements = [
            (
                "UPDATE deliveries SET state='pending', inflight_version=NULL, next_attempt_at=?, "
                "outcome_unknown=MAX(outcome_unknown, ?), error=COALESCE(?, error), "
                "attempts=CASE WHEN ? THEN attempts ELSE MAX(attempts-1, 0) END, updated_at=? "
                "WHERE item_id=? AND target=?",
                (at, int(outcome_unknown), error, int(count), now, item_id, target),
            )
        ]
        if error:
            statements.append(self._target_error(target, error, now))
        self._tx(statements)

    @staticmethod
    def _target_error(target: str, error: str, now: float) -> tuple[str, tuple]:
        return (
            "INSERT INTO targets (name, last_error, last_error_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_error=excluded.last_error, last_error_at=excluded.last_error_at",
            (target, error, now),
        )

    def set_paused(self, target: str, reason: str | None, now: float) -> None:
        statements = [
            (
                "INSERT INTO targets (name, paused_reason) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET paused_reason=excluded.paused_reason",
                (target, reason),
            )
        ]
        if reason:
            statements.append(self._target_error(target, reason, now))
        self._tx(statements)

    def fully_acked(self, item_id: int, targets: list[str]) -> bool:
        """True when every target acked exactly the item's current version."""
        row = self.conn.execute(
            "SELECT i.version, count(d.target) FROM items i JOIN deliveries d ON d.item_id=i.id "
            f"WHERE i.id=? AND d.state='acked' AND d.acked_version=i.version AND d.target IN ({','.join('?' * len(targets))})",
            (item_id, *targets),
        ).fetchone()
        return bool(row and row[0] and row[1] == len(targets))

    def counts(self) -> dict[str, int]:
        """Totals for progress lines: deliveries by state, items settling."""
        out = {state: n for state, n in self.conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")}
        out["settling"] = self.conn.execute("SELECT count(*) FROM items WHERE state='settling'").fetchone()[0]
        return out

    # -- operator commands ----------------------------------------------------------------
    def requeue(self, keys: list[str] | None, now: float) -> int:
        """``syncd retry``: make failed deliveries (of ``keys``, or all) due now; re-validate invalid items."""
        where, args = "", ()
        if keys:
            where = f" AND item_id IN (SELECT id FROM items WHERE key IN ({','.join('?' * len(keys))}))"
            args = tuple(keys)
        before = self.conn.total_changes
        self._tx(
            [
                (
                    "UPDATE deliveries SET state='pending', failed_version=NULL, attempts=0, next_attempt_at=0, "
                    f"pending_since=?, updated_at=? WHERE state='failed'{where}",
                    (now, now, *args),
                ),
                (
                    "UPDATE items SET stat_sig=NULL, state='settling', updated_at=? WHERE state='invalid'"
                    + (f" AND key IN ({','.join('?' * len(keys))})" if keys else ""),
                    (now, *args),
                ),
            ]
        )
        return self.conn.total_changes - before
