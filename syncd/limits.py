"""The limits every HTTP request of a target passes: its rate (adaptive) and the global bandwidth.

Every HTTP request a target makes passes through ``LimitedAdapter`` (mounted on every session
by ``targets.http.SessionPool``). For the target currently being served (a context variable
set around each delivery, poll and check with ``serving``: targets need no code for it) it:

- takes a ticket from the target's ``rate.RateController`` (held while the platform asked us
  to wait; paced at the adapted rate once the platform throttled us; the configured
  ``rate_limit`` is a ceiling) and reports the response back to it, so a 429 (or a 503 with
  ``Retry-After``) slows and holds the whole target, whichever worker got it;
- with a bandwidth limit, takes as many byte tokens from the global ``TokenBucket`` as the
  request body has, and as many again from the target's own bucket when it has a limit.
  Bodies are paid for before they are sent, so that limit holds on average over a few
  seconds, not within one request.

Bandwidth limits change while the daemon runs (a timetable, syncd.timetable):
``set_bandwidth`` puts a new bucket in place for the requests that come next; requests
already waiting in a bucket whose limit was raised or lifted go at once, those waiting in a
bucket whose limit was lowered finish their wait at the old rate.

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
    """``rate`` tokens per second, up to ``burst`` saved; ``acquire`` blocks until paid.
    ``sleep`` defaults to a wait that ``release`` cuts short (the limit was raised or lifted)."""

    def __init__(self, rate: float, burst: float | None = None, *, clock=time.monotonic, sleep=None):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._clock = clock
        self._released = threading.Event()
        self._sleep = sleep if sleep is not None else self._released.wait
        self._last = clock()
        self._lock = threading.Lock()

    def release(self) -> None:
        """This bucket is replaced by a higher limit or none: whoever waits in it goes now."""
        self._released.set()

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
_target_bandwidth: dict[str, TokenBucket] = {}
_bucket_time: tuple = (time.monotonic, None)  # (clock, sleep) of the bandwidth buckets
_current: contextvars.ContextVar[Serving | None] = contextvars.ContextVar("syncd_serving", default=None)
_sent: dict[str, int] = {}
_sent_lock = threading.Lock()


def configure(rate_limits: dict[str, float], bandwidth: float | None, *, clock=time.monotonic, sleep=None,
              wall=time.time, target_bandwidth: dict[str, float | None] | None = None) -> dict[str, RateController]:
    """A fresh ``RateController`` for each target named in ``rate_limits`` (the value is its
    configured ceiling in requests/s, 0 = none), the global bytes per second and each
    target's (``target_bandwidth``; 0 or None = unlimited). Returns the controllers by target
    name (status and metrics read them). ``sleep``: None waits the real time."""
    global _bandwidth, _bucket_time
    _controllers.clear()
    for name, ceiling in rate_limits.items():
        _controllers[name] = RateController(ceiling=ceiling or 0.0, clock=clock, sleep=sleep or time.sleep,
                                            wall=wall)
    _bucket_time = (clock, sleep)
    _bandwidth = None
    _target_bandwidth.clear()
    set_bandwidth(bandwidth, target_bandwidth or {})
    return dict(_controllers)


def _bucket(rate: float | None) -> TokenBucket | None:
    # One second of burst: short enough to keep the average honest, long enough for one image.
    clock, sleep = _bucket_time
    return TokenBucket(rate, burst=rate, clock=clock, sleep=sleep) if rate and rate > 0 else None


def _replaced(old: TokenBucket | None, rate: float | None) -> TokenBucket | None:
    """The bucket for ``rate`` instead of ``old`` (``old`` itself when its rate is the same)."""
    rate = rate if rate and rate > 0 else None
    if (old.rate if old is not None else None) == rate:
        return old
    if old is not None and (rate is None or rate > old.rate):
        old.release()  # raised or lifted: what waits at the old rate goes now
    return _bucket(rate)


def set_bandwidth(overall: float | None, per_target: dict[str, float | None]) -> None:
    """Bytes per second from now on (None or 0: unlimited), over all targets and for each
    target named (the others keep theirs); see the module docstring for requests waiting."""
    global _bandwidth
    _bandwidth = _replaced(_bandwidth, overall)
    for name, rate in per_target.items():
        bucket = _replaced(_target_bandwidth.get(name), rate)
        if bucket is None:
            _target_bandwidth.pop(name, None)
        else:
            _target_bandwidth[name] = bucket


def bandwidth() -> tuple[float | None, dict[str, float]]:
    """The bandwidth limits in force: ``(overall, target -> rate)`` in bytes per second."""
    return (_bandwidth.rate if _bandwidth is not None else None,
            {name: bucket.rate for name, bucket in _target_bandwidth.items()})


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
        if size:
            overall = _bandwidth  # read once: set_bandwidth may put another in place meanwhile
            if overall is not None:
                overall.acquire(size)
            own = _target_bandwidth.get(record.target) if record is not None else None
            if own is not None:
                own.acquire(size)
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
