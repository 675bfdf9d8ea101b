"""Optional rate limits: requests per second per target, and a global upload bandwidth.

Both are token buckets. Every HTTP request a target makes passes through ``LimitedAdapter``
(mounted on every session by ``targets.http.SessionPool``), which takes one request token
from the bucket of the target currently being served (a context variable set around each
delivery and check: targets need no code for it) and, with a bandwidth limit, as many byte
tokens as the request body has. Bodies are paid for before they are sent, so the limit holds
on average over a few seconds, not within one request.

The same adapter counts the body bytes sent for each target (``sent_bytes``, since the
process started: the metrics and the status page); targets that write instead of sending
(the local directory) count what they wrote with ``count_sent``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time

from requests.adapters import HTTPAdapter


class TokenBucket:
    """``rate`` tokens per second, up to ``burst`` saved; ``acquire`` blocks until paid."""

    def __init__(self, rate: float, burst: float | None = None, *, clock=time.monotonic, sleep=time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens (going into debt if needed) and wait the debt off; returns the wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


_request_buckets: dict[str, TokenBucket] = {}
_bandwidth: TokenBucket | None = None
_current_target: contextvars.ContextVar[str | None] = contextvars.ContextVar("syncd_target", default=None)
_sent: dict[str, int] = {}
_sent_lock = threading.Lock()


def configure(rate_limits: dict[str, float], bandwidth: float, *, clock=time.monotonic, sleep=time.sleep) -> None:
    """Set the per-target request rates (0 = unlimited) and the global bytes per second (0 = unlimited)."""
    global _bandwidth
    _request_buckets.clear()
    for name, rate in rate_limits.items():
        if rate and rate > 0:
            _request_buckets[name] = TokenBucket(rate, clock=clock, sleep=sleep)
    # One second of burst: short enough to keep the average honest, long enough for one image.
    _bandwidth = (TokenBucket(bandwidth, burst=bandwidth, clock=clock, sleep=sleep)
                  if bandwidth and bandwidth > 0 else None)


@contextlib.contextmanager
def serving(target: str):
    """Mark the requests made inside as made for ``target``."""
    token = _current_target.set(target)
    try:
        yield
    finally:
        _current_target.reset(token)


def count_sent(size: int) -> None:
    """Add ``size`` bytes to what was sent for the target being served (see ``serving``)."""
    target = _current_target.get()
    if target and size:
        with _sent_lock:
            _sent[target] = _sent.get(target, 0) + size


def sent_bytes() -> dict[str, int]:
    """``target -> bytes`` sent (request bodies, or written) since the process started."""
    with _sent_lock:
        return dict(_sent)


class LimitedAdapter(HTTPAdapter):
    """A requests transport adapter applying the limits above before each request."""

    def send(self, request, *args, **kwargs):
        target = _current_target.get()
        bucket = _request_buckets.get(target) if target else None
        if bucket is not None:
            bucket.acquire(1)
        body = request.body
        size = len(body) if isinstance(body, (bytes, bytearray, str)) else 0
        if _bandwidth is not None and size:
            _bandwidth.acquire(size)
        count_sent(size)
        return super().send(request, *args, **kwargs)
