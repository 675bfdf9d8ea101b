"""What ``syncd once`` shows while it works, and its summary line.

At a terminal (stderr is a TTY) one line is rewritten in place twice a second: done
out of total, images per second, bytes per second and the time left; log lines go above it
(``TerminalLine`` is the log handler's stream: it clears the line, writes the log line, and
draws the line again). Elsewhere (cron, a pipe, a journal) a plain progress line is logged
every ``PLAIN_EVERY`` seconds instead, with the same figures as structured fields in JSON
logs. The rates are over the last ``WINDOW`` seconds, so the time left follows the current
pace rather than the start.

Counting: a *delivery* is one item to one target. Done = delivered + failed in this run;
total = done + what remains (deliveries pending or in flight to targets not paused, and
items still settling, once per target of their folder), so the total grows while the scan
and settling find more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from syncd.sizes import format_size as human_bytes

log = logging.getLogger("syncd.progress")

TTY_EVERY = 0.5  # seconds between redraws of the line at a terminal (as rclone -P)
PLAIN_EVERY = 10.0  # seconds between plain progress lines elsewhere
WINDOW = 10.0  # seconds the rates are measured over
CLEAR = "\r\x1b[K"  # back to the start of the line, erase it


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands (counts since it started)."""

    delivered: int
    failed: int
    remaining: int
    bytes: int

    @property
    def done(self) -> int:
        return self.delivered + self.failed

    @property
    def total(self) -> int:
        return self.done + self.remaining


def snapshot(daemon) -> Snapshot:
    """The figures of a running ``Daemon`` (its counters, two indexed counts)."""
    from syncd.delivery import ACKED, INVALID, PERMANENT

    attempts = daemon.attempts
    delivered = sum(n for (_, kind), n in attempts.items() if kind == ACKED)
    failed = sum(n for (_, kind), n in attempts.items() if kind in (PERMANENT, INVALID))
    failed += daemon.settler.invalid_deliveries
    held = daemon.held
    active = [name for name in daemon.targets if name not in held]
    per_folder = {folder.name: len([t for t in folder.targets if t in active]) for folder in daemon.folders}
    remaining = daemon.store.remaining(active, per_folder)
    return Snapshot(delivered, failed, remaining, sum(daemon.dispatcher.sent_bytes.values()))


def human_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TerminalLine:
    """A terminal stream with one status line kept at the bottom: ``show`` rewrites it in
    place; ``write`` (log lines, whole lines) goes above it. Thread-safe."""

    def __init__(self, stream):
        self.stream = stream
        self.line = ""
        self._lock = threading.RLock()

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80  # 0: a terminal without a size
        except (OSError, ValueError, AttributeError):
            return 80

    def show(self, line: str) -> None:
        with self._lock:
            self.line = line[: max(10, self._width() - 1)]  # never wrap: \r only returns within a row
            self.stream.write(CLEAR + self.line)
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            if self.line:
                self.stream.write(CLEAR)
                self.stream.flush()
            self.line = ""

    def write(self, text: str) -> int:
        with self._lock:
            if self.line:
                self.stream.write(CLEAR)
            self.stream.write(text)
            if self.line and text.endswith("\n"):
                self.stream.write(self.line)
            return len(text)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()


class Progress:
    """Progress of one ``syncd once`` (see the module docstring). ``line`` is the terminal
    line to draw on, or None for plain logged lines."""

    def __init__(self, line: TerminalLine | None, *, clock: Callable[[], float] = time.monotonic):
        self.line = line
        self.every = TTY_EVERY if line is not None else PLAIN_EVERY
        self.clock = clock
        self.started = clock()
        self.next_at = self.started if line is not None else self.started + self.every
        self.samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])  # (when, delivered, bytes)
        self.last: Snapshot | None = None

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def rates(self, snap: Snapshot, at: float) -> tuple[float, float]:
        """``(deliveries per second, bytes per second)`` from the oldest sample kept (about
        WINDOW seconds ago, or the start) to ``snap`` at ``at``."""
        first_at, delivered, sent = self.samples[0]
        span = at - first_at
        if span <= 0:
            return 0.0, 0.0
        return (snap.delivered - delivered) / span, (snap.bytes - sent) / span

    def _sample(self, snap: Snapshot, at: float) -> None:
        self.samples.append((at, snap.delivered, snap.bytes))
        while len(self.samples) > 2 and at - self.samples[1][0] >= WINDOW:
            self.samples.popleft()

    def text(self, snap: Snapshot, rate: float, byte_rate: float) -> str:
        """The progress line's text (no control characters)."""
        failed = f" ({snap.failed} failed)" if snap.failed else ""
        if snap.remaining == 0:
            eta = "0s"
        elif rate > 0:
            eta = human_duration(snap.remaining / rate)
        else:
            eta = "-"
        return (f"{snap.done}/{snap.total} done{failed}, {rate:.1f} images/s, {human_bytes(byte_rate)}/s, "
                f"ETA {eta}")

    def update(self, snap: Snapshot) -> None:
        """Show ``snap``: redraw the terminal line, or log a plain line."""
        at = self.clock()
        self.next_at = at + self.every
        self.last = snap
        rate, byte_rate = self.rates(snap, at)
        self._sample(snap, at)
        text = self.text(snap, rate, byte_rate)
        if self.line is not None:
            self.line.show(text)
        else:
            log.info("progress: %s", text, extra={"fields": {
                "done": snap.done, "total": snap.total, "delivered": snap.delivered, "failed": snap.failed,
                "images_per_second": round(rate, 2), "bytes_per_second": round(byte_rate),
                "eta_seconds": round(snap.remaining / rate) if rate > 0 else None}})

    def finish(self) -> float:
        """The run ended: clear the terminal line. Returns the seconds it took."""
        if self.line is not None:
            self.line.clear()
        return self.clock() - self.started


def summary(*, delivered_now: int, delivered: int, failed: int, skipped: int, sent_bytes: int,
            seconds: float) -> str:
    """The last line of ``syncd once``: what happened and how fast."""
    rate = delivered_now / seconds if seconds > 0 else 0.0
    byte_rate = sent_bytes / seconds if seconds > 0 else 0.0
    return (f"{delivered} delivered ({delivered_now} in this run), {failed} failed, {skipped} skipped; "
            f"{seconds:.1f}s, {rate:.1f} images/s, {human_bytes(byte_rate)}/s ({human_bytes(sent_bytes)} sent)")
