"""Minimal sd_notify(3): READY, STATUS, WATCHDOG and STOPPING messages to systemd."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; False when not running under systemd.

    Never blocks: a full notify queue drops the message rather than stalling the loop.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when not enabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
