"""`syncd once` shows its progress: one line rewritten in place at a terminal (a real pty),
plain lines elsewhere, a summary line at the end; JSON delivery lines carry their fields."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

from syncd.errors import PermanentError, TransientError
from syncd.logconfig import JsonFormatter
from syncd.progress import CLEAR, Progress, Snapshot, TerminalLine, human_bytes, human_duration, summary
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import _env, run_once, write_config
from tests.helpers import image_bytes, write_item


class Clock:
    def __init__(self, at: float = 1000.0):
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_rates_and_time_left_follow_the_last_seconds():
    clock = Clock()
    progress = Progress(None, clock=clock)
    clock.at += 10
    progress.update(Snapshot(delivered=100, failed=0, remaining=900, bytes=100 << 20))
    rate, byte_rate = progress.rates(Snapshot(100, 0, 900, 100 << 20), clock.at)
    assert round(rate) == 10 and round(byte_rate) == 10 << 20
    # The pace drops to 1/s: after the window the rate and the time left follow it, not the start.
    for _ in range(20):
        clock.at += 1
        last = Snapshot(progress.last.delivered + 1, 0, progress.last.remaining - 1, progress.last.bytes)
        progress.update(last)
    rate, _ = progress.rates(last, clock.at)
    assert 0.9 <= rate <= 1.1
    text = progress.text(last, rate, 0)
    assert text.startswith("120/1000 done, 1.0 images/s, 0 B/s, ETA ")
    assert "ETA 14m" in text  # 880 left at 1/s
    assert progress.text(Snapshot(5, 1, 0, 0), 0.0, 0.0) == "6/6 done (1 failed), 0.0 images/s, 0 B/s, ETA 0s"
    assert progress.text(Snapshot(0, 0, 3, 0), 0.0, 0.0).endswith("ETA -")


def test_units():
    assert [human_bytes(n) for n in (12, 2048, 5 << 20, 3 << 30)] == ["12 B", "2.0 KiB", "5.0 MiB", "3.0 GiB"]
    assert [human_duration(s) for s in (4.4, 125, 7450)] == ["4s", "2m05s", "2h04m"]
    assert summary(delivered_now=10, delivered=12, failed=1, skipped=2, sent_bytes=10 << 20, seconds=4.0) == (
        "12 delivered (10 in this run), 1 failed, 2 skipped; 4.0s, 2.5 images/s, 2.5 MiB/s (10.0 MiB sent)")


def test_plain_progress_lines_are_logged_every_ten_seconds_with_fields(caplog):
    clock = Clock()
    progress = Progress(None, clock=clock)
    assert not progress.due()
    clock.at += 10
    assert progress.due()
    with caplog.at_level(logging.INFO, logger="syncd.progress"):
        progress.update(Snapshot(delivered=40, failed=2, remaining=58, bytes=4000))
    record = caplog.records[-1]
    assert record.getMessage() == "progress: 42/100 done (2 failed), 4.0 images/s, 400 B/s, ETA 14s"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["done"] == 42 and entry["total"] == 100 and entry["eta_seconds"] == 14
    assert not progress.due()


def test_log_lines_go_above_the_terminal_line():
    out = io.StringIO()
    line = TerminalLine(out)
    line.show("1/3 done")
    line.write("12:00:00 INFO syncd: something\n")
    line.show("2/3 done")
    line.clear()
    assert out.getvalue() == (CLEAR + "1/3 done" + CLEAR + "12:00:00 INFO syncd: something\n1/3 done"
                              + CLEAR + "2/3 done" + CLEAR)


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: \\r returns to the start, ESC[K erases to the end."""
    lines, current, col = [], [], 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del current[col:]
            i += 3
            continue
        char = raw[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("".join(current))
            current, col = [], 0
        else:
            if col < len(current):
                current[col] = char
            else:
                current.append(char)
            col += 1
        i += 1
    if current:
        lines.append("".join(current))
    return lines


def test_once_at_a_terminal_draws_one_updating_line_and_logs_above_it(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    inbox = tmp_path / "inbox"
    for i in range(150):
        write_item(inbox / f"cam{i % 3}", f"f{i:03d}", metadata={"i": i}, seed=i)
    (inbox / "bad.png").write_bytes(b"not an image")
    os.utime(inbox / "bad.png", (time.time() - 3600,) * 2)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "once", "--config", str(config)], env=_env(None),
                            stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 1, stdout  # the bad item failed
    raw = b"".join(chunks).decode()
    drawn = re.findall(r"\x1b\[K(\d+)/(\d+) done[^\r\n]*?, [\d.]+ images/s, [\d.]+ (?:B|KiB|MiB)/s, ETA \S+", raw)
    assert len(drawn) >= 2, raw[-2000:]
    assert drawn[-1] == ("151", "151")  # the last figures: every delivery done (one failed)
    assert "\n" not in "".join(re.findall(r"\x1b\[K\d+/\d+ done[^\x1b]*", raw)).rstrip("\r")  # drawn in place
    shown = screen(raw)
    assert shown, raw[-2000:]
    # The terminal ends with the log lines only: the progress line was cleared, never mixed into one.
    for row in shown:
        assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) syncd", row), row
    assert sum("delivered to local" in row for row in shown) == 150
    assert re.search(r"^150 delivered \(150 in this run\), 1 failed, 0 skipped; [\d.]+s, [\d.]+ images/s, "
                     r"[\d.]+ (KiB|MiB)/s \([\d.]+ (KiB|MiB) sent\)$", stdout.splitlines()[-1]), stdout
    assert "FAILED bad -> local" in stdout


def test_once_elsewhere_writes_no_control_characters(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    for i in range(5):
        write_item(tmp_path / "inbox", f"f{i}", seed=i)
    result = run_once(config)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert result.stdout.splitlines()[-1].startswith("5 delivered (5 in this run), 0 failed, 0 skipped; ")
    again = run_once(config, args=("--no-progress",))
    assert again.stdout.splitlines()[-1].startswith("5 delivered (0 in this run), 0 failed, 0 skipped; ")


def test_json_delivery_lines_carry_their_fields(make_daemon, inbox, caplog):
    target = ScriptedTarget("fake")
    target.script = {"flaky": [TransientError("HTTP 503")], "refused": [PermanentError("HTTP 422: bad")]}
    write_item(inbox, "flaky", seed=1)
    write_item(inbox, "refused", seed=2)
    daemon = make_daemon({"fake": target}, daemon={"retry_base_seconds": 0.01, "retry_max_seconds": 0.02})
    with caplog.at_level(logging.DEBUG, logger="syncd"):
        drive(daemon)
    size = len(image_bytes(32, 24, seed=1))
    entries = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "fields", None)]
    by_outcome = {(e["key"], e["outcome"]): e for e in entries}
    retried = by_outcome[("flaky", "transient")]
    assert retried["message"].startswith("retrying flaky on fake in ")
    assert retried["attempt"] == 1 and retried["bytes"] == size and retried["duration_ms"] >= 0
    acked = by_outcome[("flaky", "acked")]
    assert acked["message"] == "flaky delivered to fake as id-flaky"
    assert acked["attempt"] == 2 and acked["target"] == "fake" and acked["bytes"] == size
    assert acked["level"] == "info" and acked["logger"] == "syncd.dispatch"
    failed = by_outcome[("refused", "permanent")]
    assert failed["message"] == "failed refused on fake: HTTP 422: bad" and failed["attempt"] == 1
    for entry in entries:
        if entry["outcome"] in ("acked", "transient", "permanent"):
            assert {"key", "target", "outcome", "attempt", "duration_ms", "bytes"} <= entry.keys()
