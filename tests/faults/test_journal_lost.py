"""The journal deleted, replaced or truncated while the daemon runs (issue 10, item 18).

Before, nothing noticed: the daemon went on writing into a deleted file (or over a truncated
one), and the next start made a new, empty journal and delivered everything again;
``syncd status`` on a truncated journal waited 30 s for a lock and then tried to migrate it.
Now the daemon checks the file before each pass and stops (exit 4) with what happened and
what to do, keeping what can be kept; a start, ``status`` and ``retry`` refuse a state
directory whose journal was lost (exit 4), at once.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import write_item

LOCAL = {"local": {"platform": "local", "path": "synced", "log_deliveries": True}}


def delivered(tmp_path: Path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def acked(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return sorted(key for (key,) in conn.execute(
            "SELECT i.key FROM items i JOIN deliveries d ON d.item_id=i.id WHERE d.state='acked'"))
    finally:
        conn.close()


def start_and_deliver(tmp_path: Path, *stems: str) -> tuple[Path, DaemonProcess]:
    config = write_config(tmp_path, LOCAL)
    daemon = DaemonProcess(config).start()
    for stem in stems:
        write_item(tmp_path / "inbox", stem, metadata={})
    wait_for(lambda: sorted(delivered(tmp_path)) == sorted(stems), timeout=30, message="first deliveries")
    return config, daemon


def stops_with_4(daemon: DaemonProcess, tmp_path: Path) -> str:
    """Write an item (a pass looks at the journal file), wait for the daemon to stop: exit 4."""
    write_item(tmp_path / "inbox", "after", metadata={})
    try:
        code = daemon.proc.wait(timeout=30)
    finally:
        if daemon.running:
            daemon.proc.kill()
    assert code == 4, daemon.logs()
    logs = daemon.logs()
    assert "Traceback" not in logs
    assert "after" not in delivered(tmp_path)
    return logs


def refused_at_start(config: Path, tmp_path: Path, *, expect: str) -> None:
    for command in (("run",), ("once",), ("status",), ("retry", "--failed")):
        started = time.monotonic()
        result = run_cli(*command, "--config", str(config), timeout=60)
        assert result.returncode == 4, (command, result.stdout, result.stderr)
        assert expect in result.stderr, (command, result.stderr)
        assert "move" in result.stderr and "restore" in result.stderr.lower()  # what to do next
        assert "Traceback" not in result.stderr
        assert time.monotonic() - started < 20, command  # never the old 30 s wait
    assert "after" not in delivered(tmp_path)


def test_journal_deleted_while_running_stops_and_is_rescued(tmp_path):
    config, daemon = start_and_deliver(tmp_path, "a")
    db = tmp_path / "state" / "syncd.db"
    db.unlink()
    logs = stops_with_4(daemon, tmp_path)
    assert f"the journal {db} was deleted while syncd was running" in logs
    rescued = list((tmp_path / "state").glob("syncd.db.rescued-*"))
    assert len(rescued) == 1 and f"saved as {rescued[0]}" in logs
    assert acked(rescued[0]) == ["a"]
    refused_at_start(config, tmp_path, expect=f"the journal {db} is missing")
    assert delivered(tmp_path) == ["a"]  # nothing delivered again
    check = run_cli("check", "--config", str(config), timeout=60)
    assert check.returncode == 1 and f"journal: LOST: the journal {db} is missing" in check.stdout

    # What the message says: move the rescued copy back, and it goes on from there.
    os.replace(rescued[0], db)
    again = DaemonProcess(config).start()
    try:
        wait_for(lambda: "after" in delivered(tmp_path), timeout=30, message="the item written meanwhile")
        assert again.stop() == 0
    finally:
        if again.running:
            again.proc.kill()
    assert delivered(tmp_path) == ["a", "after"]


def test_state_directory_removed_while_running(tmp_path):
    """rm -rf of the whole state directory: the journal is rescued into a new one, and the
    next start does not begin afresh behind the operator's back."""
    config, daemon = start_and_deliver(tmp_path, "a")
    state = tmp_path / "state"
    shutil.rmtree(state)
    logs = stops_with_4(daemon, tmp_path)
    rescued = list(state.glob("syncd.db.rescued-*"))
    assert len(rescued) == 1 and f"saved as {rescued[0]}" in logs
    refused_at_start(config, tmp_path, expect=f"syncd saved the last state it knew as {rescued[0]}")
    os.replace(rescued[0], state / "syncd.db")
    assert run_cli("once", "--config", str(config), timeout=120).returncode == 0
    assert delivered(tmp_path) == ["a", "after"]


def test_journal_replaced_while_running_stops(tmp_path):
    config, daemon = start_and_deliver(tmp_path, "a")
    db = tmp_path / "state" / "syncd.db"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    os.replace(other, db)
    logs = stops_with_4(daemon, tmp_path)
    assert f"the journal {db} was replaced by another file while syncd was running" in logs
    assert len(list((tmp_path / "state").glob("syncd.db.rescued-*"))) == 1


def test_journal_truncated_while_running_stops_and_status_does_not_hang(tmp_path):
    config, daemon = start_and_deliver(tmp_path, "a", "b")
    db = tmp_path / "state" / "syncd.db"
    # What the daemon wrote is in the file itself (a checkpoint), as after any busy hour.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.truncate(db, 0)
    started = time.monotonic()
    status = run_cli("status", "--config", str(config), timeout=60)
    assert time.monotonic() - started < 20
    assert status.returncode == 4 and "Traceback" not in status.stderr, status.stderr
    logs = stops_with_4(daemon, tmp_path)
    assert f"the journal {db} was truncated" in logs
    assert len(list((tmp_path / "state").glob("syncd.db.truncated-*"))) == 1
    refused_at_start(config, tmp_path, expect=f"the journal {db} is missing")
    assert sorted(delivered(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize("size", [0, 4096])
def test_a_truncated_journal_is_refused_and_left_alone(tmp_path, size):
    config, daemon = start_and_deliver(tmp_path, "a")
    assert daemon.stop() == 0
    db = tmp_path / "state" / "syncd.db"
    before = db.stat().st_size
    assert before > 4096
    os.truncate(db, size)
    write_item(tmp_path / "inbox", "after", metadata={})
    what = "is empty" if size == 0 else "is damaged or not a syncd journal"
    refused_at_start(config, tmp_path, expect=f"the journal {db} {what}")
    assert db.stat().st_size == size  # no migration wrote a new journal into it
    assert delivered(tmp_path) == ["a"]


def test_a_damaged_journal_is_an_error_not_a_traceback(tmp_path):
    config, daemon = start_and_deliver(tmp_path, "a")
    assert daemon.stop() == 0
    db = tmp_path / "state" / "syncd.db"
    data = bytearray(db.read_bytes())
    data[4096:] = bytes(len(data) - 4096)  # every page but the first zeroed: the header is whole
    db.write_bytes(bytes(data))
    for command in (("status",), ("run",), ("once",)):
        result = run_cli(*command, "--config", str(config), timeout=60)
        assert result.returncode == 4, (command, result.stdout, result.stderr)
        assert f"the journal {db} is damaged or not a syncd journal" in result.stderr
        assert "Traceback" not in result.stderr
    assert delivered(tmp_path) == ["a"]
