"""The knobs that make an emulator cost what the real service costs, and fail as it fails.

``Faults`` decides, per request, which fault (if any) to inject:

- ``"500"``, ``"502"``, ``"503"``: answer that status before touching state;
- ``"429"``: answer 429 with ``Retry-After`` (``faults.retry_after`` seconds);
- ``"reset"``: drop the connection (TCP RST) before touching state;
- ``"slow"``: wait ``faults.slow_seconds`` and then answer normally;
- ``"lost_reply"``: run the handler (state is committed) and then drop the connection
  without answering: the case that makes naive uploaders duplicate data.

Use ``faults.next(kind, ...)`` to queue faults for the next matching requests, or
``faults.set_rate(rate, kinds)`` to inject them at random (seeded) on a fraction of
requests. ``faults.outage(True)`` refuses every request (network gone).

``RateLimit`` is a platform's limit on a whole account or project: at most ``per_second``
requests served in any sliding one-second window, whoever sends them (a fleet of devices
shares it); the rest are refused with 429 + ``Retry-After``. It counts requests served
(let through; an injected fault may still answer them) and refused.

How the emulator applies them is in ``Emulator._dispatch`` (tests/emulators/base.py).
Platform-specific costs live with the platform (the Nucleus job latency: ``job_seconds``
in tests/emulators/nucleus_state.py).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable

FAULT_KINDS = ("500", "502", "503", "429", "reset", "slow", "lost_reply")


class Faults:
    """Decides, per request, which fault (if any) to inject. Thread-safe and seeded."""

    def __init__(self, seed: int = 1234):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._queued: list[tuple[str, re.Pattern | None, str | None]] = []
        self.rate = 0.0
        self.kinds: tuple[str, ...] = FAULT_KINDS
        self.path_filter: re.Pattern | None = None
        self.retry_after = 1
        self.slow_seconds = 0.5
        self.down = False
        self.injected: list[tuple[str, str, str]] = []

    def next(self, kind: str, *, path: str | None = None, method: str | None = None, times: int = 1) -> None:
        """Queue ``kind`` for the next ``times`` requests whose path matches regex ``path``."""
        assert kind in FAULT_KINDS, kind
        with self._lock:
            for _ in range(times):
                self._queued.append((kind, re.compile(path) if path else None, method))

    def set_rate(self, rate: float, kinds: tuple[str, ...] = FAULT_KINDS, *, path: str | None = None) -> None:
        """Inject one of ``kinds`` at random on a fraction ``rate`` of matching requests."""
        with self._lock:
            self.rate = rate
            self.kinds = kinds
            self.path_filter = re.compile(path) if path else None

    def outage(self, down: bool) -> None:
        """While ``down``, every connection is reset (the network is gone)."""
        self.down = down

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()
            self.rate = 0.0
            self.down = False

    def pick(self, method: str, path: str) -> str | None:
        with self._lock:
            if self.down:
                return "reset"
            for index, (kind, pattern, want_method) in enumerate(self._queued):
                if (pattern is None or pattern.search(path)) and (want_method in (None, method)):
                    del self._queued[index]
                    self.injected.append((kind, method, path))
                    return kind
            if self.rate and (self.path_filter is None or self.path_filter.search(path)):
                if self._rng.random() < self.rate:
                    kind = self._rng.choice(self.kinds)
                    self.injected.append((kind, method, path))
                    return kind
        return None


class RateLimit:
    """A service-wide request rate limit: at most ``per_second`` requests served in any
    sliding one-second window, whoever sends them. Thread-safe; off while ``per_second`` is 0.

    ``clock`` (monotonic seconds) can be replaced by tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self.clock = clock
        self.per_second = 0
        self.retry_after = 1
        self.path_filter: re.Pattern | None = None
        self.served = 0
        self.refused = 0
        self._recent: deque[float] = deque()  # when each request of the last second was served

    def set(self, per_second: int, *, retry_after: int = 1, path: str | None = None) -> None:
        """Serve at most ``per_second`` requests per second (0: no limit) on paths matching
        regex ``path`` (all paths when None); refuse the rest with ``Retry-After: retry_after``."""
        assert per_second >= 0, per_second
        with self._lock:
            self.per_second = int(per_second)
            self.retry_after = retry_after
            self.path_filter = re.compile(path) if path else None
            self._recent.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.served = self.refused = 0

    def admit(self, path: str) -> bool:
        """Count one request to ``path``; False when it must be refused (over the limit)."""
        with self._lock:
            if not self.per_second or (self.path_filter is not None and not self.path_filter.search(path)):
                self.served += 1
                return True
            now = self.clock()
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) < self.per_second:
                self._recent.append(now)
                self.served += 1
                return True
            self.refused += 1
            return False

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"served": self.served, "refused": self.refused}
