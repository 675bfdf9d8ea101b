"""What the HTTP listener knows of a running daemon: the one seam between the two.

The coordinator thread writes, from its loop (syncd.service): ``passed`` after every pass
(when, and whether the journal could be written), ``sample`` when ``sample_due`` (the
history behind the page's sparklines) and ``publish_metrics`` (the Prometheus text it
renders every ``interval_seconds``). The listener's worker threads read: ``health``,
``status_json``, ``history`` and ``metrics_text``. Nothing here touches the coordinator's
journal connection: ``status_json`` and ``health`` open their own read-only connection, as
``syncd status`` does (but never migrate an older journal: the daemon does that as it opens
it), so the listener can never block or corrupt a journal write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable

from syncd import status
from syncd.config import Config
from syncd.errors import JournalLost, LocalError
from syncd.journal.queries import JournalReader

STALL_SECONDS = 60.0  # no completed pass for this long: unhealthy (the systemd unit's WatchdogSec too)
HISTORY_SECONDS = 3600.0  # how far back the history goes
STATUS_CACHE_SECONDS = 1.0  # one status read serves every request within this


@dataclass(frozen=True)
class Sample:
    """One point of the history; the counters count since the daemon started."""

    at: float  # wall-clock time
    backlog: int  # deliveries pending or in flight plus items settling
    delivered: int  # deliveries acknowledged
    bytes: int  # bytes sent (syncd.limits.sent_bytes, every target)


class Provider:
    """See the module docstring. ``monotonic`` is a parameter so tests can age a pass."""

    def __init__(self, config: Config, *, monotonic: Callable[[], float] = time.monotonic):
        self.config = config
        self.state_dir = config.daemon.state_dir
        self.step = config.http.sample_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last_pass: float | None = None  # monotonic
        self._journal_error: str | None = None
        self._metrics = ""
        self._samples: deque[Sample] = deque(maxlen=int(HISTORY_SECONDS / self.step) + 1)
        self._next_sample = 0.0
        self._status_lock = threading.Lock()
        self._status: tuple[float, bytes] | None = None

    # -- written by the coordinator ---------------------------------------------------------
    def passed(self, *, journal_error: str | None) -> None:
        """A pass of the loop completed; ``journal_error``: why the journal could not be
        written in it (the daemon then pauses and retries), None when it could."""
        with self._lock:
            self._last_pass = self._monotonic()
            self._journal_error = journal_error

    def sample_due(self) -> bool:
        return self._monotonic() >= self._next_sample

    def next_sample_at(self) -> float:
        """When the next sample is due (monotonic), for a loop that sleeps until its deadlines."""
        return self._next_sample

    def sample(self, now: float, *, backlog: int, delivered: int, sent_bytes: int) -> None:
        """Add a point to the history (the oldest beyond HISTORY_SECONDS goes)."""
        with self._lock:
            self._samples.append(Sample(now, backlog, delivered, sent_bytes))
            self._next_sample = self._monotonic() + self.step

    def publish_metrics(self, text: str) -> None:
        self._metrics = text  # one reference assignment: readers see the old or the new text

    # -- read by the listener ---------------------------------------------------------------
    def metrics_text(self) -> str:
        return self._metrics

    def history(self) -> dict[str, Any]:
        with self._lock:
            samples = [asdict(s) for s in self._samples]
        return {"step_seconds": self.step, "span_seconds": HISTORY_SECONDS, "samples": samples}

    def status_json(self) -> bytes:
        """What ``syncd status --json`` prints, read at most every STATUS_CACHE_SECONDS.
        ``LocalError`` when there is no journal (yet) or it cannot be read."""
        with self._status_lock:
            now = self._monotonic()
            if self._status is None or now - self._status[0] >= STATUS_CACHE_SECONDS:
                try:
                    data = status.collect(self.config, migrate=False)
                except sqlite3.Error as exc:
                    raise LocalError(f"cannot read the journal in {self.state_dir}: {exc}") from None
                self._status = (now, (status.as_json(data) + "\n").encode())
            return self._status[1]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``. Healthy: a pass completed within STALL_SECONDS, its journal
        writes succeeded, and the state directory's filesystem is writable and not full.
        Paused targets are listed with their reasons but do not make it unhealthy."""
        with self._lock:
            last_pass, journal_error = self._last_pass, self._journal_error
        problems: list[str] = []
        age = None if last_pass is None else self._monotonic() - last_pass
        if age is None:
            problems.append("starting: the first scan is not finished")
        elif age > STALL_SECONDS:
            problems.append(f"the loop has not completed a pass for {age:.0f}s")
        if journal_error:
            problems.append(f"the journal cannot be written: {journal_error}")
        free = None
        try:
            fs = os.statvfs(self.state_dir)
            free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
            if fs.f_flag & os.ST_RDONLY:
                problems.append(f"the state directory {self.state_dir} is on a read-only filesystem")
            elif free == 0:
                problems.append(f"the filesystem of the state directory {self.state_dir} is full")
        except OSError as exc:
            problems.append(f"cannot look at the state directory {self.state_dir}: {exc.strerror}")
        paused: list[dict[str, str]] = []
        try:
            reader = JournalReader.open_readonly(self.state_dir, migrate=False)
            try:
                paused = [{"target": name, "reason": reason} for name, reason in sorted(reader.paused_targets().items())
                          if name in self.config.target_settings]
            finally:
                reader.close()
        except (LocalError, JournalLost) as exc:
            if last_pass is not None:  # before the first pass there may be no journal yet
                problems.append(str(exc))
        except sqlite3.Error as exc:
            problems.append(f"cannot read the journal in {self.state_dir}: {exc}")
        details = {"healthy": not problems, "problems": problems,
                   "last_pass_seconds_ago": None if age is None else round(age, 1),
                   "state_free_bytes": free, "paused_targets": paused}
        return not problems, details
