"""The rate controller of a target (syncd.rate) on a fake clock: pacing, hold, decrease,
increase, ceiling, recovery; and through real HTTP, the hold shared by every thread of a target."""

from __future__ import annotations

import random
import threading
import time

import pytest

from syncd import limits
from syncd.errors import TransientError
from syncd.rate import RateController, is_throttle, parse_retry_after
from syncd.targets.http import SessionPool, send
from tests.emulators.base import Emulator, json_response, route


class FakeClock:
    """Monotonic and wall time as parameters; sleeping advances the clock (thread-safe)."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self.lock = threading.Lock()
        self.slept: list[float] = []

    def clock(self) -> float:
        with self.lock:
            return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.clock()  # 22:30:00Z at 1000

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        """Time passing outside the controller (not a wait it asked for)."""
        with self.lock:
            self.now += seconds


def controller(clock: FakeClock, **options) -> RateController:
    return RateController(clock=clock.clock, wall=clock.wall, sleep=clock.sleep, rng=random.Random(7), **options)


def serve(rate: RateController, clock: FakeClock, count: int, every: float) -> None:
    """``count`` requests answered 200, one every ``every`` seconds (as far as the rate lets them)."""
    for _ in range(count):
        ticket = rate.acquire()
        assert rate.finished(ticket, 200) is False
        clock.advance(every)


def serve_for(rate: RateController, clock: FakeClock, seconds: float) -> None:
    """Requests answered 200 as fast as the rate lets them, for ``seconds``."""
    end = clock.clock() + seconds
    while clock.clock() < end:
        rate.finished(rate.acquire(), 200)


def test_throttle_statuses():
    assert is_throttle(429, None) and is_throttle(429, 2.0)
    assert is_throttle(503, 1.0)
    assert not is_throttle(503, None)  # a bare 503 is that request's failure
    assert not is_throttle(500, 1.0) and not is_throttle(200, None) and not is_throttle(None, None)
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_unlimited_until_the_first_throttle():
    clock = FakeClock()
    rate = controller(clock)
    for _ in range(100):
        ticket, wait = rate.try_acquire()
        assert ticket is not None and wait == 0
        rate.finished(ticket, 200)
    assert rate.rate is None
    assert rate.state().reason == "unlimited" and rate.state().held_until is None


def test_a_throttle_decreases_to_beta_times_the_served_rate_and_holds():
    clock = FakeClock()
    rate = controller(clock, beta=0.7, window=3.0)
    serve(rate, clock, 15, 0.2)  # 5 requests/s for 3 s
    ticket = rate.acquire()
    rate.finished(ticket, 429, 2.0)
    assert rate.rate == pytest.approx(0.7 * 5.0, rel=0.1)
    state = rate.state()
    assert state.reason == f"slowed by 429 at 22:30:03Z to {rate.rate:.2g}/s"
    # Held: Retry-After, never sooner, at most 1.5x (the jitter).
    ticket, wait = rate.try_acquire()
    assert ticket is None and 2.0 <= wait <= 3.0
    assert state.held_until == pytest.approx(clock.wall() + wait)


def test_a_503_with_retry_after_throttles_a_bare_503_does_not():
    clock = FakeClock()
    rate = controller(clock)
    serve(rate, clock, 5, 0.1)
    assert rate.finished(rate.acquire(), 503) is False
    assert rate.rate is None and rate.try_acquire()[0] is not None
    assert rate.finished(rate.acquire(), 503, 1.0) is True
    assert rate.rate is not None and rate.state().reason.startswith("slowed by 503 at ")


def test_the_hold_is_never_shorter_than_retry_after():
    for seed in range(50):
        clock = FakeClock()
        rate = RateController(clock=clock.clock, wall=clock.wall, sleep=clock.sleep, rng=random.Random(seed))
        rate.throttled(rate.acquire(), 3.0)
        assert 3.0 <= rate.wait_time() <= 4.5
    clock = FakeClock()
    rate = controller(clock)
    rate.throttled(rate.acquire(), None)  # no Retry-After: a default hold, still a hold
    assert rate.wait_time() >= 1.0


def test_the_hold_applies_to_every_thread_also_those_already_waiting():
    clock = FakeClock()
    rate = controller(clock, ceiling=2.0)  # paced: one request every 0.5 s
    first = rate.acquire()
    other = {}

    def sleep_then_throttled(seconds):
        # While this thread waits for its token, another worker's request is refused.
        clock.sleep(seconds)
        if not other:
            other["at"] = clock.clock()
            rate.throttled(first, 4.0)

    rate._sleep = sleep_then_throttled
    ticket = rate.acquire()  # was due 0.5 s later; must now wait out the hold
    assert ticket.sent >= other["at"] + 4.0

    # Real threads: every worker of the target waits for the same hold.
    clock = FakeClock()
    rate = controller(clock)
    rate.throttled(rate.acquire(), 2.0)
    held_until = clock.clock() + rate.wait_time()
    tickets = []

    def worker():
        tickets.append(rate.acquire())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(tickets) == 4 and all(t.sent >= held_until for t in tickets)


def test_replies_of_requests_sent_before_a_decrease_do_not_decrease_again():
    clock = FakeClock()
    rate = controller(clock)
    serve(rate, clock, 30, 0.1)  # 10/s
    under_way = [rate.acquire() for _ in range(4)]  # four workers' requests, all refused
    rate.throttled(under_way[0], 1.0)
    once = rate.rate
    hold = rate.wait_time()
    clock.advance(0.3)
    for ticket in under_way[1:]:
        rate.throttled(ticket, 1.0)
    assert rate.rate == once == pytest.approx(7.0, rel=0.1)
    assert rate.wait_time() > hold - 0.3  # ... but each one's Retry-After still holds
    clock.advance(rate.wait_time())
    rate.throttled(rate.acquire(), 1.0)  # a request sent after the decrease: news
    assert rate.rate < once


def test_successes_increase_the_rate_and_pacing_follows_it():
    clock = FakeClock()
    rate = controller(clock, increase=0.1, acceleration=0.0)
    serve(rate, clock, 10, 0.5)  # 2/s
    rate.throttled(rate.acquire(), 1.0)
    low = rate.rate
    assert low == pytest.approx(1.4, rel=0.15)
    clock.advance(rate.wait_time())
    clock.slept.clear()
    serve(rate, clock, 20, 0.0)  # as fast as the rate lets them: paced
    assert rate.rate > low
    assert all(gap == pytest.approx(1 / r, rel=0.5) for gap, r in zip(clock.slept, [low] * 3))
    # additive: 0.1/s per second of sending at the rate, about 2 more per ~14 s of requests
    assert rate.rate == pytest.approx(low + 0.1 * sum(clock.slept), rel=0.2)


def test_a_paced_target_decreases_from_its_rate_not_a_lagging_measure():
    clock = FakeClock()
    rate = controller(clock, increase=0.5, acceleration=0.0)
    serve(rate, clock, 30, 0.1)
    rate.throttled(rate.acquire(), 1.0)
    clock.advance(rate.wait_time())
    serve_for(rate, clock, 5.0)  # paced, growing: the last seconds served less than the rate is now
    before = rate.rate
    rate.throttled(rate.acquire(), 1.0)
    assert rate.rate == pytest.approx(0.7 * before, rel=0.01)


def test_a_raised_rate_applies_to_the_request_already_waiting():
    clock = FakeClock()
    rate = controller(clock, increase=1.0, acceleration=0.0)
    rate.throttled(rate.acquire(), 1.0)  # nothing served: 0.7/s, one request every 1.4 s
    clock.advance(rate.wait_time())
    rate.finished(rate.acquire(), 200)
    ticket = rate.acquire()  # waited 1.4 s for its token
    rate.finished(ticket, 200)  # +1.0/s per second of pacing: ~2.1/s
    assert rate.rate == pytest.approx(0.7 + 1 / 0.7, rel=0.01)
    assert rate.wait_time() == pytest.approx(1 / rate.rate)  # not the 1.4 s set when it went


def test_the_rate_grows_only_as_far_as_it_is_used():
    clock = FakeClock()
    rate = controller(clock, increase=1.0, acceleration=0.5)
    serve(rate, clock, 10, 0.5)
    rate.throttled(rate.acquire(), 1.0)
    clock.advance(rate.wait_time())
    serve(rate, clock, 60, 1.0)  # a job-bound target: one request per second, whatever its rate
    # Unused, it would have grown by 1.0 + 0.5 t per second for a minute (~900/s); it stays
    # near twice what is used (measured over the last 3 s).
    assert rate.rate < 4.0


def test_the_configured_limit_is_a_ceiling_and_recovery_goes_back_to_it():
    clock = FakeClock()
    rate = controller(clock, ceiling=5.0, increase=0.1, acceleration=0.01)
    assert rate.rate == 5.0 and rate.state().reason == "configured limit 5/s"
    clock.slept.clear()
    serve(rate, clock, 10, 0.0)
    assert clock.slept == [pytest.approx(0.2)] * 9  # the first at once, then paced at the limit: no burst
    rate.throttled(rate.acquire(), 1.0)
    assert rate.rate < 5.0 and rate.state().reason.startswith("slowed by 429")
    clock.advance(rate.wait_time())
    serve(rate, clock, 400, 0.0)  # recovery: no more throttles
    assert rate.rate == 5.0 and rate.state().reason == "configured limit 5/s"


def test_recovery_without_a_ceiling_speeds_up_the_longer_no_throttle_comes():
    clock = FakeClock()
    rate = controller(clock, increase=0.1, acceleration=0.01)
    serve(rate, clock, 30, 0.1)  # 10/s
    rate.throttled(rate.acquire(), 1.0)
    low = rate.rate
    assert low == pytest.approx(7.0, rel=0.1)
    clock.advance(rate.wait_time())
    gains = []
    for _ in range(3):
        before = rate.rate
        serve_for(rate, clock, 10.0)
        gains.append(rate.rate - before)
    assert gains[0] < gains[1] < gains[2]  # accelerating: freed capacity is found again soon
    assert rate.rate > 10.0  # back above where it was throttled within 30 s


def test_a_first_throttle_before_anything_was_served_starts_at_one_per_retry_after():
    clock = FakeClock()
    rate = controller(clock)
    rate.throttled(rate.acquire(), 2.0)  # the platform was already saturated by others
    assert rate.rate == pytest.approx(0.7 / 2.0)
    clock.advance(rate.wait_time())
    serve_for(rate, clock, 10.0)
    assert rate.rate > 0.35 + 1.0  # paced, so growing: 0.1/s per s and more


# -- through real HTTP ---------------------------------------------------------------------------


class Limited(Emulator):
    """An endpoint behind the shared rate-limit knob (tests/emulators/knobs.RateLimit)."""

    name = "limited"

    @route("GET", "/thing")
    def thing(self, request):
        return json_response({"ok": True})

    @route("GET", "/busy")
    def busy(self, request):
        return json_response({"error": "overloaded"}, 503, **{"Retry-After": "2"})


class Watched(RateController):
    """The real controller, recording when each ticket went and when each 429 came back."""

    def __init__(self, **options):
        super().__init__(**options)
        self.sent: list[float] = []
        self.refused: list[tuple[float, float]] = []  # (when the 429 was seen, its Retry-After)

    def try_acquire(self):
        ticket, wait = super().try_acquire()
        if ticket is not None:
            self.sent.append(time.monotonic())
        return ticket, wait

    def throttled(self, ticket, retry_after, *, status=429):
        self.refused.append((time.monotonic(), retry_after))
        super().throttled(ticket, retry_after, status=status)


@pytest.fixture
def limited():
    with Limited() as emulator:
        yield emulator
    limits.configure({}, 0)


def test_a_429_holds_every_thread_of_the_target_and_not_the_others(limited):
    limited.rate_limit.set(3, retry_after=1)
    limits.configure({}, 0)
    busy, quiet = Watched(), Watched()
    limits.register("busy", busy)
    limits.register("quiet", quiet)
    pool = SessionPool()
    statuses: list[int] = []
    seen: list[int] = []

    def worker(target: str, count: int) -> None:
        session = pool.get()
        with limits.serving(target) as record:
            while statuses.count(200) < count:
                statuses.append(send(session, "GET", limited.url + "/thing", context="t", timeout=10,
                                     check=False).status_code)
        seen.append(record.throttled)

    threads = [threading.Thread(target=worker, args=("busy", 12)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(200) >= 12 and busy.refused, statuses  # unlimited at first: refused, then paced
    assert sum(seen) == len(busy.refused) == statuses.count(429)
    assert busy.rate is not None and busy.state().reason.startswith("slowed by 429 at ")
    # Never sooner: after a 429 came back, neither thread sent anything for Retry-After seconds.
    for refused_at, retry_after in busy.refused:
        assert retry_after == 1.0
        assert not [t for t in busy.sent if refused_at < t < refused_at + retry_after]
    # Another target has its own controller: not held, not slowed by the first one's 429s.
    limited.rate_limit.set(0)
    statuses.clear()
    worker("quiet", 1)
    assert quiet.rate is None and not quiet.refused
    pool.close()


def test_throttles_are_transient_errors_marked_throttled(limited):
    limits.configure({"t": 0}, 0)
    session = SessionPool().get()

    def error(path: str, fault: str | None = None) -> TransientError:
        if fault:
            limited.faults.next(fault)
        with limits.serving("t"), pytest.raises(TransientError) as caught:
            send(session, "GET", limited.url + path, context="t", timeout=10)
        return caught.value

    refused = error("/thing", "429")
    assert refused.throttled and refused.retry_after == 1 and not refused.outcome_unknown
    busy = error("/busy")
    assert busy.throttled and busy.retry_after == 2 and busy.outcome_unknown
    failed = error("/thing", "503")  # no Retry-After: that request failed, the target is not slowed
    assert not failed.throttled and failed.outcome_unknown
    assert limits.controller("t").throttles == 2
