"""The local target's delivery log (``log_deliveries``) holds every committed delivery exactly
once, also when the process is killed between the record (the commit point) and its line.

The torture run counts these lines as the local dataset's write history; a SIGKILL landing in
that window left a delivered item without a line (the next process adopted the record without
writing anything), and the run reported "149 of 150 items written" under load.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from syncd.targets.local import DELIVERY_LOG, LocalSettings, LocalTarget
from tests.daemon_harness import REPO, DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import make_upload, write_item

LOCAL = {"local": {"platform": "local", "path": "synced", "log_deliveries": True}}

# Loaded by the daemon at start-up (sitecustomize on its PYTHONPATH): the process dies the
# moment its first record is committed, before the line; the one instant a real kill can hit.
DIE_BEFORE_LOGGING = '''
import os, signal
if os.environ.get("TEST_DIE_BEFORE_LOGGING"):
    from syncd.targets import local

    def die(self, *args):
        os.kill(os.getpid(), signal.SIGKILL)

    local.LocalTarget._log = die
'''


def lines(root: Path) -> list[tuple[str, str]]:
    log = root / DELIVERY_LOG
    return [(d["key"], d["version"]) for d in map(json.loads, log.read_text().splitlines())] if log.exists() else []


def test_a_delivery_killed_before_its_line_is_logged_once_by_the_next_daemon(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_BEFORE_LOGGING)
    config = write_config(tmp_path, LOCAL)
    write_item(tmp_path / "inbox", "cam/a")
    synced = tmp_path / "synced"
    daemon = DaemonProcess(config, env={"PYTHONPATH": f"{REPO}{os.pathsep}{hook}", "TEST_DIE_BEFORE_LOGGING": "1"})
    daemon.start()
    try:
        assert daemon.proc.wait(timeout=60) == -signal.SIGKILL
        daemon.kill()  # reaped already: only closes its log file
        version = json.loads((synced / "cam" / "a.json").read_text())["version"]
        assert lines(synced) == []  # committed, not logged: the window

        del daemon.env["TEST_DIE_BEFORE_LOGGING"]
        daemon.start()

        def settled() -> bool:
            status = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
            target = status["folders"][0]["targets"][0]
            return target["delivered"] == 1 and not target["in_flight"] and not target["pending"]

        wait_for(settled, timeout=60, message="the recovered delivery acked")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()
    assert "cam/a found already delivered on local" in daemon.logs()  # adopted, not written again
    assert lines(synced) == [("cam/a", version)]


def test_lookup_logs_a_committed_version_once(tmp_path):
    root = tmp_path / "dataset"
    settings = LocalSettings(path=root, log_deliveries=True, fsync=False)
    first, second = make_upload("cam/a", seed=1), make_upload("cam/a", seed=2)

    # Logged in the ordinary way: a later process's lookup adds nothing.
    LocalTarget("local", settings).deliver(first)
    assert LocalTarget("local", settings).lookup(first).extra["version"] == first.version
    assert lines(root) == [("cam/a", first.version)]

    # The process dies between the record and the line (here: the line is never written).
    dying = LocalTarget("local", settings)
    dying._log = lambda *args: None
    dying.deliver(second)
    assert lines(root) == [("cam/a", first.version)]
    # The next process looks it up (recovery), for this version or a newer one: logged once.
    recovering = LocalTarget("local", settings)
    third = make_upload("cam/a", seed=3)
    assert recovering.lookup(third).extra["version"] == second.version
    assert recovering.lookup(second).extra["version"] == second.version
    recovering.deliver(third)
    assert LocalTarget("local", settings).lookup(third) is not None
    assert lines(root) == [("cam/a", first.version), ("cam/a", second.version), ("cam/a", third.version)]

    # A record written without the log (log_deliveries off then) is not logged afterwards.
    LocalTarget("local", LocalSettings(path=root, fsync=False)).deliver(make_upload("cam/b", seed=4))
    assert LocalTarget("local", settings).lookup(make_upload("cam/b", seed=4)) is not None
    assert [key for key, _ in lines(root)] == ["cam/a"] * 3
