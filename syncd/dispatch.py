"""Dispatch: due deliveries -> batches per target -> the target's workers -> outcomes journaled.

Per target, each pass (inside the coordinator's pass transaction):

- **Batches.** Due rows (pending, item ready, ``next_attempt_at`` reached) are grouped into
  batches of at most ``max_batch`` (rows marked ``solo`` alone) and spread over the free
  request slots (``syncd.health``: twice ``workers``, none while the target is paused or
  held after a throttled answer). Whatever is due goes now: a lone item never waits for a
  batch to fill; batches fill by themselves when the target is the bottleneck.
- **Intent first.** Each item's intent is journaled in the pass transaction; the batches are
  handed to the target's ``ThreadPoolExecutor`` only after that transaction committed
  (``committed``). A failed commit (disk full) puts this module's bookkeeping back as it
  was before the pass (``rolled_back``) and keeps the reports it took for the next pass.
- **Outcomes per item.** A worker reports a batch's outcomes at once (``SendReport``); each
  is recorded for its own row (syncd.delivery lists the kinds): a refused item fails alone,
  ``alone`` re-sends an item by itself, a throttled one stays due and holds the target.
- **Jobs.** An item a job holds stays in flight (``syncd.jobs``); one poll task per target
  reads the due jobs; a finished job is settled per item by a finish task in a worker.
- **After upload.** With ``after_upload = "delete"``, an item every target acked at its
  current version is deleted once the ack is committed (syncd.after_upload).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from syncd import delivery
from syncd.after_upload import AfterUpload
from syncd.config import DaemonSettings
from syncd.delivery import FinishReport, Outcome, PollReport, SendReport
from syncd.dispatch_jobs import JobsSide
from syncd.folders import Folders
from syncd.health import CheckReport, Health
from syncd.inbox import Inbox
from syncd.items.content import ContentCache
from syncd.jobs import JobBook
from syncd.journal.store import DueDelivery, Store
from syncd.settle import Settler
from syncd.targets import Target
from syncd.workers import Workers

log = logging.getLogger("syncd.dispatch")

DUE_RECHECK = 5.0  # seconds: the journal is asked again for due rows at least this often (syncd retry)


class Dispatcher(JobsSide):
    """See the module docstring. ``in_flight``: ``(item_id, target) -> key`` of every delivery
    handed to a worker or held by a job."""

    def __init__(self, cfg: DaemonSettings, targets: dict[str, Target], folders: Folders, health: Health,
                 settler: Settler, cache: ContentCache, inbox: Inbox, *, read_options: dict, rng, stopping):
        self.cfg = cfg
        self.targets = targets
        self.folders = folders
        self.health = health
        self.settler = settler
        self.cache = cache
        self.inbox = inbox
        self.read_options = read_options
        self.rng = rng
        self.stopping: Callable[[], bool] = stopping
        self.store: Store | None = None  # set by the daemon once the journal is open
        self.executors: dict[str, Workers] = {}
        self.jobs = JobBook(targets)
        self.in_flight: dict[tuple[int, str], str] = {}
        self.tasks: Counter = Counter()  # target -> send and finish tasks out
        self.attempts: Counter = Counter()  # (target, outcome kind) -> count, for metrics
        self.sent_bytes: Counter = Counter()  # target -> image and mask bytes sent (acked or taken by a job)
        self._job_sent: dict[tuple[int, str], tuple[int, float]] = {}  # held by a job: (bytes, when submitted)
        self.unrecorded: list = []  # reports taken by a pass that failed: recorded by the next one
        self.next_due: dict[str, float] = {}  # target -> when to ask the journal for due rows again
        # The longest delay a retry is ever scheduled for (see Store.due): clock jumps.
        self.horizon = max(cfg.retry_max_seconds, delivery.MAX_RETRY_AFTER) + 60.0
        self._taken: list = []
        self._staged: list = []  # handed to the executors once the pass committed
        self.after_upload = AfterUpload(folders, cache, inbox.wake, settler.deleting)
        self._succeeded: set[str] = set()  # targets that acked something in this pass
        settler.on_delivered = lambda folder, item_id, key: self.after_upload.delivered(item_id, folder.name, key)
        # Outcomes already unknown when the journal was opened (Upload.outcome_unknown_at_start):
        # an earlier process may have sent them into a remote job nobody follows.
        self.unknown_at_start: set[tuple[int, str]] = set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Start the workers; take over the jobs the journal lists (polled, not re-sent)."""
        assert self.store is not None
        self.after_upload.store = self.store
        for name, target in self.targets.items():
            self.executors[name] = Workers(target.settings.workers, f"upload-{name}")
        self.unknown_at_start = self.store.unknown_outcomes()
        for job in self.store.outstanding_jobs():
            if job.target not in self.targets:
                continue
            for due in job.items:
                folder = self.folders.named(due.folder)
                files = folder.files(due.key, due.image, due.sidecar, due.mask) if folder else None
                self.jobs.add(job.target, job.job_id, (due, None, files), now=now, submitted_at=job.submitted_at,
                              polls=job.polls)
                self.in_flight[(due.item_id, job.target)] = due.key
            log.info("waiting for job %s of %s (%d items) left by the previous run", job.job_id, job.target,
                     len(job.items))

    def busy(self) -> bool:
        """Work out or unrecorded (items held by jobs of a paused target wait for its resumption)."""
        return (bool(self.jobs.polling or self.unrecorded or self.after_upload.deleted) or any(self.tasks.values())
                or self.sending())

    def sending(self) -> bool:
        """Deliveries of a target that is not paused are on their way (sent or held by a job)."""
        paused = self.health.paused
        return any(target not in paused for _, target in self.in_flight)

    def unjournaled_deletions(self) -> bool:
        """Files deleted after upload that the journal does not say so yet."""
        return bool(self.after_upload.deleted)

    def tasks_out(self) -> bool:
        """Work handed to the workers and not reported yet (jobs are safe in the journal)."""
        return any(self.tasks.values()) or bool(self.jobs.polling)

    def shutdown(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    # -- a pass ---------------------------------------------------------------------------------
    def begin(self):
        """A pass starts: what ``rolled_back`` puts back if it fails."""
        self._taken = []
        return (dict(self.in_flight), Counter(self.tasks), Counter(self.attempts), dict(self.next_due),
                self.jobs.snapshot(), list(self.after_upload.deleted), Counter(self.sent_bytes), dict(self._job_sent))

    def rolled_back(self, saved) -> None:
        """The pass's transaction failed: its intents and outcomes are not journaled."""
        (self.in_flight, self.tasks, self.attempts, self.next_due, jobs, self.after_upload.deleted, self.sent_bytes,
         self._job_sent) = saved
        self.jobs.restore(jobs)
        self.unrecorded = self._taken + self.unrecorded
        self._taken, self._staged, self.after_upload.acked = [], [], []

    def committed(self) -> None:
        """The pass's transaction committed: hand its batches over, delete what was acked."""
        staged, self._staged = self._staged, []
        for entry in staged:
            if isinstance(entry, tuple):
                name, items = entry
                self.executors[name].submit(delivery.send_task, self.inbox.put, self.targets[name], items,
                                            self.cache, self.read_options, self._files_for,
                                            self.health.held_by_operator)
            else:
                entry()
        self.after_upload.committed()

    # -- recording reports --------------------------------------------------------------------
    def collect(self, now: float) -> None:
        """Record every report the workers and checks put on the inbox."""
        assert self.store is not None
        self.after_upload.record(now)
        reports = self.unrecorded + self.inbox.drain()
        self.unrecorded = []
        self._taken = reports
        self._succeeded: set[str] = set()
        for report in reports:
            if isinstance(report, SendReport):
                self.tasks[report.target] -= 1
                if any(o.kind == delivery.TRANSIENT and not o.throttled for o in report.outcomes):
                    self.health.gates[report.target].faulted()  # one request, whatever it carried
                for outcome in report.outcomes:
                    self._record(outcome, now)
            elif isinstance(report, PollReport):
                self._polled(report, now)
            elif isinstance(report, FinishReport):
                self._finished(report, now)
            elif isinstance(report, CheckReport):
                self.health.checked(report, now)
                self.next_due.pop(report.target, None)
        for name in self._succeeded:
            self.store.target_succeeded(name, now)
            self.health.succeeded(name)

    def _record(self, outcome: Outcome, now: float) -> None:
        assert self.store is not None
        due, kind = outcome.due, outcome.kind
        name = due.target
        self.attempts[(name, kind)] += 1
        self.next_due.pop(name, None)  # a slot is free, or the row is due again
        gate = self.health.gates[name]
        from_job = False
        if kind != delivery.SUBMITTED:
            self.in_flight.pop((due.item_id, name), None)
            from_job = self._from_job(outcome)
        if kind in (delivery.ACKED, delivery.SUBMITTED):
            gate.served(now)
            if not from_job:  # a job's bytes were counted when it took them
                self.sent_bytes[name] += outcome.bytes
        if kind in (delivery.ACKED, delivery.PERMANENT, delivery.INVALID):
            self.unknown_at_start.discard((due.item_id, name))
        extra = outcome.log_extra()
        if kind == delivery.ACKED:
            assert outcome.receipt is not None
            self.store.acked(due.item_id, name, outcome.receipt.to_json(), now, succeeded=False)
            self._succeeded.add(name)
            not_sent = outcome.receipt.extra.get("not_sent")
            if not_sent:
                self.store.add_note(due.item_id, name, "not sent: " + "; ".join(map(str, not_sent)))
            how = "found already delivered on" if outcome.adopted else "delivered to"
            log.info("%s %s %s as %s", due.key, how, name, outcome.receipt.remote_id, extra=extra)
            self.after_upload.delivered(due.item_id, due.folder, due.key)
        elif kind == delivery.SUBMITTED:
            assert outcome.job_id is not None
            self.store.submitted(due.item_id, name, outcome.job_id, now)
            self.jobs.add(name, outcome.job_id, (due, outcome.upload, None), now=now)
            self._job_sent[(due.item_id, name)] = (outcome.bytes, time.monotonic())
            log.debug("%s is in job %s of %s", due.key, outcome.job_id, name, extra=extra)
        elif kind == delivery.TRANSIENT and outcome.throttled:
            # The target as a whole is overloaded: it is held (health), the item stays due.
            gate.throttled(now, outcome.retry_after)
            log.info("%s throttled %s: %s", name, due.key, outcome.message, extra=extra)
            self.store.retry_later(due.item_id, name, outcome.message, now, outcome.outcome_unknown, now, count=False)
        elif kind == delivery.TRANSIENT:
            delay = delivery.backoff_delay(gate.retry_attempts(due.attempts + 1), outcome.retry_after,
                                           base=self.cfg.retry_base_seconds, cap=self.cfg.retry_max_seconds,
                                           rng=self.rng)
            log.warning("retrying %s on %s in %.1fs: %s", due.key, name, delay, outcome.message, extra=extra)
            self.store.retry_later(due.item_id, name, outcome.message, now + delay, outcome.outcome_unknown, now)
        elif kind == delivery.ALONE:
            log.info("sending %s to %s alone: %s", due.key, name, outcome.message, extra=extra)
            self.store.send_alone(due.item_id, name, outcome.outcome_unknown, now)
        elif kind in (delivery.PERMANENT, delivery.INVALID):
            log.error("failed %s on %s: %s", due.key, name, outcome.message, extra=extra)
            self.store.failed(due.item_id, name, outcome.message, now)
        elif kind == delivery.HELD:
            log.debug("%s not sent to %s: %s", due.key, name, outcome.message, extra=extra)
            self.store.retry_later(due.item_id, name, None, now, False, now, count=False)
        elif kind == delivery.STALE:
            log.debug("%s changed before it was sent to %s: settling again", due.key, name, extra=extra)
            self.store.retry_later(due.item_id, name, None, 0, False, now, count=False)
            self.store.resettle(due.item_id, now)
            folder = self.folders.named(due.folder)
            files = folder.probe(due.key) if folder is not None else None
            if files is not None:
                self.settler.observe(folder, files, now, None)
        elif kind == delivery.FATAL:
            log.debug("%s not delivered to %s: %s", due.key, name, outcome.message, extra=extra)
            self.store.retry_later(due.item_id, name, outcome.message, now, True, now, count=False)
            if name not in self.health.paused:
                self.health.pause(name, outcome.message, now)

    def _from_job(self, outcome: Outcome) -> bool:
        """True when a job of this run held the item: its log line gives the job's bytes and
        time from submission."""
        sent = self._job_sent.pop((outcome.due.item_id, outcome.due.target), None)
        if sent is None:
            return False
        if outcome.duration_ms is None:
            outcome.bytes = sent[0]
            outcome.duration_ms = round((time.monotonic() - sent[1]) * 1000, 1)
        return True

    # -- handing out work -----------------------------------------------------------------------
    def dispatch(self, now: float) -> None:
        """Journal the intents of this pass's batches (handed over by ``committed``)."""
        assert self.store is not None
        if self.stopping():
            return
        for name, target in self.targets.items():
            if name in self.health.paused:
                continue
            if self.jobs.count(name):
                self._jobs_step(name, now)  # jobs already sent are read and finished even while paused by operator
            if name in self.health.operator:
                continue
            free = self.health.slots(name, now) - self.tasks[name]
            if target.has_jobs:  # each batch may become a job: stay under the cap
                free = min(free, self.jobs.room(name) - self.tasks[name])
            if free <= 0:
                continue
            if 0 < self.next_due.get(name, 0.0) - now <= DUE_RECHECK:
                continue  # nothing is due before then (a report or a settled item makes it sooner)
            limit = free * target.max_batch
            rows = self.store.due(name, now, limit, horizon=self.horizon)
            handed = self._hand_out(name, target, rows, free, now)
            if handed >= free:
                self.next_due[name] = now
            else:
                later = self.store.next_due_at(name, now)
                self.next_due[name] = now + DUE_RECHECK if later is None else min(later, now + DUE_RECHECK)

    def _hand_out(self, name: str, target: Target, rows: list[DueDelivery], free: int, now: float) -> int:
        """Group ``rows`` into at most ``free`` batches, journal their intents, stage them."""
        assert self.store is not None
        solo = [[row] for row in rows if row.solo]
        rest = [row for row in rows if not row.solo]
        size = target.max_batch  # full batches first: fewer requests (rate limits), the rest in parallel
        batches = (solo + [rest[i:i + size] for i in range(0, len(rest), size)])[:free]
        handed = 0
        for batch in batches:
            items = []
            for due in batch:
                folder = self.folders.named(due.folder)
                if folder is None or folder.missing:
                    continue
                if not due.image:
                    self.store.gone(due.item_id, now)
                    continue
                self.store.intend(due.item_id, name, due.version, now)
                self.in_flight[(due.item_id, name)] = due.key
                if self.unknown_at_start and (due.item_id, name) in self.unknown_at_start:
                    due = replace(due, unknown_at_start=True)
                items.append((due, None))  # its files: the worker takes them from the cache or the row
            if items:
                handed += 1
                self.tasks[name] += 1
                self._staged.append((name, items))
        return handed

    def next_deadline(self, now: float) -> float | None:
        """The earliest time dispatch has something to do without being woken (None: nothing)."""
        times = []
        for name, target in self.targets.items():
            if self.health.holding(name) or self.health.slots(name, now) - self.tasks[name] <= 0:
                continue
            if not target.has_jobs or self.jobs.room(name) > self.tasks[name]:
                times.append(self.next_due.get(name, now))
        jobs = self.jobs.next_deadline(self.health.paused)
        if jobs is not None:
            times.append(jobs)
        return min(times) if times else None

    # -- in the workers -------------------------------------------------------------------------
    def _submit(self, name: str, task, *args) -> None:
        self.executors[name].submit(task, *args)

    def _files_for(self, due: DueDelivery):
        """The item's files at the paths the journal has (in a worker: no journal access)."""
        folder = self.folders.named(due.folder)
        return folder.files(due.key, due.image, due.sidecar, due.mask) if folder is not None else None
