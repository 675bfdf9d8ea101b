"""One journal, one daemon: a second `syncd run`/`once` on the same state directory is
refused with a clear message (exit 3), while the read-only and operator commands keep
working beside the running daemon; a SIGKILLed daemon's lock does not outlive it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import write_item

LOCAL = {"local": {"platform": "local", "path": "synced", "log_deliveries": True}}


def delivered(tmp_path: Path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def test_second_daemon_on_the_same_state_dir_is_refused(tmp_path):
    config = write_config(tmp_path, LOCAL)
    # Another configuration (another folder) that points at the same state directory.
    other = write_config(tmp_path, LOCAL, folders=[{"path": "elsewhere", "targets": ["local"]}], name="other.toml")
    inbox = tmp_path / "inbox"
    first = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in first.logs(), timeout=20, message="daemon start")
        pid = first.proc.pid
        for command, cfg in (("run", config), ("run", other), ("once", config)):
            result = run_cli(command, "--config", str(cfg), cwd=tmp_path, timeout=30)
            assert result.returncode == 3, (command, result.stdout, result.stderr)
            expected = f"another syncd (pid {pid}) is already using the state directory {tmp_path / 'state'}"
            assert expected in result.stderr
            assert "stop it first, or give this instance its own [daemon] state_dir" in result.stderr
        # status reads the journal read-only, retry writes one transaction: both work beside it.
        assert run_cli("status", "--config", str(config)).returncode == 0
        assert run_cli("retry", "--failed", "--config", str(config)).returncode == 0
        write_item(inbox, "still_working")
        wait_for(lambda: "still_working" in delivered(tmp_path), timeout=20, message="a delivery by the first daemon")
        first.kill()  # SIGKILL: the lock file still names its pid, but the kernel released the lock
    finally:
        if first.running:
            first.proc.kill()
    assert (tmp_path / "state" / "syncd.lock").read_text().strip() == str(pid)
    second = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in second.logs(), timeout=20, message="restart after SIGKILL")
        write_item(inbox, "after_restart")
        wait_for(lambda: "after_restart" in delivered(tmp_path), timeout=20, message="a delivery after the restart")
        assert second.stop() == 0
    finally:
        if second.running:
            second.proc.kill()
    assert delivered(tmp_path) == ["still_working", "after_restart"]
