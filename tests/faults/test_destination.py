"""The local target's destination gets in the way (issue 10, items 8 and 9): names too long for
it, a read-only filesystem, a full disk. Each is one clear reason (what, where, what to do),
never "internal error (please report this)", and nothing flaps.

Real filesystems: a read-only bind mount and a small tmpfs (mounted here; the tests run as
root, as CI does, see tests/faults/test_disk.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from syncd.errors import FatalTargetError
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import _env, run_cli, run_once, wait_for, write_config
from tests.faults.test_disk import fill, small_filesystem
from tests.helpers import age_files, image_bytes, write_item


def local_config(tmp_path, **daemon):
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        daemon=daemon or None)


def deliveries(tmp_path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def put_image(path, seed: int = 0) -> None:
    """An image written directly (the helpers' temporary name would not fit beside a long one)."""
    path.write_bytes(image_bytes(seed=seed))
    age_files(path)


# -- item 8: long names --------------------------------------------------------------------------
def test_long_names_are_delivered(tmp_path):
    """Names up to what the destination holds (its record, ``<stem>.json``, is one byte longer
    than a ``.png``): the temporary names must fit too."""
    config = local_config(tmp_path)
    stems = ["x" * 236, "z" * 250, "é" * 124]  # 240, 254 and 252 bytes with ".png" (2 bytes per é)
    for seed, stem in enumerate(stems):
        put_image(tmp_path / "inbox" / f"{stem}.png", seed)
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(deliveries(tmp_path)) == sorted(stems)
    for stem in stems:
        assert json.loads((tmp_path / "synced" / f"{stem}.json").read_text())["key"] == stem
    assert not [p for p in os.listdir(tmp_path / "synced") if p.endswith(".tmp")]


def test_a_name_that_cannot_fit_at_the_destination_fails_once_and_clearly(tmp_path):
    config = local_config(tmp_path, retry_base_seconds=0.05, retry_max_seconds=0.1)
    stem = "y" * 251  # the image's name is 255 bytes, the limit; its record's would be 256
    put_image(tmp_path / "inbox" / f"{stem}.png", 2)
    write_item(tmp_path / "inbox", "short", seed=1)
    write_item(tmp_path / "inbox", "short", seed=1)
    result = run_once(config, args=("--max-wait", "5"))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "internal error" not in output and "Traceback" not in output, output
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAILED"))
    assert line.startswith(f"FAILED {stem} -> local: ") and "too long" in line and "rename" in line, line
    assert "retrying" not in output  # permanent: not retried until the file changes
    assert deliveries(tmp_path) == ["short"]
    status = run_cli("status", "--config", str(config)).stdout
    assert "1 failed" in status and "too long" in status


# -- item 9: a destination read-only or full ---------------------------------------------------
def tick_for(daemon, clock: float, seconds: int) -> float:
    """Drive ``daemon`` pass by pass, one simulated second each, letting re-checks finish."""
    for _ in range(seconds):
        clock += 1
        daemon.tick(clock)
        daemon._collect(clock, block=0.01)
        while daemon.checking:  # its result is recorded by the coordinator (a report)
            wait_for(lambda: not daemon.results.empty(), timeout=10, message="a target check")
            daemon._collect(clock)
    return clock


def pauses(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "syncd.health" and "paused" in r.getMessage()]


@pytest.fixture
def destination(tmp_path):
    """The local target's dataset directory, on a tmpfs of its own (1 MB)."""
    with small_filesystem(tmp_path / "remote-local", "1m") as path:
        yield path


def test_a_full_destination_pauses_the_target_once_and_resumes_when_space_returns(destination, make_daemon,
                                                                                    inbox, caplog):
    caplog.set_level(logging.INFO)
    filler = fill(destination)
    for i in range(3):
        write_item(inbox, f"f{i}", metadata={"i": i}, seed=i)
    daemon = make_daemon(daemon={"target_recheck_seconds": 2})
    clock = tick_for(daemon, time.time() + 3600, 60)
    assert daemon.paused.keys() == {"local"}
    reason = daemon.store.paused_targets()["local"]
    assert reason.startswith("target 'local': no space left on the device holding ") and "free some space" in reason
    assert len(pauses(caplog)) <= 3, pauses(caplog)  # re-checked, not resumed into the same wall
    assert not any("internal error" in r.getMessage() for r in caplog.records)
    filler.unlink()
    clock = tick_for(daemon, clock, 10)
    drive(daemon, now=clock - 3600)
    assert not daemon.paused
    assert sorted(p.name for p in destination.glob("f*.json")) == ["f0.json", "f1.json", "f2.json"]


def test_a_read_only_destination_pauses_the_target_with_the_fix(destination, make_daemon, inbox, caplog):
    caplog.set_level(logging.INFO)
    write_item(inbox, "a", metadata={"n": 1})
    subprocess.run(["mount", "-o", "remount,ro", str(destination)], check=True)
    daemon = make_daemon(daemon={"target_recheck_seconds": 2})
    clock = tick_for(daemon, time.time() + 3600, 30)
    reason = daemon.store.paused_targets()["local"]
    assert reason == f"target 'local': {destination} is on a read-only filesystem: remount it read-write", reason
    assert not any("internal error" in r.getMessage() or r.exc_info for r in caplog.records)
    assert len(pauses(caplog)) <= 2  # a failed re-check for the same reason is not logged again
    status = run_cli("status", "--config", str(daemon.config.config_path)).stdout
    assert "PAUSED: target 'local'" in status and "read-only filesystem" in status
    subprocess.run(["mount", "-o", "remount,rw", str(destination)], check=True)
    clock = tick_for(daemon, clock, 5)
    drive(daemon, now=clock - 3600)
    assert not daemon.paused and (destination / "a.json").exists()


def test_a_target_failing_right_after_each_resumption_is_rechecked_with_backoff(make_daemon, inbox, caplog):
    """A cause its check cannot see: the target does not flap every re-check period."""
    caplog.set_level(logging.INFO)
    target = ScriptedTarget("fake")
    target.script["a"] = [FatalTargetError("the dataset is locked") for _ in range(1000)]
    write_item(inbox, "a")
    daemon = make_daemon({"fake": target}, daemon={"target_recheck_seconds": 2})
    clock = tick_for(daemon, time.time() + 3600, 120)
    flaps = len([m for m in pauses(caplog) if "again right after resuming" in m])
    assert 3 <= flaps <= 6, pauses(caplog)  # 2, 4, 8, 16, 32, 64 s: not 30 pauses in 2 minutes
    target.script["a"] = []
    clock = tick_for(daemon, clock, 300)
    drive(daemon, now=clock - 3600)
    assert target.sent and not daemon.paused
    assert daemon.health.interval.get("fake") is None  # a success: back to target_recheck_seconds


@pytest.mark.parametrize("where", ["", "cam"])
def test_a_destination_the_service_user_cannot_write_pauses_the_target_with_the_fix(tmp_path, where):
    """A real EACCES: syncd runs in a user namespace of its own, where the owner (uid 4242) of
    the dataset directory, or of the subdirectory an item goes to, is not mapped (see
    tests/faults/test_unreadable_dir.py)."""
    config = local_config(tmp_path)
    write_item(tmp_path / "inbox" / where, "a")
    locked = tmp_path / "synced" / where
    locked.mkdir(parents=True)
    os.chown(locked, 4242, 4242)
    result = subprocess.run(["unshare", "-U", "-r", sys.executable, "-m", "syncd", "once", "--max-wait", "5",
                             "--config", str(config)], env=_env(None), cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output and "internal error" not in output, output
    if where:  # found by the delivery: the check of the dataset directory passes
        expected = (f"PAUSED target local: target 'local': cannot write {locked}/a.png: Permission denied; "
                    f"give the user syncd runs as write access to {locked}")
    else:
        expected = (f"PAUSED target local: target 'local': {locked} is not writable by the user syncd runs as: "
                    "give it write access")
    assert expected in result.stdout, output
