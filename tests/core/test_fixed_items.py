"""A file fixed after its item failed is read again promptly (issue 10, item 20).

Before, an item failed for its files stayed failed until its size, mtime or inode changed:
``chmod 644`` on an unreadable image (a metadata change: IN_ATTRIB, watchdog's attrib event)
and the removal of a second image with the same stem changed none of them, so neither the
event nor any rescan read it again; ``syncd retry`` made it settle only at the next full
rescan (5 minutes), showing the old error meanwhile. Now an invalid item is recorded with its
files' ctimes and the names of the images clashing with it, a change of either reads it again,
and the daemon follows what ``syncd retry`` requeued at its next pass.

The daemon runs without CAP_DAC_OVERRIDE (tests.core.test_bad_input_corpus), so a mode-000
file is unreadable to it as it is to the ``syncd`` service user.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from syncd import status
from syncd.journal.store import Store
from tests.conftest import ScriptedTarget, drive
from tests.core.test_bad_input_corpus import UnprivilegedDaemon
from tests.daemon_harness import run_cli, wait_for, write_config
from tests.helpers import image_bytes, write_item

LOCAL = {"local": {"platform": "local", "path": "synced", "log_deliveries": True}}
SLOW_RESCAN = {"rescan_seconds": 600}  # only an event (or a start) can find the change in time


def delivered(tmp_path: Path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def failed(config: Path) -> dict[str, str]:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    target = json.loads(result.stdout)["folders"][0]["targets"][0]
    return {entry["key"]: entry["reason"] for entry in target["failed_items"]}


def test_chmod_and_a_removed_twin_deliver_the_failed_item_at_once(tmp_path):
    config = write_config(tmp_path, LOCAL, daemon=SLOW_RESCAN)
    inbox = tmp_path / "inbox"
    with UnprivilegedDaemon(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        locked = write_item(inbox, "locked", metadata={})
        locked.chmod(0)
        write_item(inbox, "twin", metadata={})  # twin.png, then a second image with its stem
        (inbox / "twin.jpg").write_bytes(image_bytes(fmt="JPEG"))
        wait_for(lambda: set(failed(config)) == {"locked", "twin"}, timeout=30, message="both failed")
        assert "permission denied" in failed(config)["locked"]

        locked.chmod(0o644)  # the file's mode alone changes
        (inbox / "twin.png").unlink()  # the first image goes: twin.jpg is the item now
        wait_for(lambda: {"locked", "twin"} <= set(delivered(tmp_path)), timeout=30,
                 message="both delivered without a rescan")
        assert failed(config) == {}
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


def test_a_file_fixed_while_the_daemon_was_stopped_is_read_at_the_start(tmp_path):
    config = write_config(tmp_path, LOCAL, daemon=SLOW_RESCAN)
    inbox = tmp_path / "inbox"
    locked = write_item(inbox, "locked", metadata={})
    locked.chmod(0)
    daemon = UnprivilegedDaemon(config)
    with daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        wait_for(lambda: "locked" in failed(config), timeout=30, message="locked failed")
        assert daemon.stop() == 0
    locked.chmod(0o644)
    with daemon:
        wait_for(lambda: "locked" in delivered(tmp_path), timeout=30, message="delivered after the start")
        assert daemon.stop() == 0


def _invalid(daemon, key: str) -> bool:
    rows = daemon.store.query("SELECT state FROM items WHERE key=?", (key,))
    return bool(rows) and rows[0]["state"] == "invalid"


def test_retry_shows_the_item_settling_and_the_daemon_reads_it_at_its_next_pass(make_daemon, inbox, tmp_path,
                                                                                   caplog):
    target = ScriptedTarget("fake")
    (inbox / "bad.png").write_bytes(b"not an image" * 10)
    daemon = make_daemon({"fake": target})
    clock = drive(daemon, until=lambda: _invalid(daemon, "bad"))
    caplog.set_level(logging.WARNING, logger="syncd")
    caplog.clear()

    # `syncd retry bad`, as its own process does it: another connection.
    other = Store.open(tmp_path / "state")
    assert other.requeue(["bad"], time.time()) == 2
    other.close()
    shown = status.collect(daemon.config)["folders"][0]
    assert shown["settling"] == 1 and shown["not_settling"] == []  # settling, without the old error
    assert shown["targets"][0]["failed_items"] == []

    assert daemon.settler.next_rescan > clock + 100  # no rescan is due: the next pass follows the retry
    daemon.tick(clock + 1)
    assert _invalid(daemon, "bad") and "item bad is invalid" in caplog.text  # read again, still bad, said so


def test_a_changed_mode_reads_an_invalid_item_again_and_an_unchanged_one_not(make_daemon, inbox, caplog):
    """As root the file stays readable: what is asserted is that a chmod alone is looked at."""
    bad = inbox / "bad.png"
    bad.write_bytes(b"not an image" * 10)
    daemon = make_daemon({"fake": ScriptedTarget("fake")})
    clock = drive(daemon, until=lambda: _invalid(daemon, "bad"))
    caplog.set_level(logging.WARNING, logger="syncd")
    caplog.clear()
    daemon.scan(clock)
    assert daemon.settling == {} and "is invalid" not in caplog.text  # unchanged: not read again
    os.chmod(bad, 0o600)
    daemon.scan(clock + 1)
    assert [entry.files.key for entry in daemon.settling.values()] == ["bad"]
    drive(daemon, now=clock - 3600 + 2, until=lambda: _invalid(daemon, "bad"))
    assert "item bad is invalid" in caplog.text
