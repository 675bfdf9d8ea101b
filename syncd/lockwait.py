"""The coordinator waiting for the journal's write lock, which another process holds.

An operator's ``sqlite3`` shell left in a transaction (``BEGIN`` without ``COMMIT``), a
backup tool, a ``syncd retry`` of many rows: while another process holds the write lock,
no pass can record anything. The journal's writer waits in slices of its busy timeout and
calls ``JournalWait.waiting`` after each (syncd.journal.writer), which

- says so once, in the log and in what ``describe()`` returns (the systemd STATUS line),
  naming the process that holds the lock where it can be told, and again every few minutes;
- keeps the service alive (``keepalive``: the watchdog ping), but only while another process
  is seen to hold the lock. If none does, the wait is syncd's own doing (a bug: a
  transaction of its own left open) and the watchdog must see a stuck loop;
- ends the wait (``JournalBusy``) when the daemon is stopping or ``give_up_at`` passed
  (``syncd once``), so the pass is rolled back and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from syncd.errors import JournalBusy
from syncd.journal.guard import write_lock_holder

log = logging.getLogger("syncd.daemon")

REMIND_EVERY = 300.0  # seconds between "still waiting" lines


class JournalWait:
    """See the module docstring; one per daemon, the ``waiter`` of its journal writer."""

    def __init__(self, db: Path, stopping: Callable[[], bool]):
        self.db = db
        self.stopping = stopping
        self.keepalive: Callable[[], None] = lambda: None  # set by syncd.service: the watchdog ping
        self.give_up_at: float | None = None  # monotonic; None: wait as long as the lock is held
        self.holder: str | None = None  # who holds the lock, while waiting
        self.seconds = 0.0
        self._said_at: float | None = None

    def waiting(self, seconds: float) -> None:
        holder = write_lock_holder(self.db)
        self.holder, self.seconds = holder or "another connection", seconds
        message = self._message()
        if self.stopping() or (self.give_up_at is not None and time.monotonic() >= self.give_up_at):
            self.holder, self.seconds, self._said_at = None, 0.0, None
            raise JournalBusy(message)
        if self._said_at is None:
            log.error("%s; syncd waits for it, nothing is lost", message)
            self._said_at = seconds
        elif seconds - self._said_at >= REMIND_EVERY:
            log.warning("still waiting after %.0fs: %s", seconds, message)
            self._said_at = seconds
        if holder is not None:
            self.keepalive()

    def ended(self, seconds: float) -> None:
        if self._said_at is not None:
            log.info("the journal's write lock is free again after %.0fs: going on", seconds)
        self.holder, self.seconds, self._said_at = None, 0.0, None

    def describe(self) -> str | None:
        """One line while waiting (for the systemd STATUS line), else None."""
        if self.holder is None:
            return None
        return f"waiting {self.seconds:.0f}s for the journal: locked by {self.holder}"

    def _message(self) -> str:
        return (f"the journal {self.db} is locked by {self.holder}, which keeps a write transaction open: "
                "end it (COMMIT, or quit that sqlite3 shell)")
