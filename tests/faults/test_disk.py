"""The state directory runs out of space: the daemon pauses with a clear error, the journal
stays intact, nothing is lost or sent twice, and it resumes by itself when space returns.

The state directory is a real, small tmpfs (mounted here; the tests run as root, as CI
does), filled to the last byte with a filler file, so SQLite gets a real ENOSPC.
RLIMIT_FSIZE would be the fallback without root, but it yields EFBIG/SIGXFSZ, not ENOSPC,
so it would test another code path; mounting is the faithful way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import write_item


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "16m"):
    """Mount a tmpfs of ``size`` on ``path`` for the duration (needs root / CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"these tests mount a small tmpfs and need root (or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem holding ``directory`` is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def state_tmpfs(tmp_path):
    with small_filesystem(tmp_path / "state") as path:
        yield path


def test_outcome_of_a_delivery_finishing_while_the_disk_is_full_is_kept(state_tmpfs, make_daemon, inbox):
    """In process: an ack that cannot be journaled is kept and recorded later, exactly once."""
    target = ScriptedTarget("fake")
    target.gate = __import__("threading").Event()
    write_item(inbox, "early", metadata={"n": 1})
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)
    assert target.entered.wait(5), "the delivery never started"
    filler = fill(state_tmpfs)
    target.gate.set()  # the platform answers while the journal cannot be written
    wait_for(lambda: not daemon.results.empty(), timeout=5, message="the delivery's outcome")
    daemon.tick(now + 1)
    assert daemon.local_error and "is full" in daemon.local_error
    assert daemon.unrecorded and ("early" in daemon.in_flight.values())
    row = daemon.store.query("SELECT state FROM deliveries")[0]
    assert row["state"] == "in_flight"  # the journal is unchanged, not half-written
    write_item(inbox, "late", metadata={"n": 2})
    daemon.tick(now + 2)  # paused: no pass at all until the retry time
    daemon.tick(now + 10)  # retried: still full
    assert daemon.local_error and integrity(state_tmpfs / "syncd.db") == "ok"
    filler.unlink()
    drive(daemon)
    assert daemon.local_error is None and not daemon.unrecorded
    assert [key for key, _, _ in target.sent] == ["early", "late"]  # each once
    states = {r["key"]: r["state"] for r in daemon.store.query(
        "SELECT i.key, d.state FROM deliveries d JOIN items i ON i.id=d.item_id")}
    assert states == {"early": "acked", "late": "acked"}


def test_syncd_run_pauses_on_a_full_state_dir_and_resumes(tmp_path):
    with small_filesystem(tmp_path / "state") as state:
        config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                              daemon={"settle_seconds": 0.3, "rescan_seconds": 60})
        inbox = tmp_path / "inbox"
        log_path = tmp_path / "synced" / ".syncd-deliveries.jsonl"

        def delivered() -> Counter:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            return Counter(json.loads(line)["key"] for line in lines)

        daemon = DaemonProcess(config).start()
        try:
            wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
            for i in range(10):
                write_item(inbox, f"before{i:02d}", metadata={"i": i}, seed=i)
            wait_for(lambda: len(delivered()) == 10, timeout=30, message="first deliveries",
                     explain=lambda: f"delivered {sorted(delivered())}; the daemon's log:\n{daemon.logs()[-4000:]}")
            filler = fill(state)
            for i in range(30):
                write_item(inbox / "during", f"item{i:02d}", metadata={"i": i, "pad": "x" * 2000}, seed=100 + i)
            wait_for(lambda: "is full" in daemon.logs(), timeout=30, message="the disk-full error")
            error_line = next(line for line in daemon.logs().splitlines() if "is full" in line)
            assert str(state / "syncd.db") in error_line and "free some space" in error_line
            time.sleep(1.5)
            assert daemon.running, daemon.logs()[-2000:]
            assert integrity(state / "syncd.db") == "ok"
            status = run_cli("status", "--json", "--config", str(config))
            assert status.returncode == 0, status.stderr  # status still reads the journal
            assert json.loads(status.stdout)["folders"][0]["targets"][0]["delivered"] >= 10
            assert daemon.logs().count("is full") == 1  # one clear error, not one per pass

            filler.unlink()
            wait_for(lambda: len(delivered()) == 40, timeout=60, message="deliveries after space returned")
            assert "the journal can be written again" in daemon.logs()
            wait_for(lambda: json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
                     ["folders"][0]["targets"][0]["pending"] == 0, timeout=20, message="an idle journal")
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.proc.kill()
        assert max(delivered().values()) == 1  # nothing sent twice
        assert integrity(state / "syncd.db") == "ok"
        for i in range(30):
            record = json.loads((tmp_path / "synced" / "during" / f"item{i:02d}.json").read_text())
            assert record["metadata"]["i"] == i


def test_a_pass_whose_journal_write_fails_hands_nothing_to_the_workers(state_tmpfs, make_daemon, inbox):
    """Work goes to the workers only after the commit that journaled its intent: a pass whose
    one transaction fails (disk full) sends nothing and leaves no trace in the journal; once
    space returns the same items are sent, each once."""
    target = ScriptedTarget("fake", max_batch=10)
    for name in ("a", "b", "c"):
        write_item(inbox, name, metadata={"name": name})
    daemon = make_daemon({"fake": target})  # the start-up scan observed them (committed)
    filler = fill(state_tmpfs)
    now = time.time() + 3600
    daemon.tick(now)  # settles them and plans one batch: its transaction cannot commit
    assert daemon.local_error and "is full" in daemon.local_error
    assert not daemon.in_flight and not any(daemon.dispatcher.tasks.values())
    time.sleep(0.3)
    assert target.batches == []  # nothing was handed over
    assert daemon.store.query("SELECT count(*) AS n FROM deliveries")[0]["n"] == 0  # nor journaled
    assert {r["state"] for r in daemon.store.query("SELECT state FROM items")} == {"settling"}
    filler.unlink()
    drive(daemon)
    assert target.batches == [["a", "b", "c"]]
    assert sorted(key for key, _, _ in target.sent) == ["a", "b", "c"]
    assert integrity(state_tmpfs / "syncd.db") == "ok"


def test_a_job_answered_while_the_disk_is_full_is_recorded_once(state_tmpfs, make_daemon, inbox):
    """A batch the platform took into a job while the journal could not be written: the
    job is journaled once space returns (not lost, not sent again) and its items acked once."""
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    for name in ("a", "b"):
        write_item(inbox, name, metadata={"name": name})
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)  # intents committed, the batch handed over
    wait_for(lambda: not daemon.results.empty(), timeout=5, message="the batch's report")
    filler = fill(state_tmpfs)
    daemon.tick(now + 1)  # records Submitted: cannot commit
    assert daemon.local_error and daemon.unrecorded
    assert daemon.store.query("SELECT count(*) AS n FROM jobs")[0]["n"] == 0
    assert daemon.dispatcher.jobs.count("fake") == 0  # the job is not kept in memory either
    filler.unlink()
    drive(daemon)
    assert target.batches == [["a", "b"]]  # sent once
    assert target.finished == [("job-1", ["a", "b"])]
    assert sorted(key for key, _, _ in target.sent) == ["a", "b"]
    assert daemon.store.query("SELECT count(*) AS n FROM jobs")[0]["n"] == 0
