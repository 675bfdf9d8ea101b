"""The coordinator's inbox: what worker and check threads report, and the wake-up event.

Threads ``put`` reports (a batch's outcomes, a job poll, a check); the coordinator ``drain``s
them once per pass. A put sets ``wake`` only when it is not already set, so a burst of
reports costs the coordinator one wake-up, not one per report (a ``deque`` append is
thread-safe and takes no lock). The coordinator clears ``wake`` before a pass, never after
it: a report put while a pass runs wakes the next wait at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class Inbox:
    def __init__(self, wake: threading.Event):
        self.wake = wake
        self._reports: deque = deque()

    def put(self, report: object) -> None:
        self._reports.append(report)
        if not self.wake.is_set():
            self.wake.set()

    def drain(self) -> list:
        """Every report put so far, oldest first."""
        out = []
        popleft = self._reports.popleft
        try:
            while True:
                out.append(popleft())
        except IndexError:
            return out

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a report to be put (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._reports:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.wake.clear()
            if self._reports:  # put between the test above and the clear
                return
            self.wake.wait(remaining)

    def qsize(self) -> int:
        return len(self._reports)

    def empty(self) -> bool:
        return not self._reports
