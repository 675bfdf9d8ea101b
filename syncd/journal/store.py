"""The exactly-once transactions on the journal: items, deliveries, jobs, targets.

The coordinator thread owns the one read-write connection (``schema.connect``). The state
changes of the exactly-once protocol:

- ``observe``/``settled``/``invalid``: what the item's files are and which version is due;
- ``intend``: ``(item, target, version)`` goes ``in_flight`` before any request is made;
- ``acked``/``failed``/``retry_later``/``send_alone``: the outcome of one attempt;
- ``submitted``/``job_polled``/``job_ended``: a remote job holding in-flight deliveries.

They are grouped: inside ``with store.transaction():`` (the coordinator wraps each pass in
one) every change joins ONE write transaction, begun at the first write and committed when
the block ends; outside it, each method is its own transaction. Either way a failure (disk
full: ``LocalError``) leaves the journal as it was before the transaction.

A row still ``in_flight`` when the store is opened had an unknown outcome (crash):
``recover()`` turns it back to ``pending`` with ``outcome_unknown = 1``, so create-only
targets look the item up before re-sending; a row held by a remote job that the journal
still lists stays in flight, and its job is polled rather than the item sent again.

Delivery states: see syncd.journal.deliveries. The protocol in one page:
docs/architecture.md.

``Store`` is also a ``JournalReader`` (syncd.journal.queries): the read queries, on the same
connection.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from syncd.journal.deliveries import Deliveries, DueDelivery, OutstandingJob
from syncd.journal.queries import JournalReader
from syncd.journal.schema import DB_NAME, connect
from syncd.journal.writer import Writer

__all__ = ["DueDelivery", "OutstandingJob", "Store"]


class Store(Deliveries, JournalReader):
    """The journal's transactions (see the module docstring) and, inherited, its read queries.

    Each method that changes state is one ``BEGIN IMMEDIATE ... COMMIT``, or part of the
    enclosing ``transaction()`` (syncd.journal.writer); an SQLite error (disk full,
    read-only) is raised as ``LocalError`` with nothing half-written.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path):
        Writer.__init__(self, conn, path)

    @classmethod
    def open(cls, state_dir: Path) -> "Store":
        """Open (create, migrate) the journal in ``state_dir`` read-write."""
        return cls(connect(state_dir), state_dir / DB_NAME)

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

    def set_unreadable_dirs(self, folder: str, dirs: dict[str, str], now: float) -> None:
        """The subdirectories of ``folder`` the daemon cannot read now (``path -> reason``);
        the others are forgotten, those already known keep the time they were first seen."""
        marks = ",".join("?" * len(dirs))
        statements: list[tuple[str, tuple]] = [
            (f"DELETE FROM unreadable_dirs WHERE folder=? AND path NOT IN ({marks})", (folder, *dirs))]
        statements += [("INSERT INTO unreadable_dirs (folder, path, reason, since) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (folder, path) DO UPDATE SET reason=excluded.reason", (folder, path, reason, now))
                       for path, reason in dirs.items()]
        self._tx(statements)

    def note_late_companion(self, item_id: int, note: str | None) -> None:
        """An item deleted after upload has a companion that came later and was not delivered
        (``note`` says which and what to do; None: no more)."""
        self._tx([("UPDATE items SET error=? WHERE id=? AND state='deleted'", (note, item_id))])

    # -- items ----------------------------------------------------------------------------
    def observe(self, folder: str, key: str, image: str, sidecar: str | None, mask: str | None, sig: str,
                now: float) -> int:
        """Record that the item's files changed (new signature): it must settle again. Returns its id."""
        rows = self._write_returning(
            "INSERT INTO items (folder, key, image, sidecar, mask, stat_sig, state, first_seen, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'settling', ?, ?) "
            "ON CONFLICT (folder, key) DO UPDATE SET image=excluded.image, sidecar=excluded.sidecar, "
            "mask=excluded.mask, stat_sig=excluded.stat_sig, state='settling', error=NULL, "
            "updated_at=excluded.updated_at RETURNING id",
            (folder, key, image, sidecar, mask, sig, now, now),
        )
        return rows[0][0]

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
                    "INSERT INTO deliveries (item_id, target, want_version, state, pending_since, updated_at, note) "
                    "VALUES (?, ?, ?, 'pending', ?, ?, ?) "
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
                    "updated_at=excluded.updated_at, note=excluded.note",
                    (item_id, target, version, now, now, (notes or {}).get(target)),
                )
            )
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
