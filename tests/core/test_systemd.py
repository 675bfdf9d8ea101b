"""systemd integration: the unit's hardening score, and the sd_notify protocol on a real socket."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

from tests.daemon_harness import REPO, DaemonProcess, wait_for, write_config
from tests.helpers import write_item

UNIT = REPO / "systemd" / "syncd.service"


def test_unit_exposure_is_2_or_lower():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd); .ci/run installs it"
    result = subprocess.run([analyze, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for syncd\.service: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_ready_status_and_watchdog_are_sent(tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    messages: list[str] = []

    def received(word):
        try:
            while True:
                messages.append(listener.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return any(word in m for m in messages)

    write_item(tmp_path / "inbox", "a", metadata={})
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    with daemon:
        wait_for(lambda: received("READY=1"), timeout=20, message="READY=1")
        # READY comes after the first scan: the item found by it was already observed.
        wait_for(lambda: received("WATCHDOG=1"), timeout=10, message="WATCHDOG=1")
        wait_for(lambda: received("STATUS="), timeout=10, message="STATUS")
        assert daemon.stop() == 0
    wait_for(lambda: received("STOPPING=1"), timeout=5, message="STOPPING=1")
    listener.close()
