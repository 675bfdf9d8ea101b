"""What a service manager and an operator do to the daemon and its state directory, beyond the
journal itself (tests/faults/test_journal_lock.py, test_journal_lost.py): SIGTERM during the
first scan of a large tree, the state directory's filesystem remounted read-only, the lock
file deleted while the daemon runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import image_bytes, write_item

LOCAL = {"local": {"platform": "local", "path": "synced", "log_deliveries": True}}


def delivered(tmp_path: Path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def big_tree(inbox: Path, items: int) -> None:
    """``items`` small settled images, 500 a directory."""
    data = image_bytes(8, 8)
    old = time.time() - 3600
    for n in range(items):
        directory = inbox / f"d{n // 500:03}"
        if n % 500 == 0:
            directory.mkdir(parents=True)
        path = directory / f"f{n % 500:03}.png"
        path.write_bytes(data)
        os.utime(path, (old, old))


def test_sigterm_during_the_first_scan_stops_at_once(tmp_path):
    """Before, the scan ran to its end (minutes on a large tree, past systemd's stop timeout),
    then READY=1 was sent and only then did the daemon stop."""
    big_tree(tmp_path / "inbox", 20000)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    messages: list[str] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except OSError:
                pass

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    config = write_config(tmp_path, LOCAL)
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    with daemon:
        wait_for(lambda: "scanning" in daemon.logs(), timeout=60, interval=0.02, message="the first scan")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0
    done.set()
    receiver.join()
    notify.close()
    logs = daemon.logs()
    assert "stopped during the first scan; the next start scans again" in logs, logs
    assert "watching" not in logs and not any("READY=1" in m for m in messages)  # never reported ready
    assert "Traceback" not in logs


def test_state_directory_on_a_read_only_filesystem(tmp_path):
    """ext4's errors=remount-ro, a card mounted read-only: one line naming the filesystem and
    what to do (before: a traceback from the lock file, exit 1); status still reads the journal.
    (A live remount cannot be made here: Linux refuses remount,ro while the daemon has files
    open for writing; what the daemon then meets, EROFS under SQLite, is the last part.)"""
    from syncd.journal.schema import local_error
    from tests.faults.test_disk import small_filesystem

    config = write_config(tmp_path, LOCAL)
    inbox = tmp_path / "inbox"
    state = tmp_path / "state"
    with small_filesystem(state):
        write_item(inbox, "before", metadata={})
        assert run_cli("once", "--config", str(config)).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        try:
            write_item(inbox, "during", metadata={})
            message = f"the filesystem holding {state} is read-only"
            for command in (("run",), ("once",), ("retry", "--failed")):
                result = run_cli(*command, "--config", str(config))
                assert result.returncode == 3, (command, result.stderr)
                assert message in result.stderr and "mount -o remount,rw" in result.stderr, result.stderr
                assert "Traceback" not in result.stderr
            status = run_cli("status", "--json", "--config", str(config))
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["folders"][0]["targets"][0]["delivered"] == 1
            for text in ("disk I/O error", "attempt to write a readonly database", "unable to open database file"):
                assert message in str(local_error(sqlite3.OperationalError(text), state / "syncd.db"))
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
        assert run_cli("once", "--config", str(config)).returncode == 0
    assert delivered(tmp_path) == ["before", "during"]


def test_lock_file_deleted_while_running_is_made_again(tmp_path):
    """Before, a second daemon could then start on the same journal beside the first."""
    config = write_config(tmp_path, LOCAL)
    inbox = tmp_path / "inbox"
    lock = tmp_path / "state" / "syncd.lock"
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        lock.unlink()
        write_item(inbox, "a", metadata={})  # a pass
        wait_for(lambda: "was deleted; made it again" in daemon.logs(), timeout=30, message="the lock made again")
        assert lock.read_text().strip() == str(daemon.proc.pid)
        second = run_cli("run", "--config", str(config), timeout=60)
        assert second.returncode == 3, second.stderr
        assert f"another syncd (pid {daemon.proc.pid}) is already using the state directory" in second.stderr
        wait_for(lambda: "a" in delivered(tmp_path), timeout=30, message="delivered")
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()
