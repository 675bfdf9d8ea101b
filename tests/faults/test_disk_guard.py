"""The disk guard on real, small filesystems (tmpfs, mounted here as in tests/faults/test_disk.py).

- The state directory below ``min_free_space``: no new work before SQLite ever fails, the
  reason in the log, ``status`` and the metrics; it resumes by itself when space returns.
- Retention (``retention = "acknowledged"``): below ``min_free_space`` on the watched
  filesystem, the oldest items every target acknowledged at their current version are
  removed until there is room, never an item a target has not, a changed one, or a new one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from syncd import control, status
from syncd.diskguard import free_bytes
from syncd.errors import PermanentError
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.faults.test_disk import integrity, small_filesystem
from tests.helpers import age_files, image_bytes, write_item

MiB = 1 << 20


def leave_free(directory: Path, keep: int) -> Path:
    """A filler file that leaves about ``keep`` bytes free on ``directory``'s filesystem."""
    filler = directory / "filler"
    free = free_bytes(directory)
    assert free is not None and free > keep
    with open(filler, "wb") as out:
        left = free - keep
        while left > 0:
            out.write(b"\0" * min(left, MiB))
            left -= MiB
    assert abs(free_bytes(directory) - keep) < 64 << 10
    return filler


@pytest.fixture
def state_tmpfs(tmp_path):
    with small_filesystem(tmp_path / "state") as path:
        yield path


@pytest.fixture
def inbox_tmpfs(tmp_path):
    with small_filesystem(tmp_path / "inbox") as path:
        yield path


def test_the_state_dir_below_min_free_space_holds_new_work_and_resumes(state_tmpfs, make_daemon, inbox, caplog):
    caplog.set_level(logging.INFO, logger="syncd")
    target = ScriptedTarget("fake")
    write_item(inbox, "before")
    daemon = make_daemon({"fake": target}, daemon={"min_free_space": "4MB"})
    clock = drive(daemon)
    assert [key for key, _, _ in target.sent] == ["before"]
    filler = leave_free(state_tmpfs, 2 * MiB)
    for i in range(3):
        write_item(inbox, f"during{i}", seed=i)
    daemon.scan(clock)  # observed (a few rows: the guard is a reserve, not a wall)
    for step in range(1, 5):
        daemon.tick(clock + 2 * step)
        daemon._collect(clock + 2 * step, block=0.05)
    assert daemon.guard.low and "below min_free_space 4.0 MiB" in daemon.guard.low
    assert daemon.local_error is None  # SQLite never failed
    assert [key for key, _, _ in target.sent] == ["before"]
    assert "new deliveries paused before the journal runs out of space" in caplog.text
    data = status.collect(daemon.config)
    assert data["disk"]["low"] is True and data["disk"]["min_free_bytes"] == 4 * MiB
    assert data["disk"]["state_free_bytes"] < 4 * MiB
    assert status.render(data).startswith(f"DISK LOW: the filesystem of the state directory {state_tmpfs} has ")
    assert "syncd_disk_low 1" in daemon.metrics_text(clock)
    assert integrity(state_tmpfs / "syncd.db") == "ok"

    filler.unlink()
    drive(daemon, now=clock)
    assert sorted(key for key, _, _ in target.sent) == ["before", "during0", "during1", "during2"]
    assert daemon.guard.low is None and "free again: resuming" in caplog.text
    assert status.collect(daemon.config)["disk"]["low"] is False


def test_retention_removes_only_the_oldest_items_every_target_acknowledged(inbox_tmpfs, make_daemon):
    keeper, refuser = ScriptedTarget("a"), ScriptedTarget("b")
    refuser.script = {"f0": [PermanentError("HTTP 422: refused")]}
    big = {}
    for i in range(6):  # about 1 MiB each (noise does not compress), oldest first
        image = write_item(inbox_tmpfs, f"f{i}", metadata={"i": i}, seed=i)
        image.write_bytes(image_bytes(600, 600, seed=i))
        age_files(image)
        big[f"f{i}"] = image.stat().st_size + image.with_suffix(".json").stat().st_size
    daemon = make_daemon({"a": keeper, "b": refuser}, folder={"retention": "acknowledged"},
                         daemon={"min_free_space": "3MB"})
    for i in range(6):  # first seen in this order (the scan sees them in one pass)
        daemon.store.conn.execute("UPDATE items SET first_seen=? WHERE key=?", (1000.0 + i, f"f{i}"))
    clock = drive(daemon)
    assert sorted(keeper.items) == [f"f{i}" for i in range(6)] and "f0" not in refuser.items
    # b is paused and a new item is delivered to a only; then f1 changes after it was
    # acknowledged everywhere (the daemon has not seen the change yet).
    control.set_paused(daemon.config, "b", True)
    daemon.control.set()
    write_item(inbox_tmpfs, "new", seed=99)
    daemon.scan(clock)
    clock = drive(daemon, now=clock)
    assert "new" in keeper.items and "new" not in refuser.items
    (inbox_tmpfs / "f1.json").write_text(json.dumps({"metadata": {"i": 1, "edited": True}}))
    age_files(inbox_tmpfs / "f1.json")
    filler = leave_free(inbox_tmpfs, int(1.5 * MiB))

    daemon.tick(clock + 10)
    gone = {key for key in big if not (inbox_tmpfs / f"{key}.png").exists()}
    assert gone == {"f2", "f3"}  # the oldest two that a AND b acked unchanged, until 3 MiB were free
    assert not (inbox_tmpfs / "f2.json").exists() and not (inbox_tmpfs / "f3.json").exists()
    for kept in ("f0", "f1", "f4", "f5", "new"):
        assert (inbox_tmpfs / f"{kept}.png").exists(), kept
    assert free_bytes(inbox_tmpfs) >= 3 * MiB
    states = {r["key"]: r["state"] for r in daemon.store.query("SELECT key, state FROM items")}
    assert states["f2"] == states["f3"] == "deleted" and states["f4"] == "ready"
    items, removed_bytes, _, last_key = daemon.store.retention_totals()[str(inbox_tmpfs)]
    assert (items, removed_bytes, last_key) == (2, big["f2"] + big["f3"], "f3")

    shown = status.collect(daemon.config)["folders"][0]
    assert shown["retention"]["removed_items"] == 2 and shown["retention"]["removed_bytes"] == removed_bytes
    assert shown["free_bytes"] >= 3 * MiB
    assert "retention (acknowledged): removed 2 items (" in status.render(status.collect(daemon.config))
    text = daemon.metrics_text(clock)
    assert f'syncd_retention_removed_items_total{{folder="{inbox_tmpfs}"}} 2' in text
    assert f'syncd_retention_removed_bytes_total{{folder="{inbox_tmpfs}"}} {removed_bytes}' in text

    # Lower still: nothing else may go (f0 failed on b, f1 changed, new not on b; f4, f5 go).
    filler.unlink()
    leave_free(inbox_tmpfs, 256 << 10)
    daemon.tick(clock + 20)
    left = sorted(p.stem for p in inbox_tmpfs.glob("*.png"))
    assert left == ["f0", "f1", "new"]
    sent_before = len(keeper.sent)
    daemon.scan(clock + 20)
    drive(daemon, now=clock + 20)
    assert keeper.sent[sent_before:] == [("f1", keeper.items["f1"]["version"], True)]  # f1's change, an update


def test_syncd_run_holds_its_work_when_the_state_disk_is_low(tmp_path):
    with small_filesystem(tmp_path / "state") as state:
        config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                              daemon={"settle_seconds": 0.2, "min_free_space": "4MB"})
        log_path = tmp_path / "synced" / ".syncd-deliveries.jsonl"

        def delivered() -> Counter:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            return Counter(json.loads(line)["key"] for line in lines)

        daemon = DaemonProcess(config).start()
        try:
            wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
            write_item(tmp_path / "inbox", "first", old=False)
            wait_for(lambda: delivered() == Counter({"first": 1}), timeout=30, message="first delivery")
            filler = leave_free(state, 2 * MiB)
            wait_for(lambda: "new deliveries paused before the journal runs out of space" in daemon.logs(),
                     timeout=10, message="the guard")
            for i in range(5):
                write_item(tmp_path / "inbox", f"low{i}", seed=i, old=False)
            time.sleep(1.5)
            assert delivered() == Counter({"first": 1})
            shown = run_cli("status", "--config", str(config))
            assert shown.returncode == 0 and shown.stdout.startswith("DISK LOW: "), shown.stdout + shown.stderr
            assert "is full" not in daemon.logs()  # paused before SQLite failed
            filler.unlink()
            wait_for(lambda: len(delivered()) == 6, timeout=30, message="deliveries after space returned")
            assert "free again: resuming" in daemon.logs()
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.proc.kill()
        assert max(delivered().values()) == 1
        assert integrity(state / "syncd.db") == "ok"
        assert os.path.exists(state / "syncd.db")
