"""Bandwidth in rclone's --bwlimit form: one rate or a timetable, the time as a parameter."""

from __future__ import annotations

import time

import pytest

from syncd.timetable import parse_bandwidth

KiB, MiB = 1024, 1 << 20


def at(day: int, hhmm: str, second: int = 0) -> float:
    """Local time on a day of the week 2026-11-23 (a Monday) + ``day`` at ``hhmm``."""
    hours, minutes = map(int, hhmm.split(":"))
    return time.mktime((2026, 11, 23 + day, hours, minutes, second, 0, 0, -1))


@pytest.mark.parametrize("value, rate", [
    (0, None), (1000, 1000.0), (2.5e6, 2.5e6), ("off", None), ("OFF", None), ("0", None), ("1M", float(MiB)),
    ("512k", 512.0 * KiB), ("512", 512.0), ("100B", 100.0), ("1.5M", 1.5 * MiB), ("10M:1M", 10.0 * MiB),
    ("10M:off", 10.0 * MiB), ("2MiB", 2.0 * MiB), (" 1G ", float(1 << 30)),
])
def test_one_rate(value, rate):
    table = parse_bandwidth(value)
    assert not table.bare  # one number alone is bytes per second without doubt
    assert table.constant and table.rate_at(at(2, "12:00")) == rate and table.next_change(at(2, "12:00")) is None


def test_a_daily_timetable_changes_at_the_times_given():
    table = parse_bandwidth("07:00,1M 23:30,off")
    assert table.rate_at(at(0, "06:59", 59)) is None  # before 07:00: Sunday's 23:30 still holds
    assert table.rate_at(at(0, "07:00")) == MiB
    assert table.rate_at(at(3, "23:29", 59)) == MiB
    assert table.rate_at(at(3, "23:30")) is None
    assert table.next_change(at(0, "06:00")) == at(0, "07:00")
    assert table.next_change(at(0, "07:00")) == at(0, "23:30")
    assert table.next_change(at(6, "23:45")) == at(7, "07:00")  # wraps into next week's Monday
    assert table.describe(at(0, "08:00")) == "1.0 MiB/s (timetable '07:00,1M 23:30,off')"
    assert table.describe(at(0, "03:00")).startswith("unlimited (timetable")


def test_rclones_weekday_example():
    table = parse_bandwidth("Mon-00:00,512K Fri-23:59,10M Sat-10:00,1M Sun-20:00,off")
    assert not table.bare
    assert table.rate_at(at(0, "00:00")) == 512 * KiB
    assert table.rate_at(at(4, "23:58")) == 512 * KiB
    assert table.rate_at(at(4, "23:59")) == 10 * MiB
    assert table.rate_at(at(5, "10:00")) == MiB
    assert table.rate_at(at(6, "10:00")) == MiB  # Sunday morning: Saturday's rate (rclone's docs)
    assert table.rate_at(at(6, "20:00")) is None


def test_entries_without_a_weekday_apply_every_day_and_semicolons_separate():
    table = parse_bandwidth("Mon-00:00,512;12:00,1M;Sun-20:00,off")
    assert table.rate_at(at(0, "11:00")) == 512  # no unit: bytes per second (rclone: KiB), and said so
    assert table.bare
    for day in range(7):
        assert table.rate_at(at(day, "12:30")) == MiB
    assert table.rate_at(at(6, "21:00")) is None
    assert table.rate_at(at(2, "03:00")) == MiB  # Tuesday night: Monday's 12:00 holds
    assert parse_bandwidth("monday-08:00,1M SUNDAY-08:00,2M").rate_at(at(6, "09:00")) == 2 * MiB


@pytest.mark.parametrize("value, message", [
    ("", "empty"), ("fast", "'fast' is not a rate"), ("1X", "'1X' is not a rate"), ("-1M", "is not a rate"),
    ("25:00,1M", "25:00 is not a time of day"), ("7:00,1M", "the time must be HH:MM"),
    ("07:60,1M", "07:60 is not a time of day"), ("Mo-07:00,1M", "'Mo' is not a weekday"),
    ("07:00,1M 08:00", "a timetable entry is [WEEKDAY-]HH:MM,RATE"), ("07:00,", "a rate is missing"),
    ("07:00,1M:fast", "'fast' is not a rate"), ("07:00;1M", "a timetable entry is"), (True, "not a bandwidth"),
])
def test_mistakes_are_one_clear_line(value, message):
    with pytest.raises(ValueError, match=None) as raised:
        parse_bandwidth(value)
    assert message in str(raised.value) and "\n" not in str(raised.value)
