"""Read queries on the journal, each named for the question it answers.

``JournalReader`` wraps one connection: the read-only one ``syncd status`` opens
(``JournalReader.open_readonly``), or the coordinator's own (``Store`` is a
``JournalReader``), for the daemon, rescans (``syncd.scan``), metrics and ``syncd once``.

Every query here is indexed (schema migrations 3 and 4) so that its cost follows what is
queued, failed or asked for, not the number of items the journal tracks: ``syncd status``
and the metrics run them on journals of 100,000 items (bench/status_speed.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from syncd.journal.schema import connect_readonly


class JournalReader:
    """The read queries (see the module docstring); never writes."""

    _data_version: int | None = None  # PRAGMA data_version at the last ``changed_elsewhere``

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def open_readonly(cls, state_dir: Path, *, migrate: bool = True) -> "JournalReader":
        """A reader on a read-only connection (see ``schema.connect_readonly``)."""
        return cls(connect_readonly(state_dir, migrate=migrate))

    def close(self) -> None:
        self.conn.close()

    def query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """Rows of an ad-hoc ``SELECT`` as dicts: for tests and debugging. syncd's own code
        asks the named queries below, so that all its SQL stays in this package."""
        cursor = self.conn.execute(sql, args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # -- one item (the coordinator) ---------------------------------------------------------
    def changed_elsewhere(self) -> bool:
        """Whether another connection (``syncd retry``) committed since the last call
        (``PRAGMA data_version``: no I/O when nothing changed)."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    def settling_rows(self) -> list[tuple[int, str, str]]:
        """``(id, folder, key)`` of every item settling."""
        return self.conn.execute("SELECT id, folder, key FROM items WHERE state='settling'").fetchall()

    def item_id(self, folder: str, key: str) -> int | None:
        row = self.conn.execute("SELECT id FROM items WHERE folder=? AND key=?", (folder, key)).fetchone()
        return row[0] if row else None

    def observed_item(self, folder: str, key: str) -> tuple[int, str | None, str] | None:
        """``(id, stat_sig, state)`` of the item as last observed, or None if never seen."""
        row = self.conn.execute("SELECT id, stat_sig, state FROM items WHERE folder=? AND key=?",
                                (folder, key)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def item_image(self, item_id: int) -> str | None:
        """The path of the item's image as last observed (None: no such item)."""
        row = self.conn.execute("SELECT image FROM items WHERE id=?", (item_id,)).fetchone()
        return row[0] if row else None

    def item_stat_sig(self, item_id: int) -> str | None:
        """The stat signature the item last settled at (None: not settled, or no such item)."""
        row = self.conn.execute("SELECT stat_sig FROM items WHERE id=?", (item_id,)).fetchone()
        return row[0] if row else None

    def delivery_state(self, item_id: int, target: str) -> str | None:
        """The state of the (item, target) delivery, None if there is none."""
        row = self.conn.execute("SELECT state FROM deliveries WHERE item_id=? AND target=?",
                                (item_id, target)).fetchone()
        return row[0] if row else None

    def fully_acked(self, item_id: int, targets: list[str]) -> bool:
        """True when every target acked exactly the item's current version."""
        row = self.conn.execute(
            "SELECT i.version, count(d.target) FROM items i JOIN deliveries d ON d.item_id=i.id "
            "WHERE i.id=? AND d.state='acked' AND d.acked_version=i.version "
            f"AND d.target IN ({','.join('?' * len(targets))})",
            (item_id, *targets),
        ).fetchone()
        return bool(row and row[0] and row[1] == len(targets))

    def unknown_outcomes(self) -> set[tuple[int, str]]:
        """``(item_id, target)`` of every delivery still to do whose last outcome is unknown."""
        return {(row[0], row[1]) for row in self.conn.execute(
            "SELECT item_id, target FROM deliveries WHERE outcome_unknown=1 AND state IN ('pending', 'in_flight')")}

    def next_due_at(self, target: str, now: float) -> float | None:
        """When the next delivery of ``target`` (of a ready item) is due after ``now``, or None."""
        row = self.conn.execute(
            "SELECT d.next_attempt_at FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE d.target=? AND d.state='pending' AND d.next_attempt_at>? AND i.state='ready' "
            "ORDER BY d.next_attempt_at LIMIT 1", (target, now)).fetchone()
        return row[0] if row else None

    # -- rescans (syncd.scan) ---------------------------------------------------------------
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

    def live_count(self, folder: str) -> int:
        """Items of ``folder`` that are not gone or deleted (an index count)."""
        return self.conn.execute("SELECT count(*) FROM items WHERE folder=? AND state NOT IN ('gone','deleted')",
                                 (folder,)).fetchone()[0]

    def live_items(self, folder: str) -> list[tuple[str, int]]:
        """``(key, id)`` of every item of ``folder`` that is not gone or deleted."""
        return self.conn.execute("SELECT key, id FROM items WHERE folder=? AND state NOT IN ('gone','deleted')",
                                 (folder,)).fetchall()

    # -- totals (progress lines, the systemd STATUS line, metrics) --------------------------
    def counts(self) -> dict[str, int]:
        """Totals for progress lines: deliveries by state, items settling."""
        out = {state: n for state, n in self.conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")}
        out["settling"] = self.settling_count()
        return out

    def settling_count(self) -> int:
        """Items waiting for their files to be complete."""
        return self.conn.execute("SELECT count(*) FROM items WHERE state='settling'").fetchone()[0]

    def unfinished_count(self) -> int:
        """Deliveries pending or in flight plus items settling.

        Counted from the state indexes, so it costs what is queued, not what was delivered:
        the systemd STATUS line asks every 5 s of an idle daemon tracking 100,000 items."""
        queued = self.conn.execute(
            "SELECT count(*) FROM deliveries WHERE state IN ('pending','in_flight')").fetchone()[0]
        return queued + self.settling_count()

    def remaining(self, targets: list[str], folder_targets: dict[str, int]) -> int:
        """Deliveries to ``targets`` still to do (pending or in flight), plus each settling
        item once per target of its folder (``folder -> how many targets``): what is left
        of a ``syncd once`` (its progress line). Counted from the state indexes."""
        if not targets:
            return 0
        queued = self.conn.execute(
            "SELECT count(*) FROM deliveries WHERE state IN ('pending','in_flight') "
            f"AND target IN ({','.join('?' * len(targets))})", targets).fetchone()[0]
        settling = self.conn.execute("SELECT folder, count(*) FROM items WHERE state='settling' GROUP BY folder")
        return queued + sum(n * folder_targets.get(folder, 1) for folder, n in settling)

    def waiting_count(self, targets: list[str]) -> int:
        """Deliveries to ``targets`` still to do (pending or in flight) of ready items."""
        if not targets:
            return 0
        return self.conn.execute(
            "SELECT count(*) FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE d.state IN ('pending','in_flight') AND i.state='ready' "
            f"AND d.target IN ({','.join('?' * len(targets))})",
            targets,
        ).fetchone()[0]

    def deliveries_by_target_and_state(self) -> dict[tuple[str, str], int]:
        """``(target, state) -> count`` of the deliveries of items that are not gone."""
        return {(target, state): n for target, state, n in self.conn.execute(
            "SELECT d.target, d.state, count(*) FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE i.state!='gone' GROUP BY d.target, d.state")}

    def oldest_pending_by_target(self) -> dict[str, float]:
        """``target -> pending_since`` of its oldest delivery of a ready item still to do."""
        return dict(self.conn.execute(
            "SELECT d.target, min(d.pending_since) FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE d.state IN ('pending','in_flight') AND i.state='ready' GROUP BY d.target").fetchall())

    def last_success_by_target(self) -> dict[str, float | None]:
        """``target -> time`` of its last acknowledged delivery (targets that had one or an error)."""
        return dict(self.conn.execute("SELECT name, last_success FROM targets").fetchall())

    # -- what `syncd once` reports ----------------------------------------------------------
    def deliveries_of_present_items(self) -> list[dict[str, Any]]:
        """Every delivery of an item not gone: ``key, target, state, error, item_state, item_error``."""
        return self.query(
            "SELECT i.key, d.target, d.state, d.error, i.state AS item_state, i.error AS item_error "
            "FROM deliveries d JOIN items i ON i.id=d.item_id WHERE i.state NOT IN ('gone')"
        )

    def delivered_without_labels(self) -> list[tuple[str, str]]:
        """``(key, why)`` of ready items delivered without their labels/mask."""
        return self.conn.execute(
            "SELECT key, label_error FROM items WHERE state='ready' AND label_error IS NOT NULL").fetchall()

    def settling_items(self) -> list[tuple[str, str | None]]:
        """``(key, note)`` of every item still settling (note: why it is taking long, if known)."""
        return self.conn.execute("SELECT key, error FROM items WHERE state='settling'").fetchall()

    def paused_targets(self) -> dict[str, str]:
        """``target -> reason`` of the targets paused in the journal: by the operator
        (``syncd pause``, "paused by operator") or because they cannot work."""
        return dict(self.conn.execute(
            "SELECT name, CASE WHEN operator_paused_at IS NULL THEN paused_reason "
            "WHEN paused_reason IS NULL THEN 'paused by operator' "
            "ELSE 'paused by operator; also: ' || paused_reason END "
            "FROM targets WHERE paused_reason IS NOT NULL OR operator_paused_at IS NOT NULL").fetchall())

    def operator_pauses(self) -> dict[str, float]:
        """``target -> since`` of the targets paused by the operator (``syncd pause``)."""
        return dict(self.conn.execute(
            "SELECT name, operator_paused_at FROM targets WHERE operator_paused_at IS NOT NULL").fetchall())

    # -- `syncd status`, per folder and target ----------------------------------------------
    def item_counts(self, folder: str) -> dict[str, int]:
        """``item state -> count`` of the items of ``folder``."""
        return dict(self.conn.execute("SELECT state, count(*) FROM items WHERE folder=? GROUP BY state",
                                      (folder,)).fetchall())

    def only_folder(self, folder: str) -> bool:
        """True when the journal holds items of ``folder`` only (two index probes)."""
        row = self.conn.execute(
            "SELECT EXISTS(SELECT 1 FROM items WHERE folder<?) OR EXISTS(SELECT 1 FROM items WHERE folder>?)",
            (folder, folder)).fetchone()
        return not row[0]

    def delivery_counts(self, folder: str, target: str, alone: bool) -> dict[str, int]:
        """Deliveries of ``target`` by state for the items of ``folder`` that are not gone.

        ``alone`` (``only_folder(folder)``): the counts come from the deliveries index alone
        minus the rows of gone items (few), instead of a join over every item.
        """
        if not alone:
            return dict(self.conn.execute(
                "SELECT d.state, count(*) FROM deliveries d JOIN items i ON i.id=d.item_id "
                "WHERE i.folder=? AND d.target=? AND i.state NOT IN ('gone') GROUP BY d.state",
                (folder, target)).fetchall())
        counts = dict(self.conn.execute("SELECT state, count(*) FROM deliveries WHERE target=? GROUP BY state",
                                        (target,)).fetchall())
        for state, gone in self.conn.execute(
                "SELECT d.state, count(*) FROM items i CROSS JOIN deliveries d ON d.item_id=i.id AND d.target=? "
                "WHERE i.folder=? AND i.state='gone' GROUP BY d.state", (target, folder)):
            counts[state] -= gone
        return counts

    def oldest_pending(self, folder: str, target: str) -> float | None:
        """``pending_since`` of the oldest delivery to ``target`` still to do of a ready item of ``folder``."""
        # Driven from the deliveries index (pending and failed rows are few); the unary +
        # keeps SQLite from scanning the folder's 100,000 items instead.
        return self.conn.execute(
            "SELECT min(d.pending_since) FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE d.target=? AND d.state IN ('pending','in_flight') AND +i.folder=? AND +i.state='ready'",
            (target, folder),
        ).fetchone()[0]

    def failed_deliveries(self, folder: str, target: str, limit: int) -> list[tuple[str, str]]:
        """``(key, reason)`` of the first ``limit`` failed deliveries to ``target`` of ``folder``, by key."""
        return [(key, error or item_error or "failed") for key, error, item_error in self.conn.execute(
            "SELECT i.key, d.error, i.error FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE d.target=? AND d.state='failed' AND +i.folder=? ORDER BY i.key LIMIT ?",
            (target, folder, limit))]

    def delivery_notes(self, folder: str, target: str, limit: int) -> list[tuple[str, str]]:
        """``(key, note)`` of the first ``limit`` deliveries to ``target`` with a note (what the
        platform cannot represent, parts not sent) of items of ``folder`` not gone, by key."""
        return self.conn.execute(
            "SELECT i.key, d.note FROM deliveries d INDEXED BY deliveries_noted JOIN items i ON i.id=d.item_id "
            "WHERE d.target=? AND d.note IS NOT NULL AND +i.folder=? AND i.state NOT IN ('gone') "
            "ORDER BY i.key LIMIT ?",
            (target, folder, limit)).fetchall()

    def unreadable_dirs(self, folder: str) -> list[tuple[str, str]]:
        """``(path, reason)`` of the subdirectories of ``folder`` the daemon could not read, by path."""
        return self.conn.execute("SELECT path, reason FROM unreadable_dirs WHERE folder=? ORDER BY path",
                                 (folder,)).fetchall()

    def late_companions(self, folder: str, limit: int = -1) -> list[tuple[str, str]]:
        """``(key, note)`` of the items of ``folder`` deleted after upload whose companion came
        later and was not delivered, by key."""
        return self.conn.execute(
            "SELECT key, error FROM items INDEXED BY items_late_companion "
            "WHERE folder=? AND state='deleted' AND error IS NOT NULL ORDER BY key LIMIT ?",
            (folder, limit)).fetchall()

    def late_note(self, item_id: int) -> str | None:
        """What ``note_late_companion`` last said about the item (None: nothing)."""
        row = self.conn.execute("SELECT error FROM items WHERE id=? AND state='deleted'", (item_id,)).fetchone()
        return row[0] if row else None

    def receipts(self, item_id: int) -> dict[str, dict[str, Any]]:
        """``target -> receipt`` of the item's acknowledged deliveries."""
        return {target: json.loads(receipt) for target, receipt in self.conn.execute(
            "SELECT target, receipt FROM deliveries WHERE item_id=? AND receipt IS NOT NULL", (item_id,))}

    def slow_settling(self, folder: str, limit: int) -> list[tuple[str, str]]:
        """``(key, note)`` of up to ``limit`` items of ``folder`` settling for longer than they should."""
        return self.conn.execute(
            "SELECT key, error FROM items WHERE folder=? AND state='settling' AND error IS NOT NULL LIMIT ?",
            (folder, limit)).fetchall()

    def label_failures(self, folder: str, limit: int) -> list[tuple[str, str]]:
        """``(key, why)`` of the first ``limit`` ready items of ``folder`` delivered without labels, by key."""
        return self.conn.execute(
            "SELECT key, label_error FROM items INDEXED BY items_label_error "
            "WHERE folder=? AND state='ready' AND label_error IS NOT NULL ORDER BY key LIMIT ?",
            (folder, limit)).fetchall()

    def target_rates(self) -> dict[str, tuple[float | None, str | None]]:
        """``target -> (requests per second or None, why)`` as the daemon last recorded them."""
        return {name: (rate, reason) for name, rate, reason in self.conn.execute(
            "SELECT name, rate, rate_reason FROM targets WHERE rate_reason IS NOT NULL")}

    def target_health(self, target: str) -> tuple[str | None, float | None, str | None, float | None]:
        """``(paused_reason, last_success, last_error, last_error_at)`` of ``target`` (Nones if never used)."""
        row = self.conn.execute(
            "SELECT paused_reason, last_success, last_error, last_error_at FROM targets WHERE name=?", (target,)
        ).fetchone()
        return row or (None, None, None, None)

    def deliveries_of_target(self, target: str) -> list[dict[str, Any]]:
        """Every delivery to ``target`` of a ready or invalid item, by key, with what a dry run
        reports (syncd.dryrun): the item's files, label error and state, the delivery's state,
        acked version, receipt, unknown outcome, note and error."""
        return self.query(
            "SELECT i.key, i.image, i.sidecar, i.mask, i.label_error, i.error AS item_error, i.state AS item_state, "
            "d.state, d.acked_version, d.receipt, d.outcome_unknown, d.note, d.error "
            "FROM deliveries d JOIN items i ON i.id=d.item_id WHERE d.target=? AND i.state IN ('ready','invalid') "
            "ORDER BY i.key", (target,))

    def retention_totals(self) -> dict[str, tuple[int, int, float | None, str | None]]:
        """``folder -> (items, bytes, last_at, last_key)`` that retention removed so far."""
        return {folder: (items, size, last_at, last_key) for folder, items, size, last_at, last_key in
                self.conn.execute("SELECT folder, items, bytes, last_at, last_key FROM retention")}

    def retention_candidates(self, folder: str, targets: list[str], limit: int, *,
                             after: tuple[float, int] | None = None) -> list[tuple[int, str, float]]:
        """``(id, key, first_seen)`` of up to ``limit`` items of ``folder``, oldest first (after
        ``after``, a ``(first_seen, id)``), that every one of ``targets`` acked at the item's
        current version: what retention may remove."""
        marks = ",".join("?" * len(targets))
        since, last_id = after if after is not None else (float("-inf"), -1)
        return self.conn.execute(
            "SELECT i.id, i.key, i.first_seen FROM items i WHERE i.folder=? AND i.state='ready' "
            "AND i.version IS NOT NULL AND (i.first_seen, i.id) > (?, ?) "
            f"AND (SELECT count(*) FROM deliveries d WHERE d.item_id=i.id AND d.target IN ({marks}) "
            "AND d.state='acked' AND d.acked_version=i.version)=? "
            "ORDER BY i.first_seen, i.id LIMIT ?",
            (folder, since, last_id, *targets, len(targets), limit)).fetchall()
