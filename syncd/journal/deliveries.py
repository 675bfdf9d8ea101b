"""The journal's delivery transactions: due rows, intents, outcomes, remote jobs, targets.

``Deliveries`` is a mixin of ``syncd.journal.store.Store`` (which adds the items); every
method here is one transaction, or part of the enclosing ``Writer.transaction()``.

Delivery states: ``waiting`` (item not ready), ``pending`` (due at ``next_attempt_at``;
``solo`` = sent alone), ``in_flight`` (intent recorded; ``job_id`` = a remote job holds it),
``acked`` (the wanted version is remote), ``failed`` (until the files change or ``syncd
retry``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from syncd.journal.writer import Writer


@dataclass(frozen=True)
class DueDelivery:
    """A delivery due now (or held by a job): one item of a batch the coordinator hands to
    the target's workers. ``image``/``sidecar``/``mask`` are the paths the item settled with;
    ``solo``: it is sent alone (its batch was refused as a whole)."""

    item_id: int
    target: str
    folder: str
    key: str
    version: str
    outcome_unknown: bool
    receipt: dict[str, Any] | None
    attempts: int
    solo: bool = False
    image: str | None = None
    sidecar: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class OutstandingJob:
    """A remote job the journal lists, with the in-flight deliveries it holds (``recover``)."""

    target: str
    job_id: str
    submitted_at: float
    polls: int
    items: list[DueDelivery]


_DUE_COLUMNS = ("d.item_id, d.target, i.folder, i.key, COALESCE(d.inflight_version, d.want_version), "
                "d.outcome_unknown, d.receipt, d.attempts, d.solo, i.image, i.sidecar, i.mask")


def _due(row) -> DueDelivery:
    return DueDelivery(row[0], row[1], row[2], row[3], row[4], bool(row[5]), json.loads(row[6]) if row[6] else None,
                       row[7], bool(row[8]), row[9], row[10], row[11])


class Deliveries(Writer):
    """Delivery, job and target transactions (see the module docstring)."""

    # -- start-up -------------------------------------------------------------------------
    def recover(self, now: float, job_targets: Iterable[str] = ()) -> int:
        """In-flight rows of a previous run had an unknown outcome: make them due again.

        Rows held by a job of one of ``job_targets`` (targets with jobs) that the jobs table
        still lists stay in flight: that job is polled (``outstanding_jobs``), not re-sent.
        Returns how many rows were made due again.
        """
        targets = sorted(set(job_targets))
        marks = ",".join("?" * len(targets))
        held = (f"job_id IS NOT NULL AND target IN ({marks}) AND EXISTS (SELECT 1 FROM jobs j "
                "WHERE j.target=deliveries.target AND j.job_id=deliveries.job_id)") if targets else "0"
        where = f"state='in_flight' AND NOT ({held})"
        count = self.conn.execute(f"SELECT count(*) FROM deliveries WHERE {where}", targets).fetchone()[0]
        self._tx([
            ("UPDATE deliveries SET state='pending', outcome_unknown=1, next_attempt_at=0, inflight_version=NULL, "
             f"job_id=NULL, updated_at=? WHERE {where}", (now, *targets)),
            ("DELETE FROM jobs WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.target=jobs.target "
             "AND d.job_id=jobs.job_id AND d.state='in_flight')", ()),
        ])
        return count

    def outstanding_jobs(self) -> list[OutstandingJob]:
        """The jobs the journal lists, oldest first, each with the deliveries it holds."""
        jobs: dict[tuple[str, str], OutstandingJob] = {}
        for target, job_id, submitted_at, polls in self.conn.execute(
                "SELECT target, job_id, submitted_at, polls FROM jobs ORDER BY submitted_at"):
            jobs[(target, job_id)] = OutstandingJob(target, job_id, submitted_at, polls, [])
        for row in self.conn.execute(
                f"SELECT d.job_id, {_DUE_COLUMNS} FROM deliveries d JOIN items i ON i.id=d.item_id "
                "WHERE d.job_id IS NOT NULL AND d.state='in_flight' ORDER BY d.item_id"):
            job = jobs.get((row[2], row[0]))
            if job is not None:
                job.items.append(_due(row[1:]))
        return [job for job in jobs.values() if job.items]

    # -- deliveries -----------------------------------------------------------------------
    def due(self, target: str, now: float, limit: int, *, horizon: float = float("inf")) -> list[DueDelivery]:
        """Pending deliveries of ``target`` due at ``now``, the longest waiting first.

        ``horizon`` is the longest delay the daemon ever schedules: a row due further ahead
        was scheduled under a clock that has since been set back, and is due now.
        """
        rows = self.conn.execute(
            f"SELECT {_DUE_COLUMNS} FROM deliveries d JOIN items i ON i.id = d.item_id "
            "WHERE d.target=? AND d.state='pending' AND (d.next_attempt_at<=? OR d.next_attempt_at>?) "
            "AND i.state='ready' "
            "ORDER BY d.next_attempt_at, d.item_id LIMIT ?",
            (target, now, now + horizon, limit),
        ).fetchall()
        return [_due(r) for r in rows]

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

    def acked(self, item_id: int, target: str, receipt: dict[str, Any], now: float, *, succeeded: bool = True) -> None:
        """The in-flight version is remote (``receipt``); a newer wanted version goes next.
        ``succeeded=False``: the caller records the target's last success itself (once for
        a pass's acks, ``target_succeeded``)."""
        statements = [(
            "UPDATE deliveries SET acked_version=inflight_version, inflight_version=NULL, receipt=?, "
            "job_id=NULL, solo=0, "
            "state=CASE WHEN want_version=inflight_version THEN 'acked' ELSE 'pending' END, "
            "pending_since=CASE WHEN want_version=inflight_version THEN NULL ELSE pending_since END, "
            "attempts=0, next_attempt_at=0, outcome_unknown=0, error=NULL, acked_at=?, updated_at=? "
            "WHERE item_id=? AND target=?",
            (json.dumps(receipt), now, now, item_id, target),
        )]
        self._tx(statements)
        if succeeded:
            self.target_succeeded(target, now)

    def target_succeeded(self, target: str, now: float) -> None:
        """``target`` acknowledged a delivery at ``now`` (status: its last success)."""
        self._tx([("INSERT INTO targets (name, last_success) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET last_success=excluded.last_success", (target, now))])

    def failed(self, item_id: int, target: str, error: str, now: float) -> None:
        """A permanent failure of the in-flight version (a newer wanted version still goes)."""
        self._tx(
            [
                (
                    "UPDATE deliveries SET failed_version=inflight_version, job_id=NULL, solo=0, "
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
                "UPDATE deliveries SET state='pending', inflight_version=NULL, job_id=NULL, next_attempt_at=?, "
                "outcome_unknown=MAX(outcome_unknown, ?), error=COALESCE(?, error), "
                "attempts=CASE WHEN ? THEN attempts ELSE MAX(attempts-1, 0) END, updated_at=? "
                "WHERE item_id=? AND target=?",
                (at, int(outcome_unknown), error, int(count), now, item_id, target),
            )
        ]
        if error:
            statements.append(self._target_error(target, error, now))
        self._tx(statements)

    def send_alone(self, item_id: int, target: str, outcome_unknown: bool, now: float) -> None:
        """Its batch (or job) failed without saying which item: send it again by itself,
        now, without counting the attempt."""
        self._tx([(
            "UPDATE deliveries SET state='pending', inflight_version=NULL, job_id=NULL, solo=1, next_attempt_at=0, "
            "outcome_unknown=MAX(outcome_unknown, ?), attempts=MAX(attempts-1, 0), updated_at=? "
            "WHERE item_id=? AND target=?",
            (int(outcome_unknown), now, item_id, target),
        )])

    # -- remote jobs ------------------------------------------------------------------------
    def submitted(self, item_id: int, target: str, job_id: str, now: float) -> None:
        """The platform took the in-flight delivery into job ``job_id``: it stays in flight,
        held by the job, until the job ends (``job_ended`` and the item's own outcome)."""
        self._tx([
            ("UPDATE deliveries SET job_id=?, updated_at=? WHERE item_id=? AND target=?",
             (job_id, now, item_id, target)),
            ("INSERT INTO jobs (target, job_id, submitted_at, next_poll_at) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (target, job_id) DO NOTHING", (target, job_id, now, now)),
        ])

    def job_polled(self, target: str, job_id: str, next_poll_at: float, polls: int) -> None:
        self._tx([("UPDATE jobs SET next_poll_at=?, polls=? WHERE target=? AND job_id=?",
                   (next_poll_at, polls, target, job_id))])

    def job_ended(self, target: str, job_id: str) -> None:
        """The job is settled: each of its deliveries has its own outcome recorded."""
        self._tx([("DELETE FROM jobs WHERE target=? AND job_id=?", (target, job_id))])

    # -- operator commands ----------------------------------------------------------------
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

    # -- targets ------------------------------------------------------------------------
    def set_rate(self, target: str, rate: float | None, reason: str | None) -> None:
        """The request rate ``target`` is held to now, and why (for status and metrics)."""
        self._tx([("INSERT INTO targets (name, rate, rate_reason) VALUES (?, ?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET rate=excluded.rate, rate_reason=excluded.rate_reason",
                   (target, rate, reason))])

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
