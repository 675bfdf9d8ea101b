"""``syncd pause TARGET`` / ``syncd resume TARGET``: the operator holds a target's deliveries.

The pause is a flag in the journal (``targets.operator_paused_at``), so it holds across
restarts and ``status`` shows it. A running daemon learns of it within a second without
reading the journal every pass: the command sends SIGUSR1 to the process holding the state
directory's lock (its pid is in ``syncd.lock``); the signal handler only sets a flag and wakes
the loop, whose next pass reads the flags (syncd.daemon). A daemon that could not be signalled
(another pid namespace) still reads them every 30 seconds.

The pid is only signalled when the lock is really held (a shared ``flock`` attempt fails),
so a stale pid left in the file by a daemon that is gone never gets a signal meant for syncd.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from syncd.config import Config
from syncd.errors import ConfigError
from syncd.journal.schema import LOCK_NAME
from syncd.journal.store import Store


@dataclass
class PauseResult:
    target: str
    changed: bool  # False: it already was so
    since: float | None  # paused: since when
    pid: int | None  # the running daemon told, if any
    signal_error: str | None = None  # why a running daemon could not be told


def set_paused(config: Config, target: str, paused: bool, *, now: float | None = None) -> PauseResult:
    """Pause (or resume) ``target`` in the journal and tell the running daemon, if one is.
    ``ConfigError`` naming the known targets when ``target`` is not one of them."""
    if target not in config.target_settings:
        known = ", ".join(sorted(config.target_settings)) or "none"
        raise ConfigError(f"unknown target {target!r} (known: {known})")
    now = time.time() if now is None else now
    store = Store.open(config.daemon.state_dir)
    try:
        changed = store.set_operator_pause(target, paused, now)
        since = store.operator_pauses().get(target)
    finally:
        store.close()
    pid, error = None, None
    if changed:
        pid, error = signal_daemon(config.daemon.state_dir)
    return PauseResult(target, changed, since, pid, error)


def running_pid(state_dir: Path) -> int | None:
    """The pid of the syncd holding ``state_dir``'s lock, or None when none does."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no syncd ever ran here (or it cannot be read: nothing to tell)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it
        for _ in range(50):  # the holder writes its pid right after taking the lock
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text.isdigit():
                return int(text)
            time.sleep(0.01)
        return None
    finally:
        os.close(fd)


def signal_daemon(state_dir: Path) -> tuple[int | None, str | None]:
    """SIGUSR1 to the syncd running on ``state_dir``: ``(pid, None)`` when told, ``(pid,
    why not)`` when it could not be, ``(None, None)`` when none runs."""
    pid = running_pid(state_dir)
    if pid is None or pid <= 1 or pid == os.getpid():
        return None, None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"syncd" not in cmdline:
            return None, None  # not a syncd: never signal what is not ours
    except OSError:
        pass  # no /proc (or another pid namespace): the lock says it is ours
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return None, None
    except PermissionError:
        return pid, "not allowed to signal it (run this as the daemon's user or root)"
    return pid, None
