"""The two ways to drive the Daemon: the service loop (``syncd run``) and ``syncd once``.

Signal handlers only set flags. SIGTERM/SIGINT/SIGHUP (a closed terminal): stop taking new
work, let in-flight deliveries finish for up to ``shutdown_seconds`` (what is still in flight
then is recovered at the next start); ``run`` exits 0, ``once`` reports what it did and exits
130 (interrupted). READY=1 is sent to systemd only after the watches are
installed and the first scan is done; WATCHDOG=1 only from a loop pass that completed.

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

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    return received


def run_service(config: Config) -> int:
    """``syncd run``: watch and deliver until SIGTERM. Returns the exit code."""
    daemon = Daemon(config)
    _install_signals(daemon)
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
    folders = ", ".join(str(f.root) for f in daemon.folders)
    log.info("watching %s; delivering to %s", folders, ", ".join(daemon.targets))
    sdnotify.notify("READY=1\nSTATUS=first scan done")
    ping_every = sdnotify.watchdog_interval()
    next_ping = next_status = time.monotonic()  # monotonic: a clock set back must not stop the pings
    try:
        while not daemon.stop_event.is_set():
            daemon.wake.clear()  # before the pass: a report put during it wakes the sleep below
            now = time.time()
            daemon.tick(now)
            if provider is not None:
                _report(provider, daemon, now)
            if ping_every and time.monotonic() >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = time.monotonic() + ping_every
            if time.monotonic() >= next_status:
                sdnotify.notify(f"STATUS={daemon.pending_total()} queued, {len(daemon.in_flight)} in flight")
                next_status = time.monotonic() + STATUS_EVERY
            _sleep(daemon, now, next_status, *((next_ping,) if ping_every else ()),
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
    interrupted: bool = False  # a stop signal (Ctrl-C, SIGTERM, SIGHUP) ended it early

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if not (self.failed or self.pending or self.paused or self.unreadable or self.late) else 1


def run_once(config: Config, *, max_wait: float = 600.0, progress=None) -> OnceResult:
    """``syncd once``: scan, wait for files to settle, deliver what is due, wait, report.

    Transient failures are retried with their backoff until ``max_wait`` seconds have passed;
    a paused target (bad credentials, unknown dataset) ends the wait at once.
    """
    daemon = Daemon(config, watch=False)
    received = _install_signals(daemon)
    start = time.time()
    daemon.open(start)
    last_progress = 0.0
    try:
        while not daemon.stop_event.is_set():
            daemon.wake.clear()  # before the pass: a report put during it wakes the sleep below
            now = time.time()
            daemon.tick(now)
            # The count is only needed once nothing is settling or in flight (it is a query
            # per pass otherwise). A running check may still pause a target: wait for it.
            if not daemon.checking and not daemon.busy() and not _waiting(daemon):
                break
            if now - start > max_wait:
                log.warning("giving up waiting after %.0fs", max_wait)
                break
            if progress and now - last_progress >= 2:
                progress(daemon)
                last_progress = now
            _sleep(daemon, now, time.monotonic() + max(0.0, start + max_wait - now))
        result = _once_result(daemon)
        result.interrupted = bool(received)
        return result
    finally:
        daemon.close(wait_seconds=0)


def _waiting(daemon: Daemon) -> int:
    """Deliveries still to do on targets that are not paused."""
    assert daemon.store is not None
    active = [name for name in daemon.targets if name not in daemon.paused]
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
            reason = row["error"] or ("paused target" if row["target"] in daemon.paused else "not delivered yet")
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
    return result
