"""Target health: checks, pause and resume, and how much a target may be sent now.

- **Checks**: ``Target.check()`` runs in a short-lived thread per target at start-up and
  while the target is paused (every ``target_recheck_seconds``), so a slow platform never
  stalls the coordinator; its result comes back through the coordinator's inbox.
- **Pause**: a ``FatalTargetError`` (from a check or an attempt) pauses the target
  (journaled, shown by ``status``); its deliveries stay due and go on when a check passes.
  A target paused again right after a check resumed it, with nothing delivered between (a
  cause its check cannot see), is re-checked with backoff: twice the wait each time, up to
  ``MAX_RECHECK``, back to ``target_recheck_seconds`` after a delivery succeeds. So it never
  flaps between paused and resumed every few seconds.
- **Rate**: every request of a target is paced and held at the transport by its
  ``rate.RateController`` (``syncd.limits``: unlimited until the platform throttles, then
  adapted; a 429 or 503 with Retry-After holds every worker of the target). One ``RateGate``
  per target is the dispatcher's view of it: how many batches may be out now (``slots``:
  none while the target is held, about one second's worth of requests while it is paced,
  else twice ``workers`` so a worker that finishes finds its next batch queued), when a held
  target may send again (``ready_at``), and ``describe()``, what status and metrics show
  (the journal's ``targets.rate``/``rate_reason``). A throttled answer reported by the
  engine (``throttled``) also holds the target on the coordinator's clock until its
  Retry-After (for one the transport did not see); the item itself is not backed off.
- **Faults** (a 5xx without Retry-After, a reset, a lost reply): an item's retry backs off
  with the *target's* run of failed requests, not with the item's own count
  (``retry_attempts``): while the target answers other requests, one request's fault is bad
  luck, retried after ``retry_base_seconds`` or twice that; when every request fails, each
  fault doubles the wait of the next. An item that failed ``QUICK_RETRIES`` times while the
  target served others is suspect itself, and backs off on its own count from then on.
- **Paused by operator** (``syncd pause``/``resume``): a flag in the journal, read at start-up
  and whenever the daemon is told (SIGUSR1, syncd.control) or every ``OPERATOR_EVERY``
  seconds; while it is set no batch is handed out and a batch not yet on the wire is not
  sent (``held``); a check never lifts it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from syncd import limits
from syncd.errors import SyncdError, TransientError
from syncd.journal.store import Store
from syncd.rate import RateController
from syncd.targets import Target

log = logging.getLogger("syncd.health")

FIRST_HOLD = 1.0  # seconds a throttled target is held when the server did not say how long
MAX_HOLD = 3600.0
MAX_RECHECK = 900.0  # the longest re-check backoff of a target that keeps failing right after resuming
# Retries of an item that back off with its target's run of faults (see Faults above); beyond,
# with its own count. Per-item doubling from the first fault left a fleet's unlucky items
# waiting 30-60 s after four faults in a row (10 % of requests failing, 2 requests an attempt)
# while their target served everyone else: the fleet's slowest device took 2x the median.
QUICK_RETRIES = 6


@dataclass
class CheckReport:
    """The result of one ``Target.check()`` (put on the coordinator's inbox)."""

    target: str
    error: BaseException | None
    warnings: list[str]


class RateGate:
    """How much one target may be sent now (see the module docstring)."""

    def __init__(self, name: str, workers: int, rate_limit: float):
        self.name = name
        self.max_slots = 2 * workers
        self.rate_limit = rate_limit
        self.hold_until = 0.0
        self.throttles = 0  # throttled answers in a row
        self.faults = 0  # requests that failed (transient, not throttled) since one was answered

    @property
    def controller(self) -> RateController | None:
        """The target's transport rate controller (None until ``limits.configure``)."""
        return limits.controller(self.name)

    def slots(self, now: float) -> int:
        """Batches that may be out at the same time now (0 while the target is held)."""
        if self.hold_until and not 0 < self.hold_until - now <= MAX_HOLD:
            self.hold_until = 0.0  # over (or set under a clock since set back)
        controller = self.controller
        if self.hold_until or (controller is not None and controller.hold_remaining() > 0):
            return 0
        rate = controller.rate if controller is not None else None
        if rate is None:
            return self.max_slots
        # Paced: about one second's worth of requests out; the rest stays due in the journal
        # (and fills fuller batches) instead of waiting for a token in a worker.
        return max(1, min(self.max_slots, 1 + math.ceil(rate)))

    def throttled(self, now: float, retry_after: float | None) -> None:
        """The engine got a throttled answer: hold the whole target on the coordinator's clock
        (the transport controller has already slowed and held it, if it saw the answer)."""
        self.throttles += 1
        hold = retry_after if retry_after is not None else min(MAX_HOLD, FIRST_HOLD * 2 ** (self.throttles - 1))
        self.hold_until = max(self.hold_until, now + min(hold, MAX_HOLD))

    def served(self, now: float) -> None:
        """A request was answered (not throttled)."""
        self.faults = 0
        if self.throttles and now >= self.hold_until:
            self.throttles = 0

    def faulted(self) -> None:
        """A request failed with a transient fault (once per request, whatever it carried)."""
        self.faults += 1

    def retry_attempts(self, attempts: int) -> int:
        """The attempt count an item's retry backs off with, after its ``attempts``-th failed
        attempt (the request that failed counted by ``faulted`` already): see Faults above."""
        if attempts > QUICK_RETRIES:
            return attempts
        return max(1, min(attempts, self.faults))

    def ready_at(self, now: float) -> float | None:
        """When a held target may send again (None: not held)."""
        controller = self.controller
        remaining = controller.hold_remaining() if controller is not None else 0.0
        times = [at for at in (self.hold_until, now + remaining if remaining > 0 else 0.0) if at]
        return max(times) if times else None

    def describe(self) -> tuple[float | None, str]:
        """``(requests per second or None for unlimited, why)``, for status and metrics. The
        rate is rounded to two significant digits: the journal is written when it changes."""
        controller = self.controller
        if self.hold_until:
            until = time.strftime("%H:%M:%SZ", time.gmtime(self.hold_until))
            return (controller.rate if controller else None), f"held until {until} after a throttled request"
        if controller is None:
            return (self.rate_limit or None), (f"configured limit {self.rate_limit:g}/s" if self.rate_limit
                                               else "unlimited")
        state = controller.state()
        rate = None if state.rate is None else float(f"{state.rate:.2g}")
        return rate, state.reason


class Health:
    """Every target's checks, pause state and rate gate (see the module docstring)."""

    def __init__(self, targets: dict[str, Target], *, recheck_seconds: float, put: Callable[[object], None]):
        self.targets = targets
        self.recheck_seconds = recheck_seconds
        self.put = put  # the coordinator's inbox
        self.store: Store | None = None  # set by the daemon once the journal is open
        self.paused: dict[str, float] = {}  # target -> when to check it again
        self.operator: dict[str, float] = {}  # target -> since when the operator paused it (syncd pause)
        self.checking: set[str] = set()
        self.interval: dict[str, float] = {}  # target -> its re-check period now (backoff)
        self._resumed: set[str] = set()  # resumed by a check, nothing delivered since
        self._reasons: dict[str, str] = {}  # why each target was last paused
        self.gates = {name: RateGate(name, t.settings.workers, t.settings.rate_limit) for name, t in targets.items()}
        self._described: dict[str, tuple[float | None, str]] = {}

    # -- checks -------------------------------------------------------------------------------
    def start_check(self, name: str) -> None:
        self.checking.add(name)
        target = self.targets[name]

        def check() -> None:
            try:
                with limits.serving(name):
                    warnings = target.check()
                self.put(CheckReport(name, None, warnings))
            except SyncdError as exc:
                self.put(CheckReport(name, exc, []))
            except Exception as exc:  # pragma: no cover - adapter bug
                self.put(CheckReport(name, exc, []))

        threading.Thread(target=check, name=f"check-{name}", daemon=True).start()

    def recheck(self, now: float) -> None:
        """Start the checks of paused targets whose time came."""
        for name, at in self.paused.items():
            recheck_in = at - now  # beyond the period: the clock was set back
            if not 0 < recheck_in <= self.interval.get(name, self.recheck_seconds) and name not in self.checking:
                self.start_check(name)

    def checked(self, report: CheckReport, now: float) -> None:
        """Record a check's result: resume, stay paused, or pause."""
        assert self.store is not None
        name, error = report.target, report.error
        self.checking.discard(name)
        if error is None:
            for warning in report.warnings:
                log.warning("target %s: %s", name, warning)
            if name in self.paused:
                log.info("target %s works again; resuming deliveries", name)
                self._resumed.add(name)
            self.paused.pop(name, None)
            self.store.set_paused(name, None, now)
            return
        if isinstance(error, TransientError):
            log.warning("target %s is not reachable yet: %s", name, error)
            if name in self.paused:
                self.paused[name] = now + self.interval.get(name, self.recheck_seconds)
            return
        self.pause(name, str(error), now)

    def pause(self, name: str, reason: str, now: float) -> None:
        """Pause ``name`` (again: its next check is ``target_recheck_seconds`` away, or twice the
        last wait when it failed right after a check resumed it)."""
        assert self.store is not None
        if name in self._resumed:  # failed again with nothing delivered since it resumed
            self._resumed.discard(name)
            interval = min(2 * self.interval.get(name, self.recheck_seconds), max(MAX_RECHECK, self.recheck_seconds))
            log.error("target %s paused again right after resuming: %s (re-checked in %.0fs)", name, reason, interval)
        else:
            interval = self.interval.get(name, self.recheck_seconds)
            # A re-check failing for the reason already logged is not news (one line a period).
            level = logging.DEBUG if self._reasons.get(name) == reason and name in self.paused else logging.ERROR
            log.log(level, "target %s paused: %s (re-checked every %.0fs)", name, reason, interval)
        self._reasons[name] = reason
        self.interval[name] = interval
        self.paused[name] = now + interval
        self.store.set_paused(name, reason, now)

    def succeeded(self, name: str) -> None:
        """A delivery to ``name`` succeeded: its re-checks are back to ``target_recheck_seconds``."""
        self._resumed.discard(name)
        self.interval.pop(name, None)

    def holding(self, name: str) -> bool:
        """True while ``name`` may not be sent anything: paused, or paused by the operator."""
        return name in self.paused or name in self.operator

    def held_by_operator(self, name: str) -> bool:
        """True while the operator has ``name`` paused (asked from worker threads)."""
        return name in self.operator

    def operator_pauses(self, pauses: dict[str, float]) -> list[str]:
        """Apply the operator's pauses as the journal has them now (``target -> since``; other
        targets are not paused by the operator). Returns the targets resumed by this."""
        pauses = {name: since for name, since in pauses.items() if name in self.targets}
        for name in pauses.keys() - self.operator.keys():
            log.warning("target %s paused by operator: nothing more is sent to it until `syncd resume %s`",
                        name, name)
        resumed = sorted(self.operator.keys() - pauses.keys())
        for name in resumed:
            log.info("target %s resumed by operator", name)
        self.operator = pauses
        return resumed

    # -- rate -----------------------------------------------------------------------------------
    def slots(self, name: str, now: float) -> int:
        """Batches ``name`` may have out now (0 when paused or held)."""
        return 0 if self.holding(name) else self.gates[name].slots(now)

    def record_rates(self) -> None:
        """Journal each target's rate and its reason when they changed (status, metrics)."""
        assert self.store is not None
        for name, gate in self.gates.items():
            described = gate.describe()
            if self._described.get(name) != described:
                self.store.set_rate(name, *described)
                self._described[name] = described

    def next_deadline(self, now: float) -> float | None:
        """The earliest re-check or end of a hold (None: nothing to wait for)."""
        times = [at for name, at in self.paused.items() if name not in self.checking]
        times += [at for gate in self.gates.values() if (at := gate.ready_at(now)) is not None]
        return min(times) if times else None

    # -- a failed pass --------------------------------------------------------------------------
    def snapshot(self):
        return dict(self.paused), dict(self._described)

    def restore(self, saved) -> None:
        self.paused, self._described = dict(saved[0]), dict(saved[1])
