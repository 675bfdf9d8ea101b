from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.daemon import Daemon
from syncd.targets.base import Receipt, Target, TargetSettings, Upload
from tests.daemon_harness import write_config


class ScriptedTarget(Target):
    """An in-memory fake platform: upserts by key, and fails as scripted.

    ``script`` maps an item key to a list of exceptions raised on successive deliveries of
    that key (then it succeeds). ``gate`` (a threading.Event) blocks deliveries until set.
    """

    platform = "scripted"

    def __init__(self, name: str = "fake", *, create_only: bool = False, workers: int = 2):
        super().__init__(name, TargetSettings(platform="scripted", workers=workers))
        self.create_only = create_only
        self.items: dict[str, dict] = {}
        self.sent: list[tuple[str, str, bool]] = []  # (key, version, was_update)
        self.script: dict[str, list[Exception]] = {}
        self.check_error: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()  # set when a delivery reached the platform
        self.lock = threading.Lock()
        self.lookups = 0

    def check(self) -> list[str]:
        if self.check_error:
            raise self.check_error
        return []

    def deliver(self, upload: Upload) -> Receipt:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        with self.lock:
            errors = self.script.get(upload.key)
            if errors:
                raise errors.pop(0)
            self.sent.append((upload.key, upload.version, upload.previous is not None))
            self.items[upload.key] = {"version": upload.version, "metadata": upload.metadata, "image": upload.image}
        return Receipt(remote_id=f"id-{upload.key}", extra={"version": upload.version})

    def lookup(self, upload: Upload) -> Receipt | None:
        self.lookups += 1
        with self.lock:
            item = self.items.get(upload.key)
        return None if item is None else Receipt(remote_id=f"id-{upload.key}", extra={"version": item["version"]})


@pytest.fixture
def scripted():
    return ScriptedTarget()


@pytest.fixture
def make_daemon(tmp_path):
    """Build an in-process Daemon (no watches) over tmp_path/inbox with the given targets."""
    made: list[Daemon] = []

    def factory(targets: dict[str, Target] | None = None, *, folder: dict | None = None, daemon: dict | None = None,
                open_now=True):
        names = list(targets) if targets else ["local"]
        tables = {name: {"platform": "local", "path": f"remote-{name}"} for name in names}
        folder_table = {"path": "inbox", "targets": names, **(folder or {})}
        config = load_config(write_config(tmp_path, tables, folders=[folder_table],
                                          daemon={"settle_seconds": 1.0, **(daemon or {})}))
        instance = Daemon(config, targets=targets, watch=False, seed=7)
        if open_now:
            instance.open(time.time())
        made.append(instance)
        return instance

    yield factory
    for instance in made:
        try:
            instance.close(wait_seconds=1)
        except Exception:
            pass


def _pending(daemon: Daemon) -> bool:
    """Deliveries still to do (now or after a backoff) on targets that are not paused."""
    rows = daemon.store.query(
        "SELECT d.target FROM deliveries d JOIN items i ON i.id=d.item_id "
        "WHERE d.state IN ('pending','in_flight') AND i.state='ready'"
    )
    return any(r["target"] not in daemon.paused for r in rows)


def drive(daemon: Daemon, *, now: float | None = None, until=None, timeout: float = 20.0, step: float = 5.0) -> float:
    """Tick ``daemon`` until idle (or ``until()``), its clock ``step`` seconds further each pass.

    The clock starts an hour ahead so that every file counts as settled. Returns the clock.
    """
    deadline = time.monotonic() + timeout
    clock = (now or time.time()) + 3600
    while time.monotonic() < deadline:
        clock += step
        daemon.tick(clock)
        daemon._collect(clock, block=0.02)
        if until is not None:
            if until():
                return clock
        elif not daemon.busy() and not daemon.checking and not _pending(daemon):
            return clock
    raise AssertionError("daemon did not become idle")


@pytest.fixture
def inbox(tmp_path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir(exist_ok=True)
    return path
