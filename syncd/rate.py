"""A target's request rate as a whole: paced, and adapted to the platform's throttling.

One ``RateController`` per target sits under every HTTP request of that target (appends,
job polls, annotations, lookups, checks: ``limits.LimitedAdapter`` calls it). Contract:

- ``acquire()`` blocks until a request may go and returns its ticket. A request may go when
  the target is not held and a token is due at the current rate. The rate is *unlimited*
  until the platform first throttles the target (or the configured ``rate_limit``, which is
  always a ceiling); requests are then paced one by one (no bursts: a fleet of devices
  shares the platform's limit, and bursts are what it refuses).
- ``finished(ticket, status, retry_after)`` reports the response (``status`` None when no
  response came: reset, timeout). A *throttle* (429, or 503 with ``Retry-After``: see
  ``is_throttle``) holds the whole target until ``Retry-After`` has passed (plus jitter,
  never sooner; ``DEFAULT_HOLD`` without the header): every thread of the target waits,
  also those already waiting for a token. The first throttle seen for requests sent since
  the last decrease lowers the rate (multiplicative decrease; the replies of requests that
  were already under way do not decrease it again) to ``beta`` x: the current rate when it
  was what held requests back lately, else the rate the platform actually served over the
  last seconds (the first throttle of an unlimited target, or a target sending less than
  its rate). Every other response raises the rate a little (additive increase, faster the
  longer no throttle came, so freed capacity is found again within seconds) while the rate
  is what holds requests back (a target waiting for jobs does not save up a rate it would
  burst with), never above the ceiling; a request already waiting for its token gets the
  new rate at once.
- ``state()`` says the current rate and why, for status and metrics.

Time, sleeping and randomness are parameters: tests run on a fake clock without sleeping.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BETA = 0.7  # multiplicative decrease: the new rate is BETA x the rate served lately
INCREASE = 0.1  # requests/s added per second of requests going through at the rate
ACCELERATION = 0.03  # ... plus this much per second since the last throttle (req/s per s^2)
WINDOW = 3.0  # seconds over which the served rate is measured, at least ...
SAMPLES = 6  # ... the time this many requests take at the current rate (up to MAX_WINDOW)
MAX_WINDOW = 10.0
MIN_RATE = 0.1  # requests/s: a throttled target never stops completely
DEFAULT_HOLD = 1.0  # seconds a throttle without Retry-After holds the target
HOLD_JITTER = 0.5  # a hold lasts Retry-After x (1 + uniform(0, HOLD_JITTER)): a fleet comes back spread out
MAX_HOLD = 3600.0  # a Retry-After longer than this is taken as this (a day is a misconfiguration)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def is_throttle(status: int | None, retry_after: float | None) -> bool:
    """Whether a response says the platform is limiting us as a whole: 429, or 503 with a
    ``Retry-After`` (a bare 503 is a failure of that request, not a throttle)."""
    return status == 429 or (status == 503 and retry_after is not None)


@dataclass(frozen=True)
class Ticket:
    """One request let through: when it went (monotonic)."""

    sent: float


@dataclass(frozen=True)
class RateState:
    """What status and metrics show for a target: ``rate`` requests/s (None: unlimited),
    ``reason`` in words, and until when (wall clock) the target is held, if it is."""

    rate: float | None
    reason: str
    held_until: float | None = None


def _clock_text(wall: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(wall))


class RateController:
    """The paced, adaptive request rate of one target (see the module docstring).
    Thread-safe: every worker of the target shares one controller."""

    def __init__(
        self,
        *,
        ceiling: float = 0.0,
        beta: float = BETA,
        increase: float = INCREASE,
        acceleration: float = ACCELERATION,
        window: float = WINDOW,
        min_rate: float = MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if ceiling < 0:
            raise ValueError("ceiling must be >= 0 (0: none)")
        if not 0 < beta < 1:
            raise ValueError("beta must be between 0 and 1")
        self.ceiling = float(ceiling) or None
        self.beta = beta
        self.increase = increase
        self.acceleration = acceleration
        self.window = window
        self.min_rate = min(min_rate, self.ceiling) if self.ceiling else min_rate
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._rate: float | None = None  # adapted rate; None until the first throttle
        self._next_at = float("-inf")  # earliest time of the next request (pacing)
        self._last_sent = float("-inf")
        self._hold_until = float("-inf")
        self._holds: deque[tuple[float, float]] = deque()  # (start, end) of recent holds
        self._served: deque[float] = deque()  # when each recent non-throttled response came
        self._first_sent: float | None = None
        self._last_decrease = float("-inf")  # monotonic time of the last decrease
        self._last_increase: float | None = None
        self._paced = False  # a request waited for its token since the last increase
        self._paced_at = float("-inf")  # when a request last waited for its token
        self._throttled_wall: float | None = None  # wall time of the last decrease, for the reason
        self._throttled_status = 0
        self._rate_after_throttle = 0.0
        self.throttles = 0  # throttled responses seen (metrics)

    # -- before a request ------------------------------------------------------------------
    def acquire(self) -> Ticket:
        """Wait until a request may go (not held, a token due) and return its ticket."""
        while True:
            ticket, wait = self.try_acquire()
            if ticket is not None:
                return ticket
            self._sleep(wait)

    def try_acquire(self) -> tuple[Ticket | None, float]:
        """A ticket now, or (None, seconds to wait before asking again). Never blocks."""
        with self._lock:
            now = self._clock()
            start = max(now, self._hold_until, self._next_at)
            if start > now:
                if self._next_at > now >= self._hold_until:
                    self._paced = True  # the rate is what holds this target back now
                    self._paced_at = now
                return None, start - now
            rate = self._effective_rate()
            # Strict pacing: the next request is due one interval after this one (or now, after
            # a pause), so no burst ever saves up.
            self._next_at = now + 1.0 / rate if rate else now
            self._last_sent = now
            if self._first_sent is None:
                self._first_sent = now
            return Ticket(now), 0.0

    def hold_remaining(self) -> float:
        """Seconds the target is still held after a throttle (0: not held). Pacing aside."""
        with self._lock:
            return max(0.0, self._hold_until - self._clock())

    def wait_time(self) -> float:
        """Seconds until a request could go (0: now); for a dispatcher that does not want to
        hand work to a held target. Takes nothing."""
        with self._lock:
            now = self._clock()
            return max(0.0, self._hold_until - now, self._next_at - now)

    # -- after the response ----------------------------------------------------------------
    def finished(self, ticket: Ticket, status: int | None, retry_after: float | None = None) -> bool:
        """Report the response of ``ticket``'s request (``status`` None: no response);
        returns whether it was a throttle."""
        if is_throttle(status, retry_after):
            self.throttled(ticket, retry_after, status=status or 429)
            return True
        self.served(ticket)
        return False

    def throttled(self, ticket: Ticket, retry_after: float | None, *, status: int = 429) -> None:
        """The platform refused ``ticket``'s request as over its limit: hold, maybe decrease."""
        with self._lock:
            now = self._clock()
            self.throttles += 1
            wait = min(MAX_HOLD, retry_after if retry_after is not None else DEFAULT_HOLD)
            until = now + wait * (1.0 + self._rng.uniform(0.0, HOLD_JITTER))
            if until > self._hold_until:
                self._hold_until = until
                self._holds.append((now, until))
            if ticket.sent <= self._last_decrease:
                return  # sent before the last decrease: that decrease already answered it
            measured = self._measured(now)
            if measured <= 0:  # nothing served lately (others took the limit): one per Retry-After
                measured = 1.0 / max(wait, 0.1)
            current = self._effective_rate()
            if current is None:
                base = measured
            elif now - self._paced_at <= self._span():
                base = current  # the rate is what limits the target: it was too high
            else:
                base = min(current, measured)  # it sent less than its rate: start from what it sent
            self._rate = max(self.min_rate, self.beta * base)
            if self.ceiling:
                self._rate = min(self._rate, self.ceiling)
            self._repace()
            self._last_decrease = now
            self._last_increase = None
            self._throttled_wall = self._wall()
            self._throttled_status = status
            self._rate_after_throttle = self._rate

    def served(self, ticket: Ticket) -> None:
        """A response that was not a throttle (success, or a failure of that request alone)."""
        with self._lock:
            now = self._clock()
            self._served.append(now)
            self._trim(now)
            if self._rate is None:
                return
            last, paced = self._last_increase, self._paced
            self._last_increase, self._paced = now, False
            # Grow only while the rate is what holds requests back: a target that sends less
            # than its rate (waiting for jobs, nothing due) must not save up a rate it would
            # then burst with.
            if last is None or not paced:
                return
            slope = self.increase + self.acceleration * max(0.0, now - self._last_decrease)
            # A long gap between replies (idle, or a slow rate) counts for at most two intervals.
            self._rate += slope * min(now - last, max(1.0, 2.0 / self._rate))
            if self.ceiling:
                self._rate = min(self._rate, self.ceiling)
            self._repace()

    # -- what it is now --------------------------------------------------------------------
    @property
    def rate(self) -> float | None:
        """The current rate in requests/s (None: unlimited)."""
        with self._lock:
            return self._effective_rate()

    def state(self) -> RateState:
        """The current rate and why, in words (see ``RateState``)."""
        with self._lock:
            now = self._clock()
            rate = self._effective_rate()
            held = self._wall() + (self._hold_until - now) if self._hold_until > now else None
            if self._throttled_wall is None or (self.ceiling and rate == self.ceiling):
                reason = f"configured limit {self.ceiling:g}/s" if self.ceiling else "unlimited"
            else:
                reason = (f"slowed by {self._throttled_status} at {_clock_text(self._throttled_wall)} "
                          f"to {self._rate_after_throttle:.2g}/s")
            return RateState(rate, reason, held)

    # -- internals (lock held) -------------------------------------------------------------
    def _effective_rate(self) -> float | None:
        if self._rate is None:
            return self.ceiling
        return self._rate

    def _span(self) -> float:
        rate = self._effective_rate()
        return min(MAX_WINDOW, max(self.window, SAMPLES / rate if rate else 0.0))

    def _repace(self) -> None:
        """The next request is due one interval of the new rate after the last one: a slow
        rate just raised must not keep the long wait it set when the last request went."""
        rate = self._effective_rate()
        if rate:
            self._next_at = self._last_sent + 1.0 / rate

    def _trim(self, now: float) -> None:
        horizon = now - MAX_WINDOW
        while self._served and self._served[0] < horizon:
            self._served.popleft()
        while self._holds and self._holds[0][1] < horizon:
            self._holds.popleft()

    def _measured(self, now: float) -> float:
        """Requests/s served over the last ``window`` seconds (longer at a slow rate, so that
        about SAMPLES requests count), not counting the time the target was held (nothing
        could be served then)."""
        self._trim(now)
        start = now - self._span()
        if self._first_sent is not None:
            start = max(start, self._first_sent)
        held = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in self._holds)
        span = max(now - start - held, 0.5)  # less than half a second says little: don't divide by ~0
        count = 0
        for served in reversed(self._served):  # newest first: the cost is the samples counted
            if served < start:
                break
            count += 1
        return count / span
