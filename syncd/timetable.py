"""Bandwidth limits that change with the time of day: rclone's ``--bwlimit`` form.

``bandwidth_limit`` (``[daemon]``, and per target) is a number of bytes per second (0 =
unlimited) or a string in rclone's form (https://rclone.org/docs/#bwlimit-bandwidth-spec):

- one rate: ``"1M"``, ``"512k"``, ``"100B"``, ``"off"``; ``K``, ``M``, ``G``, ``T`` are powers
  of 1024. rclone's ``UP:DOWN`` pair (``"10M:1M"``) is accepted; syncd only uploads, so the
  first one applies. One difference: a number without a unit is bytes per second, as a
  ``bandwidth_limit`` number always was in syncd (rclone reads it as KiB/s); the
  configuration warns about one inside a string (``Timetable.bare``), so that a timetable
  copied from rclone is not a thousand times slower than meant.
- a timetable: entries ``[WEEKDAY-]HH:MM,RATE`` separated by spaces or semicolons, e.g.
  ``"07:00,1M 23:30,off"`` or ``"Mon-08:00,512k Fri-18:00,10M Sun-20:00,off"``. ``WEEKDAY`` is
  a day's English name or its first three letters (any case); an entry without one applies
  to every day. ``HH:MM`` is 00:00 to 23:59, two digits each.

The rate at a moment (local time) is the one of the latest entry at or before it in the week;
before the week's first entry, the week's last one still holds (it wraps around). ``rclone``
returns the last entry *as written* there instead (a quirk for tables not written in
order); syncd takes the latest in time, which is what rclone's documentation describes. Of
two entries at the same time, the one written last applies.

``Timetable.rate_at(now)`` and ``next_change(now)`` take the time as a parameter (seconds
since the epoch), so tests and the daemon drive it without patching clocks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from syncd.sizes import parse_size

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")  # tm_wday order
WEEK = 7 * 24 * 60  # minutes
_ENTRY = re.compile(r"^(?:([A-Za-z]+)-)?([^,]*),(.*)$")


@dataclass(frozen=True)
class Slot:
    """From ``minute`` of the week (Monday 00:00 = 0) on, ``rate`` bytes per second (None: off)."""

    minute: int
    rate: float | None


class Timetable:
    """A bandwidth limit, constant or by the time of the week (see the module docstring)."""

    def __init__(self, slots: list[Slot], text: str, *, bare: bool = False):
        self.slots = sorted(slots, key=lambda slot: slot.minute)  # stable: the last written wins a tie
        self.text = text
        self.bare = bare  # a rate in the string has no unit (bytes/s here, KiB/s in rclone)

    @property
    def constant(self) -> bool:
        return len({slot.rate for slot in self.slots}) <= 1

    def rate_at(self, now: float) -> float | None:
        """Bytes per second at ``now`` (None: unlimited)."""
        if not self.slots:
            return None
        minute = _minute_of_week(now)
        current = self.slots[-1]  # wraps around from the end of the week
        for slot in self.slots:
            if slot.minute <= minute:
                current = slot
            else:
                break
        return current.rate

    def next_change(self, now: float) -> float | None:
        """When (seconds since the epoch) the rate next changes after ``now``; None: never."""
        if self.constant:
            return None
        rate = self.rate_at(now)
        minute = _minute_of_week(now)
        start_of_minute = now - (now % 60)
        for ahead in range(1, WEEK + 1):  # minutes; a week at most (a few thousand steps, rarely)
            at = (minute + ahead) % WEEK
            if any(slot.minute == at for slot in self.slots):
                when = start_of_minute + ahead * 60
                if self.rate_at(when) != rate:
                    return when
        return None  # pragma: no cover - constant is handled above

    def describe(self, now: float) -> str:
        """``"1.0 MiB/s"`` or ``"unlimited"`` now, with the timetable when there is one."""
        from syncd.sizes import format_size

        rate = self.rate_at(now)
        shown = "unlimited" if rate is None else f"{format_size(rate)}/s"
        return shown if self.constant else f"{shown} (timetable {self.text!r})"


def _minute_of_week(now: float) -> int:
    local = time.localtime(now)
    return local.tm_wday * 24 * 60 + local.tm_hour * 60 + local.tm_min


def _rate(text: str) -> tuple[float | None, bool]:
    """One rclone rate (``"1M"``, ``"off"``, ``"10M:1M"``): ``(bytes per second or None for
    off, whether it had no unit)``."""
    upload = text.split(":", 1)[0].strip()
    if upload.lower() == "off":
        return None, False
    if not upload:
        raise ValueError(f"{text!r}: a rate is missing")
    try:
        value = parse_size(upload)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate: write e.g. 512K, 1M, 1.5M, 100B or off "
                         "(K, M, G: powers of 1024)") from None
    if ":" in text:  # the download half must be valid too, as rclone wants
        _rate(text.split(":", 1)[1])
    bare = upload[-1].isdigit() or upload[-1] == "."
    return (float(value) or None), bare and value > 0  # 0 = no limit


def _time(text: str, entry: str) -> int:
    match = re.fullmatch(r"(\d\d):(\d\d)", text)
    if match is None:
        raise ValueError(f"{entry!r}: the time must be HH:MM with two digits each, e.g. 07:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{entry!r}: {text} is not a time of day (00:00 to 23:59)")
    return hours * 60 + minutes


def _day(text: str, entry: str) -> int:
    name = text.lower()
    for index, day in enumerate(DAYS):
        if name in (day, day[:3]):
            return index
    raise ValueError(f"{entry!r}: {text!r} is not a weekday (Mon, Tue, ... or Monday, Tuesday, ...)")


def parse_bandwidth(value: str | int | float) -> Timetable:
    """The ``Timetable`` of a ``bandwidth_limit`` value; ``ValueError`` with a one-line reason.
    A number is bytes per second (0 = unlimited); a string is rclone's form."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a bandwidth")
    if isinstance(value, (int, float)):
        rate = float(parse_size(value))
        return Timetable([Slot(0, rate or None)], str(value))
    text = str(value).strip()
    if not text:
        raise ValueError('empty: write a rate ("1M", "off") or a timetable ("07:00,1M 23:30,off")')
    entries = [entry for entry in re.split(r"[\s;]+", text) if entry]
    if len(entries) == 1 and "," not in entries[0]:
        rate, bare = _rate(entries[0])
        return Timetable([Slot(0, rate)], text, bare=bare and ":" in entries[0])  # "1000" alone: bytes, no doubt
    slots, any_bare = [], False
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{entry!r}: a timetable entry is [WEEKDAY-]HH:MM,RATE, e.g. 07:00,1M or Mon-23:30,off")
        day, at, rate = match.groups()
        minute = _time(at, entry)
        bandwidth, bare = _rate(rate)
        any_bare = any_bare or bare
        days = [_day(day, entry)] if day else range(7)
        slots += [Slot(d * 24 * 60 + minute, bandwidth) for d in days]
    return Timetable(slots, text, bare=any_bare)


class BandwidthPlan:
    """The bandwidth limits of a configuration: over all targets, and each target's own.
    ``rates_at(now)`` says what applies at ``now``; ``next_change(now)`` when that changes."""

    def __init__(self, overall: str | float, per_target: dict[str, str | float]):
        self.overall = parse_bandwidth(overall)
        self.targets = {name: parse_bandwidth(value) for name, value in per_target.items()}

    def rates_at(self, now: float) -> tuple[float | None, dict[str, float | None]]:
        return self.overall.rate_at(now), {name: table.rate_at(now) for name, table in self.targets.items()}

    def next_change(self, now: float) -> float | None:
        times = [at for table in (self.overall, *self.targets.values()) if (at := table.next_change(now)) is not None]
        return min(times) if times else None


def _valid_bandwidth(value: float | str) -> float | str:
    parse_bandwidth(value)  # one clear line for a mistake, at load
    return value


# A ``bandwidth_limit`` setting ([daemon] and each target): a number or rclone's form, checked at load.
Bandwidth = Annotated[float | str, AfterValidator(_valid_bandwidth)]
