"""Target health: checks, pause and resume, and how much a target may be sent now.

- **Checks**: ``Target.check()`` runs in a short-lived thread per target at start-up and
  while the target is paused (every ``target_recheck_seconds``), so a slow platform never
  stalls the coordinator; its result comes back through the coordinator's inbox.
- **Pause**: a ``FatalTargetError`` (from a check or an attempt) pauses the target
  (journaled, shown by ``status``); its deliveries stay due and go on when a check passes.
- **Rate** (the seam for the adaptive controller of syncd.limits): one ``RateGate`` per
  target answers "how many batches may be out now" (``slots``) and hears about throttled
  answers (429, 503 with Retry-After: ``throttled``) and served ones (``served``). The
  gate here holds the whole target until the server's Retry-After (never sooner) — the item
  itself is not backed off — and otherwise allows twice ``workers`` batches out, so a
  worker that finishes finds its next batch queued. ``describe()`` is what status and
  metrics show (the journal's ``targets.rate``/``rate_reason``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from syncd import limits
from syncd.errors import SyncdError, TransientError
from syncd.journal.store import Store
from syncd.targets import Target

log = logging.getLogger("syncd.health")

FIRST_HOLD = 1.0  # seconds a throttled target is held when the server did not say how long
MAX_HOLD = 3600.0


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
        self.reason = f"configured limit {rate_limit:g}/s" if rate_limit else "unlimited"

    def slots(self, now: float) -> int:
        """Batches that may be out at the same time now (0 while the target is held)."""
        if self.hold_until and not 0 < self.hold_until - now <= MAX_HOLD:
            self.hold_until = 0.0  # over (or set under a clock since set back)
        return 0 if self.hold_until else self.max_slots

    def throttled(self, now: float, retry_after: float | None) -> None:
        """The platform refused a request as overloaded: hold the whole target."""
        self.throttles += 1
        hold = retry_after if retry_after is not None else min(MAX_HOLD, FIRST_HOLD * 2 ** (self.throttles - 1))
        self.hold_until = max(self.hold_until, now + min(hold, MAX_HOLD))
        until = time.strftime("%H:%M:%S", time.localtime(self.hold_until))
        self.reason = f"held until {until} after a throttled request"

    def served(self, now: float) -> None:
        """A request was answered (not throttled)."""
        if self.throttles and now >= self.hold_until:
            self.throttles = 0
            self.reason = f"configured limit {self.rate_limit:g}/s" if self.rate_limit else "unlimited"

    def ready_at(self) -> float | None:
        """When a held target may send again (None: not held)."""
        return self.hold_until or None

    def describe(self) -> tuple[float | None, str]:
        """``(requests per second or None for unlimited, why)``, for status and metrics."""
        return (self.rate_limit or None), self.reason


class Health:
    """Every target's checks, pause state and rate gate (see the module docstring)."""

    def __init__(self, targets: dict[str, Target], *, recheck_seconds: float, put: Callable[[object], None]):
        self.targets = targets
        self.recheck_seconds = recheck_seconds
        self.put = put  # the coordinator's inbox
        self.store: Store | None = None  # set by the daemon once the journal is open
        self.paused: dict[str, float] = {}  # target -> when to check it again
        self.checking: set[str] = set()
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
            if not 0 < recheck_in <= self.recheck_seconds and name not in self.checking:
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
            self.paused.pop(name, None)
            self.store.set_paused(name, None, now)
            return
        if isinstance(error, TransientError):
            log.warning("target %s is not reachable yet: %s", name, error)
            if name in self.paused:
                self.paused[name] = now + self.recheck_seconds
            return
        self.pause(name, str(error), now)

    def pause(self, name: str, reason: str, now: float) -> None:
        """Pause ``name`` (again: its next check is ``target_recheck_seconds`` away)."""
        assert self.store is not None
        log.error("target %s paused: %s (re-checked every %.0fs)", name, reason, self.recheck_seconds)
        self.paused[name] = now + self.recheck_seconds
        self.store.set_paused(name, reason, now)

    # -- rate -----------------------------------------------------------------------------------
    def slots(self, name: str, now: float) -> int:
        """Batches ``name`` may have out now (0 when paused or held)."""
        return 0 if name in self.paused else self.gates[name].slots(now)

    def record_rates(self) -> None:
        """Journal each target's rate and its reason when they changed (status, metrics)."""
        assert self.store is not None
        for name, gate in self.gates.items():
            described = gate.describe()
            if self._described.get(name) != described:
                self.store.set_rate(name, *described)
                self._described[name] = described

    def next_deadline(self) -> float | None:
        """The earliest re-check or end of a hold (None: nothing to wait for)."""
        times = [at for name, at in self.paused.items() if name not in self.checking]
        times += [at for gate in self.gates.values() if (at := gate.ready_at()) is not None]
        return min(times) if times else None

    # -- a failed pass --------------------------------------------------------------------------
    def snapshot(self):
        return dict(self.paused), dict(self._described)

    def restore(self, saved) -> None:
        self.paused, self._described = dict(saved[0]), dict(saved[1])
