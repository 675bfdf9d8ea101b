"""The exactly-once transactions on the journal: items, deliveries, targets.

The coordinator thread owns the one read-write connection (``schema.connect``). Every state
change of the exactly-once protocol is one transaction:

- ``observe``/``settled``/``invalid``: what the item's files are and which version is due;
- ``intend``: ``(item, target, version)`` goes ``in_flight`` before any request is made;
- ``acked``/``failed``/``retry_later``: the outcome of one attempt.

A row still ``in_flight`` when the store is opened had an unknown outcome (crash):
``recover()`` turns it back to ``pending`` with ``outcome_unknown = 1``, so create-only
targets look the item up before re-sending.

Delivery states: ``waiting`` (item not ready), ``pending`` (due at ``next_attempt_at``),
``in_flight``, ``acked`` (the wanted version is remote), ``failed`` (until the files change or
``syncd retry``). The protocol in one page: docs/architecture.md.

``Store`` is also a ``JournalReader`` (syncd.journal.queries): the read queries, on the same
connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.journal.queries import JournalReader
from syncd.journal.schema import DB_NAME, connect, local_error


@dataclass(frozen=True)
class DueDelivery:
    """A delivery due now: the unit the coordinator hands to an upload worker."""

    item_id: int
    target: str
    folder: str
    key: str
    version: str
    outcome_unknown: bool
    receipt: dict[str, Any] | None
    attempts: int


class Store(JournalReader):
    """The journal's transactions (see the module docstring) and, inherited, its read queries.

    Each method that changes state is one ``BEGIN IMMEDIATE ... COMMIT``; an SQLite error
    (disk full, read-only) is raised as ``LocalError`` with nothing half-written.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path):
        super().__init__(conn)
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> "Store":
        """Open (create, migrate) the journal in ``state_dir`` read-write."""
        return cls(connect(state_dir), state_dir / DB_NAME)

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
            raise local_error(exc, self.path) from None

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

    # -- rescans (syncd.scan) ----------------------------------------------------------------
    def save_dir_digests(self, folder: str, entries: list[tuple[str, str, str, int]]) -> None:
        """Store ``(dir, base, digest, items)`` digests of directories a scan found unchanged —
        each only if every item keyed under ``base`` is still settled (``syncd retry`` may
        have requeued one since the scan looked)."""
        statements = []
        for directory, base, digest, items in entries:
            where, args = self._children(base)
            statements.append((
                "INSERT OR REPLACE INTO scanned_dirs (folder, dir, digest, items) SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                f"(SELECT 1 FROM items WHERE folder=? AND {where} "
                "AND state NOT IN ('ready','invalid','gone','deleted'))",
                (folder, directory, digest, items, folder, *args)))
        if statements:
            self._tx(statements)

    def forget_dir_digests(self, folder: str, dirs: list[str]) -> None:
        if dirs:
            self._tx([("DELETE FROM scanned_dirs WHERE folder=? AND dir=?", (folder, d)) for d in dirs])

    # -- items ----------------------------------------------------------------------------
    def observe(self, folder: str, key: str, image: str, sidecar: str | None, mask: str | None, sig: str,
                now: float) -> int:
        """Record that the item's files changed (new signature): it must settle again."""
        self._tx(
            [
                (
                    "INSERT INTO items (folder, key, image, sidecar, mask, stat_sig, state, first_seen, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'settling', ?, ?) "
                    "ON CONFLICT (folder, key) DO UPDATE SET image=excluded.image, sidecar=excluded.sidecar, "
                    "mask=excluded.mask, stat_sig=excluded.stat_sig, state='settling', error=NULL, "
                    "updated_at=excluded.updated_at",
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
                    "  WHEN deliveries.state='failed' AND deliveries.failed_version=excluded.want_version "
                    "    THEN 'failed' "
                    "  ELSE 'pending' END, "
                    "attempts=CASE WHEN deliveries.state IN ('in_flight','pending') THEN deliveries.attempts "
                    "  ELSE 0 END, "
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
                    "UPDATE deliveries SET state=CASE "
                    "WHEN acked_version IS NOT NULL AND state!='in_flight' THEN 'acked' "
                    "WHEN state='in_flight' THEN 'in_flight' ELSE 'waiting' END, updated_at=? "
                    "WHERE item_id=? AND state!='acked'",
                    (now, item_id),
                ),
            ]
        )

    def resettle(self, item_id: int, now: float) -> None:
        """The files changed under a delivery: settle again before anything is sent."""
        self._tx([("UPDATE items SET state='settling', stat_sig=NULL, updated_at=? WHERE id=?", (now, item_id))])

    def record_stat_sig(self, item_id: int, sig: str) -> None:
        """Remember the stat signature the item's files were read at (an invalid item is
        then not read again until its files change)."""
        self._tx([("UPDATE items SET stat_sig=? WHERE id=?", (sig, item_id))])

    # -- deliveries -----------------------------------------------------------------------
    def due(self, target: str, now: float, limit: int, *, horizon: float = float("inf")) -> list[DueDelivery]:
        """Pending deliveries of ``target`` due at ``now``.

        ``horizon`` is the longest delay the daemon ever schedules: a row due further ahead
        was scheduled under a clock that has since been set back, and is due now.
        """
        rows = self.conn.execute(
            "SELECT d.item_id, d.target, i.folder, i.key, d.want_version, d.outcome_unknown, d.receipt, d.attempts "
            "FROM deliveries d JOIN items i ON i.id = d.item_id "
            "WHERE d.target=? AND d.state='pending' AND (d.next_attempt_at<=? OR d.next_attempt_at>?) "
            "AND i.state='ready' "
            "ORDER BY d.next_attempt_at, d.item_id LIMIT ?",
            (target, now, now + horizon, limit),
        ).fetchall()
        return [
            DueDelivery(r[0], r[1], r[2], r[3], r[4], bool(r[5]), json.loads(r[6]) if r[6] else None, r[7])
            for r in rows
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

    def retry_later(self, item_id: int, target: str, error: str | None, at: float, outcome_unknown: bool, now: float,
                    *, count: bool = True) -> None:
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
