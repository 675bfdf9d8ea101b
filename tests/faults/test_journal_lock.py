"""Another process holds the journal's write lock (issue 10, item 17): an operator's sqlite3
shell left after ``BEGIN IMMEDIATE``. syncd waits without losing anything, says who holds the
lock (log, systemd STATUS, ``syncd status``), keeps answering systemd's watchdog while it
waits, goes on when the lock is free, and still stops on SIGTERM. A lock that no other
process holds (syncd's own, a bug) gets no watchdog ping: the watchdog must see that loop stuck.

The second connection is a real one (a child process, or this process for the own-lock case),
and systemd's notify socket a real datagram socket.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from syncd.errors import JournalBusy
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import write_item

WATCHDOG_SECONDS = 6.0  # WatchdogSec: systemd kills a service whose pings are further apart
HOLD_SECONDS = 15.0  # the old busy timeout (30 s) would have blocked the loop for all of it

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()  # until the test says so
conn.execute("COMMIT")
"""


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket whose thread records (monotonic time of
    arrival, message) as they come, as systemd's watchdog would see them."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (socket.timeout, BlockingIOError):
                pass

    def has(self, word: str) -> bool:
        return any(word in message for _, message in list(self.messages))

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()


def hold_lock(db: Path) -> subprocess.Popen:
    """A child process holding the journal's write lock until ``release``."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "holding"
    return child


def release(child: subprocess.Popen) -> None:
    child.stdin.write("\n")
    child.stdin.close()
    assert child.wait(timeout=10) == 0


def test_a_held_lock_is_waited_for_named_and_the_watchdog_kept_fed(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    inbox = tmp_path / "inbox"
    write_item(inbox, "before", metadata={})
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6))}
    daemon = DaemonProcess(config, env=env)
    with daemon:
        wait_for(lambda: notify.has("READY=1") and "before delivered" in daemon.logs(), timeout=30,
                 message="the daemon ready, a first item delivered")
        holder = hold_lock(tmp_path / "state" / "syncd.db")
        try:
            held_at = time.monotonic()
            write_item(inbox, "during", metadata={})  # its pass needs the lock
            wait_for(lambda: f"locked by pid {holder.pid}" in daemon.logs(), timeout=20,
                     message="the log naming the process holding the lock")
            status = run_cli("status", "--config", str(config), timeout=30)
            assert status.returncode == 0, status.stderr
            assert f"LOCKED by pid {holder.pid}" in status.stdout
            as_json = json.loads(run_cli("status", "--json", "--config", str(config), timeout=30).stdout)
            assert as_json["journal"]["locked_by"].startswith(f"pid {holder.pid} ")
            wait_for(lambda: notify.has(f"locked by pid {holder.pid}"), timeout=20,
                     message="a STATUS line saying the journal is locked")
            time.sleep(max(0.0, HOLD_SECONDS - (time.monotonic() - held_at)))
            assert daemon.running
            assert not (tmp_path / "synced" / "during.json").exists()  # nothing recorded, nothing sent
        finally:
            release(holder)
        released_at = time.monotonic()
        wait_for(lambda: (tmp_path / "synced" / "during.json").exists(), timeout=30,
                 message="the item written during the lock, delivered after it")
        assert "the journal's write lock is free again" in daemon.logs()
        assert daemon.stop() == 0
    notify.close()
    pings = [at for at, message in notify.messages if "WATCHDOG=1" in message and held_at <= at <= released_at]
    gaps = [later - earlier for earlier, later in zip([held_at] + pings, pings + [released_at])]
    assert len(pings) >= 2 and max(gaps) < WATCHDOG_SECONDS, gaps  # systemd would not have killed it


def test_sigterm_while_waiting_for_the_lock_stops_at_once(tmp_path):
    inbox = tmp_path / "inbox"
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    daemon = DaemonProcess(config)
    with daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        holder = hold_lock(tmp_path / "state" / "syncd.db")
        try:
            write_item(inbox, "during", metadata={})
            wait_for(lambda: f"locked by pid {holder.pid}" in daemon.logs(), timeout=20, message="waiting for the lock")
            assert daemon.stop(timeout=20) == 0  # before the lock is free
            assert holder.poll() is None
        finally:
            release(holder)
    assert "Traceback" not in daemon.logs()
    assert not (tmp_path / "synced" / "during.json").exists()
    # Nothing was lost: the next start delivers it.
    daemon.start()
    try:
        wait_for(lambda: (tmp_path / "synced" / "during.json").exists(), timeout=30, message="delivered after restart")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()


def _wait_once(daemon, seconds: float) -> None:
    """Passes until one needed the lock and gave up waiting for it after ``seconds``."""
    daemon.journal_wait.give_up_at = time.monotonic() + seconds
    clock = time.time() + 3600
    deadline = time.monotonic() + 30
    while daemon.local_error is None:
        assert time.monotonic() < deadline, "no pass needed the journal"
        clock += 5
        daemon.tick(clock)
    daemon.journal_wait.give_up_at = None


def test_the_watchdog_is_fed_only_while_another_process_holds_the_lock(make_daemon, inbox, tmp_path, caplog):
    target = ScriptedTarget("fake")
    daemon = make_daemon({"fake": target})
    fed: list[str | None] = []
    daemon.journal_wait.keepalive = lambda: fed.append(daemon.journal_wait.describe())
    db = tmp_path / "state" / "syncd.db"
    caplog.set_level(logging.INFO, logger="syncd")

    # A lock of this very process (what a bug of syncd's own would look like): no ping.
    own = sqlite3.connect(db, isolation_level=None)
    own.execute("BEGIN IMMEDIATE")
    write_item(inbox, "a", metadata={})
    _wait_once(daemon, 1.5)
    assert fed == []
    assert "JournalBusy" not in caplog.text and "Traceback" not in caplog.text
    own.execute("COMMIT")
    own.close()
    daemon.local_error = None

    # Another process's lock: fed while waiting, with who holds it.
    holder = hold_lock(db)
    try:
        write_item(inbox, "b", metadata={})
        _wait_once(daemon, 1.5)
    finally:
        release(holder)
    assert fed and all(f"locked by pid {holder.pid}" in line for line in fed)
    assert f"is locked by pid {holder.pid}" in caplog.text
    drive(daemon, now=time.time() + 600)  # the lock is free: everything observed meanwhile is delivered
    assert sorted(target.items) == ["a", "b"]


def test_a_stopping_daemon_does_not_wait_for_the_lock(make_daemon, inbox, tmp_path):
    daemon = make_daemon({"fake": ScriptedTarget("fake")})
    holder = hold_lock(tmp_path / "state" / "syncd.db")
    try:
        write_item(inbox, "a", metadata={})
        daemon.stop_event.set()
        try:
            daemon.journal_wait.waiting(0.5)
            raise AssertionError("a stopping daemon kept waiting")
        except JournalBusy as exc:
            assert f"locked by pid {holder.pid}" in str(exc)
        daemon.tick(time.time() + 3600)  # returns: the pass is rolled back, nothing is lost
        assert daemon.store.query("SELECT count(*) AS n FROM items")[0]["n"] == 0
    finally:
        release(holder)
    assert os.path.exists(tmp_path / "state" / "syncd.db")
