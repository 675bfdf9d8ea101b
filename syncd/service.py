"""The two ways to drive the Daemon: the service loop (``syncd run``) and ``syncd once``.

Signal handlers only set flags. SIGTERM/SIGINT/SIGHUP (a closed terminal): stop taking new
work, let in-flight deliveries finish for up to ``shutdown_seconds`` (what is still in flight
then is recovered at the next start); ``run`` exits 0, ``once`` reports what it did and exits
130 (interrupted). READY=1 is sent to systemd only after the watches are installed and the
first scan is done; WATCHDOG=1 from a loop pass that completed, or while the journal's write
lock is held by another process (syncd.lockwait: the loop is alive, waiting, and killing it
would not free the lock). A stuck loop sends nothing, and systemd's watchdog stops it.

No polling: between passes both loops sleep until the coordinator is woken (a file event,
a worker's report, a check, a signal) or until its next deadline (``Daemon.next_deadline``:
settling, a due retry, a job poll, a rescan, a re-check), the next watchdog ping or status
line — at most ``MAX_SLEEP``, so folders and watches are looked at every second.

With ``[http] listen`` the HTTP listener (syncd.http) starts before the first scan (its
/healthz says "starting" until the first pass) and reads only its ``Provider``, which the
loop feeds after every pass (``_report``).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

from syncd import limits, sdnotify
from syncd.config import Config
from syncd.daemon import Daemon
from syncd.delivery import ACKED
from syncd.journal.schema import translated
from syncd.progress import Progress, snapshot

log = logging.getLogger("syncd")

MAX_SLEEP = 1.0  # seconds between passes at most (folder presence, watcher supervision)
STATUS_EVERY = 5.0  # seconds between systemd STATUS lines


def _sleep(daemon: Daemon, now: float, *also: float) -> None:
    """Wait for a wake-up or until the daemon's next deadline (or one of ``also``, monotonic
    times), at most MAX_SLEEP."""
    delay = min(MAX_SLEEP, daemon.next_deadline(now) - now, *(at - time.monotonic() for at in also))
    if delay > 0:
        daemon.wake.wait(delay)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _install_signals(daemon: Daemon) -> list[int]:
    """Make the stop signals set the daemon's stop flag; returns the list the signals
    received are appended to (``once`` tells an interrupted run by it)."""
    received: list[int] = []

    def stop(signum, _frame):
        received.append(signum)
        daemon.stop_event.set()
        daemon.wake.set()

    def control(signum, _frame):  # `syncd pause`/`resume` changed the journal (syncd.control)
        daemon.control.set()
        daemon.wake.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    signal.signal(signal.SIGUSR1, control)
    return received


class _Systemd:
    """What systemd hears from the loop: watchdog pings when due, the STATUS line every
    STATUS_EVERY seconds. Monotonic times: a clock set back must not stop the pings."""

    def __init__(self):
        self.ping_every = sdnotify.watchdog_interval()
        self.next_ping = self.next_status = time.monotonic()

    def ping(self) -> None:
        if self.ping_every and time.monotonic() >= self.next_ping:
            sdnotify.notify("WATCHDOG=1")
            self.next_ping = time.monotonic() + self.ping_every

    def status(self, line) -> None:
        """Send ``line()`` if a STATUS line is due (called only then: it may query the journal)."""
        if time.monotonic() >= self.next_status:
            sdnotify.notify(f"STATUS={line()}")
            self.next_status = time.monotonic() + STATUS_EVERY

    def deadlines(self) -> tuple[float, ...]:
        return (self.next_status, self.next_ping) if self.ping_every else (self.next_status,)


def _status_line(daemon: Daemon) -> str:
    if daemon.local_error is not None:
        return f"paused: {daemon.local_error}"
    return f"{daemon.pending_total()} queued, {len(daemon.in_flight)} in flight"


def run_service(config: Config) -> int:
    """``syncd run``: watch and deliver until SIGTERM. Returns the exit code."""
    daemon = Daemon(config)
    _install_signals(daemon)
    systemd = _Systemd()

    def waiting_for_the_journal() -> None:  # called by syncd.lockwait while another process holds the lock
        systemd.ping()
        systemd.status(lambda: daemon.journal_wait.describe() or "waiting for the journal")

    daemon.journal_wait.keepalive = waiting_for_the_journal
    provider = listener = None
    if config.http.listen:
        from syncd import http

        provider = http.Provider(config)
        listener = http.serve(config, provider)
        if listener is None:  # it could not listen (said why); deliveries go on without it
            provider = None
    try:
        daemon.open(time.time())
    except BaseException:
        if listener is not None:
            listener.stop()
        raise
    if not daemon.stop_event.is_set():  # else stopped during the first scan: never ready
        folders = ", ".join(str(f.root) for f in daemon.folders)
        log.info("watching %s; delivering to %s", folders, ", ".join(daemon.targets))
        sdnotify.notify("READY=1\nSTATUS=first scan done")
    try:
        while not daemon.stop_event.is_set():
            daemon.wake.clear()  # before the pass: a report put during it wakes the sleep below
            now = time.time()
            daemon.tick(now)
            if provider is not None:
                _report(provider, daemon, now)
            systemd.ping()
            systemd.status(lambda: _status_line(daemon))
            _sleep(daemon, now, *systemd.deadlines(),
                   *((provider.next_sample_at(),) if provider is not None else ()))
    finally:
        sdnotify.notify("STOPPING=1")
        log.info("stopping: waiting up to %.0fs for %d in-flight deliveries", config.daemon.shutdown_seconds,
                 len(daemon.in_flight))
        if listener is not None:
            listener.stop()
        daemon.close()
    log.info("stopped")
    return 0


def _report(provider, daemon: Daemon, now: float) -> None:
    """After a pass: tell the HTTP listener's ``Provider`` the pass happened (and whether the
    journal could be written), hand it the metrics text, and add a history sample when one
    is due (backlog, deliveries acknowledged and bytes sent since start)."""
    provider.passed(journal_error=daemon.local_error)
    provider.publish_metrics(daemon.metrics.text)
    if provider.sample_due() and daemon.local_error is None:
        delivered = sum(n for (_, kind), n in daemon.attempts.items() if kind == ACKED)
        provider.sample(now, backlog=daemon.pending_total(), delivered=delivered,
                        sent_bytes=sum(limits.sent_bytes().values()))


@dataclass
class OnceResult:
    delivered: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (key, target, reason)
    pending: list[tuple[str, str, str]] = field(default_factory=list)
    paused: dict[str, str] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (directory, reason): skipped
    late: list[tuple[str, str]] = field(default_factory=list)  # (key, note): a companion not delivered
    delivered_now: int = 0  # delivered by this run (the rest were delivered before)
    sent_bytes: int = 0  # image and mask bytes this run sent
    seconds: float = 0.0  # how long this run took
    disk_low: str | None = None  # the disk guard held the work (syncd.diskguard), and why
    interrupted: bool = False  # a stop signal (Ctrl-C, SIGTERM, SIGHUP) ended it early

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if not (self.failed or self.pending or self.paused or self.unreadable or self.late
                         or self.disk_low) else 1


def run_once(config: Config, *, max_wait: float = 600.0, progress: Progress | None = None) -> OnceResult:
    """``syncd once``: scan, wait for files to settle, deliver what is due, wait, report.

    Transient failures are retried with their backoff until ``max_wait`` seconds have passed;
    a paused target (bad credentials, unknown dataset, paused by the operator) ends the wait
    at once. ``progress``: shown every pass it is due, and once more at the end.
    """
    daemon = Daemon(config, watch=False)
    received = _install_signals(daemon)
    started = time.monotonic()
    start = time.time()
    daemon.journal_wait.give_up_at = time.monotonic() + max_wait
    daemon.open(start)
    try:
        with translated(daemon.store.path):  # the reads between passes and of the result
            while not daemon.stop_event.is_set():
                daemon.wake.clear()  # before the pass: a report put during it wakes the sleep below
                now = time.time()
                daemon.tick(now)
                # The count is only needed once nothing is settling or in flight (it is a query
                # per pass otherwise). A running check may still pause a target: wait for it.
                if not daemon.checking and not daemon.busy() and not _waiting(daemon):
                    break
                if daemon.guard.low is not None and not daemon.busy():
                    log.warning("not waiting: %s", daemon.guard.low)
                    break
                if now - start > max_wait:
                    log.warning("giving up waiting after %.0fs", max_wait)
                    break
                if progress is not None and progress.due():
                    progress.update(snapshot(daemon))
                also = (progress.next_at,) if progress is not None else ()
                _sleep(daemon, now, time.monotonic() + max(0.0, start + max_wait - now), *also)
            if progress is not None:
                if progress.line is not None:
                    progress.update(snapshot(daemon))  # the final figures (elsewhere the summary line says it)
                progress.finish()
            result = _once_result(daemon)
            result.seconds = time.monotonic() - started
            result.interrupted = bool(received)
            return result
    finally:
        daemon.close(wait_seconds=0)


def _waiting(daemon: Daemon) -> int:
    """Deliveries still to do on targets that are not paused."""
    assert daemon.store is not None
    held = daemon.held
    active = [name for name in daemon.targets if name not in held]
    if not active:
        return 0
    return daemon.store.waiting_count(active)


def _once_result(daemon: Daemon) -> OnceResult:
    assert daemon.store is not None
    result = OnceResult()
    for row in daemon.store.deliveries_of_present_items():
        if row["state"] == "acked":
            result.delivered += 1
        elif row["state"] == "failed":
            result.failed.append((row["key"], row["target"], row["error"] or row["item_error"] or "failed"))
        elif row["item_state"] != "deleted":
            reason = row["error"] or ("paused target" if row["target"] in daemon.held else "not delivered yet")
            result.pending.append((row["key"], row["target"], reason))
    for key, label_error in daemon.store.delivered_without_labels():
        result.failed.append((key, "(labels)", f"delivered without labels/mask: {label_error}"))
    for key, error in daemon.store.settling_items():
        result.pending.append((key, "-", error or "still being written"))
    for folder in daemon.folders:
        result.unreadable += sorted(folder.unreadable.items())
        result.late += daemon.store.late_companions(folder.name)
    paused = daemon.store.paused_targets()
    result.paused = {name: reason for name, reason in paused.items() if name in daemon.targets}
    result.disk_low = daemon.guard.low
    result.delivered_now = sum(n for (_, kind), n in daemon.attempts.items() if kind == ACKED)
    result.sent_bytes = sum(daemon.dispatcher.sent_bytes.values())
    return result
