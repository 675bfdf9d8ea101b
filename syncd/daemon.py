"""The coordinator: ``open`` / ``tick(now)`` / ``close``, wiring the parts of the engine.

- ``syncd.folders``: the watched folders (present, missing, path -> folder, key <-> files);
- ``syncd.settle``: hints and scans -> observe -> settled | invalid (the content cache);
- ``syncd.dispatch``: batches per target, the workers, outcomes, jobs, after-upload;
- ``syncd.health``: target checks, pause and resume, how much a target may be sent now;
- ``syncd.inbox``: what the worker and check threads report, and the wake-up event.

One coordinator thread owns the SQLite journal. ``tick(now)`` is one pass (time is a
parameter, so tests and ``syncd once`` drive it without sleeping for fixed times): folders,
hints, rescans, settling, the workers' reports, re-checks, dispatch — all its journal writes
in ONE transaction, committed before any batch it planned is handed to a worker. When that
transaction fails (disk full) nothing of the pass is kept: the parts put their bookkeeping
back, the reports wait for the next pass, and a rescan finds again what was observed.
``next_deadline(now)`` says when a pass is due without being woken (syncd.service sleeps
until then or until the inbox wakes it).

Exactly-once per (item, target): the journal records the intent before a request and the
receipt after; a row is in flight at most once, and a newer version waits behind it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from pathlib import Path

from syncd import limits, metrics
from syncd.config import Config
from syncd.diskguard import DiskGuard
from syncd.dispatch import Dispatcher
from syncd.errors import JournalLost, LocalError
from syncd.folders import Folders
from syncd.health import Health
from syncd.inbox import Inbox
from syncd.items.content import ContentCache
from syncd.journal.schema import DB_NAME, StateLock, translated
from syncd.journal.store import Store
from syncd.labels.validate import read_options
from syncd.lockwait import JournalWait
from syncd.metrics import Metrics
from syncd.scan import Stopped
from syncd.settle import Settler
from syncd.targets import Target, target_class
from syncd.timetable import BandwidthPlan
from syncd.watcher import FolderWatcher

log = logging.getLogger("syncd.daemon")

LOCAL_RETRY_SECONDS = 5.0  # how often a pass is retried while the journal cannot be written
CACHE_BYTES = 16 << 20  # settled content kept for the workers (read once); small: RSS < 80 MB at 100k items
PRESENCE_EVERY = 0.5  # seconds between looks at the folders' presence when nothing else asks
LOCK_SLICE = 0.5  # seconds of waiting for another process's journal lock between looks (syncd.lockwait)
BANDWIDTH_EVERY = 60.0  # seconds between looks at the bandwidth timetables (besides their changes: DST, clock jumps)
OPERATOR_EVERY = 30.0  # seconds between reads of the operator's pauses when no signal said they changed


def build_targets(config: Config) -> dict[str, Target]:
    return {name: target_class(s.platform)(name, s) for name, s in config.target_settings.items()}


class Daemon:
    """See the module docstring. ``open`` -> ``tick``... -> ``close``; or syncd.service."""

    def __init__(self, config: Config, *, targets: dict[str, Target] | None = None, watch: bool = True,
                 seed: int | None = None):
        self.config = config
        self.cfg = config.daemon
        self.targets = targets if targets is not None else build_targets(config)
        self.watch = watch
        self.rng = random.Random(seed)
        self.folders = Folders(list(config.folders), self.cfg.ignore)
        self.read_options = read_options(self.cfg.max_image_pixels, self.cfg.image_check)
        self.store: Store | None = None
        self.lock = StateLock(self.cfg.state_dir)
        self.watcher = FolderWatcher([(f.root, f.settings.poll, f.settings.poll_seconds) for f in self.folders])
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.control = threading.Event()  # set (with wake) by SIGUSR1: `syncd pause`/`resume` changed the journal
        self.results = Inbox(self.wake)
        self.cache = ContentCache(CACHE_BYTES)
        self.health = Health(self.targets, recheck_seconds=self.cfg.target_recheck_seconds, put=self.results.put)
        self.settler = Settler(self.cfg, self.folders, self.targets, self.watcher, self.cache, self.read_options,
                               self.wake, self.rng)
        self.settler.on_gone = self.cache.drop
        self.settler.stopping = self.stop_event.is_set
        self.cache.on_room = self.wake.set
        self.dispatcher = Dispatcher(self.cfg, self.targets, self.folders, self.health, self.settler, self.cache,
                                     self.results, read_options=self.read_options, rng=self.rng,
                                     stopping=self.stop_event.is_set)
        self.settler.sending = self.dispatcher.sending
        self.local_error: str | None = None  # why the journal cannot be written (disk full), if so
        self.journal_wait = JournalWait(self.cfg.state_dir / DB_NAME, self.stop_event.is_set)
        self.journal_file = None  # the journal file as opened (syncd.journal.guard.JournalFile)
        self.journal_lost: JournalLost | None = None  # why the journal was abandoned: nothing more is written
        self.local_retry_at = 0.0
        self._presence_at = float("-inf")
        self._operator_at = float("-inf")
        self.metrics = Metrics(config, serving=watch and bool(config.http.listen))
        self.guard = DiskGuard(self.cfg.state_dir, self.cfg.min_free_space, self.folders)
        self.bandwidth = BandwidthPlan(self.cfg.bandwidth_limit, {
            name: getattr(t.settings, "bandwidth_limit", 0) for name, t in self.targets.items()})
        self._bandwidth_at = float("-inf")  # when the limits were last looked at
        self._bandwidth_next = float("inf")  # when the timetables change them next
        self._bandwidth_now: tuple | None = None  # the limits in force

    # -- what the parts hold (for the loops, status lines and tests) -----------------------------
    @property
    def settling(self):
        return self.settler.settling

    @property
    def in_flight(self) -> dict[tuple[int, str], str]:
        return self.dispatcher.in_flight

    @property
    def paused(self) -> dict[str, float]:
        return self.health.paused

    @property
    def held(self) -> set[str]:
        """Targets nothing is sent to now: paused, or paused by the operator."""
        return set(self.health.paused) | set(self.health.operator)

    @property
    def checking(self) -> set[str]:
        return self.health.checking

    @property
    def executors(self):
        return self.dispatcher.executors

    @property
    def unrecorded(self) -> list:
        return self.dispatcher.unrecorded

    @property
    def attempts(self) -> Counter:
        return self.dispatcher.attempts

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self, now: float) -> None:
        """Lock the state dir, open the journal, recover, start workers and watches, scan."""
        try:
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, read-only or not ours: exit 3, one line
            raise LocalError(f"cannot create the state directory {self.cfg.state_dir}: {exc.strerror}; create it "
                             "writable by the user syncd runs as, or set [daemon] state_dir") from None
        Store.check_state_dir(self.cfg.state_dir)  # before the lock file exists on a first start
        self.lock.acquire()
        self.store = Store.open(self.cfg.state_dir, busy_timeout=LOCK_SLICE, check=False)
        self.store.waiter = self.journal_wait
        self.journal_file = self.store.file()
        for part in (self.settler, self.dispatcher, self.health):
            part.store = self.store
        limits.configure({n: t.settings.rate_limit for n, t in self.targets.items()}, None)
        self._apply_bandwidth(now)
        with translated(self.store.path):
            recovered = self.store.recover(now, job_targets=[n for n, t in self.targets.items() if t.has_jobs])
        if recovered:
            log.info("recovering %d deliveries whose outcome is unknown after a restart", recovered)
        self._read_operator(now)
        self.dispatcher.start(now)
        for name in self.targets:
            self.health.start_check(name)
        self.folders.create_missing()
        if self.watch:
            self.watcher.start()
        log.info("scanning %s", ", ".join(str(folder.root) for folder in self.folders))
        with self.store.transaction():
            self.guard.step(self.store, now)
        if self.guard.low is None:  # else the first pass that has room scans
            try:
                self.scan(now)
            except Stopped:
                log.info("stopped during the first scan; the next start scans again")

    def close(self, *, wait_seconds: float | None = None) -> None:
        """Stop watching, let batches on the wire finish (up to ``shutdown_seconds``), release.
        Deliveries held by remote jobs stay in flight in the journal: the next start polls them."""
        self.watcher.stop()
        deadline = time.monotonic() + (self.cfg.shutdown_seconds if wait_seconds is None else wait_seconds)
        try:
            while (self.store is not None and self.journal_lost is None and self.dispatcher.tasks_out()
                   and time.monotonic() < deadline):
                self._collect(time.time(), block=0.1)
            if self.store is not None and self.dispatcher.unjournaled_deletions():
                self._collect(time.time())  # files deleted after upload: counted as such
        except LocalError as exc:
            log.error("cannot record the last outcomes: %s", exc)
        except JournalLost:
            pass  # said by whoever stops on it
        held = sum(len(job.items) for jobs in self.dispatcher.jobs.jobs.values() for job in jobs.values())
        if len(self.in_flight) > held:
            log.warning("%d deliveries still in flight at shutdown; they are re-checked at the next start",
                        len(self.in_flight) - held)
        if held:
            log.info("%d deliveries are held by remote jobs; the next start waits for those jobs", held)
        self.dispatcher.shutdown()
        self.settler.close()
        for target in self.targets.values():
            target.close()
        if self.store and self.journal_lost is None:
            self.store.close()
        self.lock.release()

    # -- one pass ---------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One pass: events, rescans, settling, reports, re-checks, dispatch (one transaction).

        When the journal cannot be written (disk full, LocalError) the pass stops there and
        the daemon pauses: passes are retried every LOCAL_RETRY_SECONDS, SQLite keeps the
        journal intact, reports not yet recorded are kept in memory, and each retry starts
        with a full rescan, so nothing observed meanwhile is missed.
        """
        if now >= self._bandwidth_next or not 0 <= now - self._bandwidth_at < BANDWIDTH_EVERY:
            self._apply_bandwidth(now)
        if self.local_error is not None and 0 < self.local_retry_at - now <= LOCAL_RETRY_SECONDS:
            return
        self._check_journal()  # JournalLost out of tick: the journal file is gone, this one stops
        self.lock.check()  # LocalError out of tick: another syncd took the state directory, this one stops
        try:
            self._in_transaction(now, self._pass)
        except Stopped:
            return  # the loop ends: nothing of the pass was kept, the next start scans again
        except LocalError as exc:
            if self.stop_event.is_set():
                return  # stopping: close() says what could not be recorded
            if str(exc) != self.local_error:
                log.error("%s; deliveries paused, nothing is lost: retrying every %.0fs", exc, LOCAL_RETRY_SECONDS)
            self.local_error = str(exc)
            self.local_retry_at = now + LOCAL_RETRY_SECONDS
            self.watcher.rescan_needed.set()  # events drained by the failed pass are found again
            return
        if self.local_error is not None:
            log.info("the journal can be written again: resuming")
            self.local_error = None
        interval = self.config.metrics.interval_seconds
        # A clock set back must not freeze the figures for the length of the jump.
        if self.metrics.enabled and (now >= self.metrics.next_refresh or self.metrics.next_refresh - now > interval):
            self.metrics.next_refresh = now + interval
            self.metrics.refresh(self.metrics_text(now))

    def _apply_bandwidth(self, now: float) -> None:
        """Put the bandwidth limits of ``now`` in force (timetables: syncd.timetable); say so
        when they change."""
        self._bandwidth_at = now
        self._bandwidth_next = self.bandwidth.next_change(now) or float("inf")
        overall, per_target = self.bandwidth.rates_at(now)
        if (overall, per_target) == self._bandwidth_now:
            return
        limits.set_bandwidth(overall, per_target)
        if self._bandwidth_now is not None or overall or any(per_target.values()):
            shown = [f"{self.bandwidth.overall.describe(now)} over all targets"]
            shown += [f"{table.describe(now)} to {name}" for name, table in self.bandwidth.targets.items()
                      if per_target[name] or (self._bandwidth_now and self._bandwidth_now[1].get(name))]
            log.info("bandwidth limit now %s", "; ".join(shown))
        self._bandwidth_now = (overall, per_target)

    def _in_transaction(self, now: float, work) -> None:
        """Run ``work(now)`` in one journal transaction; hand its batches over once committed,
        or put every part back as it was when the transaction fails."""
        assert self.store is not None
        saved = self.dispatcher.begin(), self.health.snapshot()
        try:
            with translated(self.store.path), self.store.transaction():
                work(now)
                self.health.record_rates()
        except (LocalError, JournalLost, Stopped) as exc:  # Stopped: SIGTERM during a scan
            self.dispatcher.rolled_back(saved[0])
            self.health.restore(saved[1])
            self.settler.forget()
            if isinstance(exc, JournalLost):
                self._abandon(exc)
            raise
        self.dispatcher.committed()

    def _check_journal(self) -> None:
        """Before a pass: the journal file is still the one opened (one stat), else stop."""
        if self.journal_file is not None:
            try:
                self.journal_file.check()
            except JournalLost as exc:
                self._abandon(exc)

    def _abandon(self, exc: JournalLost) -> None:
        """Write nothing more to a journal that was lost (``Store.abandon``); raise why."""
        assert self.store is not None
        if self.journal_lost is None:
            self.journal_lost = self.store.abandon(exc)
        raise self.journal_lost from None

    def _read_operator(self, now: float) -> None:
        """Read the operator's pauses (``syncd pause``/``resume``) from the journal."""
        assert self.store is not None
        self.control.clear()
        self._operator_at = now
        for name in self.health.operator_pauses(self.store.operator_pauses()):
            self.dispatcher.next_due.pop(name, None)  # resumed: due rows go at once

    def _pass(self, now: float) -> None:
        # The operator's pauses: read when a signal says they changed, else now and then (a
        # `syncd pause` that could not signal this process is still seen).
        if self.control.is_set() or not 0 <= now - self._operator_at < OPERATOR_EVERY:
            self._read_operator(now)
        self.guard.step(self.store, now)
        if self.guard.low is not None:
            # Too little room for the journal: no new work (events are found again by the
            # rescan that follows), only the outcomes of what is on the wire are recorded.
            if self.watcher.drain():
                self.watcher.rescan_needed.set()
            self.dispatcher.collect(now)
            return
        events = self.watcher.drain()
        # Whether the folders are there (mounted) is looked at before anything could read an
        # absent folder as "every item was deleted": events, a rescan; else twice a second.
        if events or self.settler.rescan_due(now) or not 0 <= now - self._presence_at < PRESENCE_EVERY:
            self._presence_at = now
            self.folders.check_presence(self.watcher, watching=self.watch)
        for path in dict.fromkeys(events):  # a burst names a path many times
            self.settler.hint(Path(path), now)
        if self.watch:
            self.watcher.supervise()
        if self.store.changed_elsewhere():  # `syncd retry`: what it requeued goes now, not at a rescan
            self.settler.follow_requeued(now)
            self.dispatcher.next_due.clear()
        if self.settler.rescan_due(now):
            self.settler.scan(now)
        self.settler.settle(now)
        self.dispatcher.collect(now)
        self.health.recheck(now)
        for name in self.settler.newly_due:
            self.dispatcher.next_due.pop(name, None)
        self.settler.newly_due.clear()
        self.dispatcher.dispatch(now)
        self.settler.after_dispatch(now)  # complete items the full content cache holds back

    def _collect(self, now: float, block: float = 0.0) -> None:
        """Record the reports on the inbox (waiting up to ``block`` seconds for one)."""
        if block:
            self.results.wait(block)
        self._in_transaction(now, self.dispatcher.collect)

    def scan(self, now: float) -> None:
        """Full rescan of every folder: the truth behind the event hints."""
        self._in_transaction(now, self.settler.scan)

    def next_deadline(self, now: float) -> float:
        """When the next pass is due if nothing wakes the coordinator before."""
        times = [self.settler.next_rescan]
        for deadline in (self.settler.next_deadline(), self.dispatcher.next_deadline(now),
                         self.health.next_deadline(now)):
            if deadline is not None:
                times.append(deadline)
        if self.metrics.enabled:
            times.append(self.metrics.next_refresh)
        if self.local_error is not None:
            times.append(self.local_retry_at)
        times.append(self._bandwidth_next)
        return min(times)

    def busy(self) -> bool:
        return bool(self.settling) or self.dispatcher.busy()

    def metrics_text(self, now: float) -> str:
        assert self.store is not None
        in_flight = Counter(target for _, target in self.in_flight)
        throttles = Counter({name: c.throttles for name in self.targets if (c := limits.controller(name))})
        return metrics.render(self.store, targets=list(self.targets), paused=self.held,
                              in_flight=in_flight, attempts=self.attempts, now=now, throttles=throttles,
                              disk_low=self.guard.low is not None, sent=limits.sent_bytes(),
                              filesystems=self.metrics.filesystems)

    def pending_total(self) -> int:
        """Deliveries pending or in flight plus items settling (the systemd STATUS line)."""
        assert self.store is not None
        return self.store.unfinished_count()


__all__ = ["Daemon", "LocalError", "build_targets"]
