"""The limits every HTTP request of a target passes: its rate (adaptive) and the global bandwidth.

Every HTTP request a target makes passes through ``LimitedAdapter`` (mounted on every session
by ``targets.http.SessionPool``). For the target currently being served (a context variable
set around each delivery, poll and check with ``serving``: targets need no code for it) it:

- takes a ticket from the target's ``rate.RateController`` (held while the platform asked us
  to wait; paced at the adapted rate once the platform throttled us; the configured
  ``rate_limit`` is a ceiling) and reports the response back to it, so a 429 (or a 503 with
  ``Retry-After``) slows and holds the whole target, whichever worker got it;
- with a bandwidth limit, takes as many byte tokens from the global ``TokenBucket`` as the
  request body has. Bodies are paid for before they are sent, so that limit holds on average
  over a few seconds, not within one request.

The same adapter counts the body bytes sent for each target (``sent_bytes``, since the
process started: the metrics and the status page); targets that write instead of sending
(the local directory) count what they wrote with ``count_sent``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from requests.adapters import HTTPAdapter

from syncd.rate import RateController, parse_retry_after


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


@dataclass
class Serving:
    """The requests made inside one ``serving`` block: how many the platform throttled, and
    the longest ``Retry-After`` it gave. A delivery whose request was throttled is about the
    target's rate, not the item (the dispatcher does not back the item off)."""

    target: str
    throttled: int = 0
    retry_after: float | None = None


_controllers: dict[str, RateController] = {}
_bandwidth: TokenBucket | None = None
_current: contextvars.ContextVar[Serving | None] = contextvars.ContextVar("syncd_serving", default=None)
_sent: dict[str, int] = {}
_sent_lock = threading.Lock()


def configure(rate_limits: dict[str, float], bandwidth: float, *, clock=time.monotonic, sleep=time.sleep,
              wall=time.time) -> dict[str, RateController]:
    """A fresh ``RateController`` for each target named in ``rate_limits`` (the value is its
    configured ceiling in requests/s, 0 = none) and the global bytes per second (0 =
    unlimited). Returns the controllers by target name (status and metrics read them)."""
    global _bandwidth
    _controllers.clear()
    for name, ceiling in rate_limits.items():
        _controllers[name] = RateController(ceiling=ceiling or 0.0, clock=clock, sleep=sleep, wall=wall)
    # One second of burst: short enough to keep the average honest, long enough for one image.
    _bandwidth = (TokenBucket(bandwidth, burst=bandwidth, clock=clock, sleep=sleep)
                  if bandwidth and bandwidth > 0 else None)
    return dict(_controllers)


def register(name: str, controller: RateController) -> None:
    """Use ``controller`` for the requests made while serving ``name``."""
    _controllers[name] = controller


def controller(name: str) -> RateController | None:
    """The rate controller of target ``name``, if one is configured."""
    return _controllers.get(name)


@contextlib.contextmanager
def serving(target: str) -> Iterator[Serving]:
    """Mark the requests made inside as made for ``target``; yields what happened to them."""
    record = Serving(target)
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def count_sent(size: int) -> None:
    """Add ``size`` bytes to what was sent for the target being served (see ``serving``)."""
    record = _current.get()
    if record is not None and size:
        with _sent_lock:
            _sent[record.target] = _sent.get(record.target, 0) + size


def sent_bytes() -> dict[str, int]:
    """``target -> bytes`` sent (request bodies, or written) since the process started."""
    with _sent_lock:
        return dict(_sent)


class LimitedAdapter(HTTPAdapter):
    """A requests transport adapter applying the limits above around each request."""

    def send(self, request, *args, **kwargs):
        record = _current.get()
        rate = _controllers.get(record.target) if record is not None else None
        ticket = rate.acquire() if rate is not None else None
        body = request.body
        size = len(body) if isinstance(body, (bytes, bytearray, str)) else 0
        if _bandwidth is not None and size:
            _bandwidth.acquire(size)
        count_sent(size)
        try:
            response = super().send(request, *args, **kwargs)
        except BaseException:
            if ticket is not None:
                rate.finished(ticket, None)  # no reply: a failure of this request, not a throttle
            raise
        if ticket is not None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if rate.finished(ticket, response.status_code, retry_after):
                record.throttled += 1
                if retry_after is not None:
                    record.retry_after = max(record.retry_after or 0.0, retry_after)
        return response
