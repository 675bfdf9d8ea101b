"""Watching faults: the folder unmounted or removed (paused, never "everything deleted"), the
kernel's inotify queue overflowing, and observer threads dying (rescan, nothing missed).

Real mounts (a tmpfs "disk" bind-mounted on the watched folder, as a USB disk or an NFS share
is), real inotify, real `syncd run` processes; the tests run as root, as CI does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.daemon import Daemon
from tests.conftest import ScriptedTarget
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import image_bytes, write_item


def sh(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed (these tests need root to mount): {result.stderr.strip()}")


def local_config(tmp_path: Path, **daemon) -> Path:
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        daemon={"settle_seconds": 0.3, **daemon})


def delivered(tmp_path: Path) -> Counter:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return Counter(json.loads(line)["key"] for line in log.read_text().splitlines()) if log.exists() else Counter()


def status(config: Path) -> dict:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_unmounted_folder_is_paused_not_everything_deleted(tmp_path):
    disk, inbox = tmp_path / "disk", tmp_path / "inbox"
    disk.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
    try:
        inbox.mkdir()
        sh("mount", "--bind", str(disk), str(inbox))
        config = local_config(tmp_path, rescan_seconds=0.5)  # full rescans keep happening meanwhile
        with DaemonProcess(config) as daemon:
            wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
            for i in range(8):
                write_item(inbox / "cam", f"f{i}", metadata={"i": i}, seed=i)
            wait_for(lambda: len(delivered(tmp_path)) == 8, timeout=30, message="deliveries")
            sh("umount", str(inbox))  # the mount point is an empty directory now
            assert inbox.is_dir() and not any(inbox.iterdir())
            wait_for(lambda: "is missing" in daemon.logs(), timeout=10, message="the folder reported missing")
            time.sleep(2)  # several full rescans of the empty mount point
            folder = status(config)["folders"][0]
            assert folder["items"] == 8 and folder["targets"][0]["delivered"] == 8
            assert "is gone" not in daemon.logs()
            sh("mount", "--bind", str(disk), str(inbox))
            wait_for(lambda: "is back" in daemon.logs(), timeout=10, message="the folder back")
            write_item(inbox / "cam", "after", metadata={"new": True}, old=False)
            wait_for(lambda: "cam/after" in delivered(tmp_path), timeout=20, message="a new item after the remount")
            assert daemon.stop() == 0
        assert delivered(tmp_path) == Counter({**{f"cam/f{i}": 1 for i in range(8)}, "cam/after": 1})
        assert "is gone" not in daemon.logs()
    finally:
        subprocess.run(["umount", "-l", str(inbox)], capture_output=True)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_folder_removed_and_recreated_is_watched_again(tmp_path):
    config = local_config(tmp_path, rescan_seconds=300)  # only events can find the new files in time
    inbox = tmp_path / "inbox"
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        write_item(inbox, "first")
        wait_for(lambda: "first" in delivered(tmp_path), timeout=20, message="first delivery")
        (inbox / "first.png").unlink()
        inbox.rmdir()
        wait_for(lambda: "is missing" in daemon.logs(), timeout=10, message="the folder reported missing")
        inbox.mkdir()
        wait_for(lambda: "is back" in daemon.logs(), timeout=10, message="the folder back")
        time.sleep(0.5)
        for i in range(3):
            (inbox / f"new{i}.png").write_bytes(image_bytes(seed=40 + i))
        wait_for(lambda: {"new0", "new1", "new2"} <= set(delivered(tmp_path)), timeout=20,
                 message="files in the recreated folder, found by events")
        assert daemon.stop() == 0
    assert max(delivered(tmp_path).values()) == 1


def test_kernel_inotify_overflow_triggers_a_rescan(tmp_path):
    """The kernel's inotify queue overflows (IN_Q_OVERFLOW): events were lost, so rescan."""
    config = local_config(tmp_path, rescan_seconds=300)
    inbox = tmp_path / "inbox"
    sysctl = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = sysctl.read_text()
    daemon = DaemonProcess(config)
    try:
        sysctl.write_text("64\n")  # read once, when the daemon creates its inotify instance
        try:
            daemon.start()
            wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        finally:
            sysctl.write_text(saved)
        daemon.proc.send_signal(signal.SIGSTOP)  # it reads no events while stopped
        for i in range(60):
            write_item(inbox / f"d{i % 3}", f"img{i:03d}", metadata={"i": i}, seed=i, old=False)
        daemon.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(delivered(tmp_path)) == 60, timeout=40, message="every item after the overflow")
        assert "overflow" in daemon.logs()
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()
    assert max(delivered(tmp_path).values()) == 1


@pytest.fixture
def watching_daemon(tmp_path):
    """An in-process Daemon with real watchdog observers over tmp_path/inbox."""
    made = []

    def factory(target, **daemon):
        config = load_config(write_config(tmp_path, {"fake": {"platform": "local", "path": "unused"}},
                                          daemon={"settle_seconds": 0.2, "rescan_seconds": 3600, **daemon}))
        instance = Daemon(config, targets={"fake": target}, watch=True, seed=3)
        instance.open(time.time())
        made.append(instance)
        return instance

    yield factory
    for instance in made:
        instance.close(wait_seconds=1)


def tick_until(daemon: Daemon, done, *, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        now = time.time()
        daemon.tick(now)
        daemon._collect(now, block=0.05)


def test_dead_observer_is_restarted_and_nothing_is_missed(watching_daemon, inbox):
    target = ScriptedTarget("fake")
    daemon = watching_daemon(target)
    for observer in daemon.watcher.observers.values():
        observer.stop()  # the observer thread dies
        observer.join(5)
    for i in range(5):
        write_item(inbox, f"while_dead{i}", seed=i)
    tick_until(daemon, lambda: len(target.items) == 5)
    assert all(o.is_alive() for o in daemon.watcher.observers.values())
    write_item(inbox, "after_restart", seed=9)  # and events flow again
    tick_until(daemon, lambda: "after_restart" in target.items)


def test_dead_emitter_thread_is_noticed(watching_daemon, inbox):
    """watchdog's observer thread can outlive the emitter thread that reads inotify."""
    target = ScriptedTarget("fake")
    daemon = watching_daemon(target)
    for observer in daemon.watcher.observers.values():
        for emitter in list(observer.emitters):
            emitter.stop()
            emitter.join(5)
        assert observer.is_alive()
    write_item(inbox, "unseen_by_events", seed=1)
    tick_until(daemon, lambda: "unseen_by_events" in target.items)


def test_event_queue_overflow_triggers_a_rescan(watching_daemon, inbox):
    target = ScriptedTarget("fake")
    daemon = watching_daemon(target)
    daemon.watcher.events.maxsize = 20  # our own bounded queue between observer and coordinator
    for i in range(40):
        write_item(inbox, f"burst{i:02d}", seed=i)
    wait_for(lambda: daemon.watcher.rescan_needed.is_set(), timeout=10, message="the overflow noticed")
    tick_until(daemon, lambda: len(target.items) == 40)
