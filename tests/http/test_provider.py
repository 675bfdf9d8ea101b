"""The seam between the daemon and the listener (syncd.http.provider.Provider): health, the
history, and status read through a read-only connection of a real journal. Time is a
parameter: a fake monotonic clock ages the last pass."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from syncd.config import load_config
from syncd.errors import LocalError
from syncd.http.provider import STALL_SECONDS, Provider
from syncd.journal.schema import DB_NAME
from syncd.journal.store import Store
from tests.daemon_harness import run_cli, write_config
from tests.http.live import without_time as live_without_time


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(tmp_path):
    path = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"},
                                   "other": {"platform": "local", "path": "other"}})
    path.write_text(path.read_text() + '\n[http]\nlisten = "127.0.0.1:9464"\nsample_seconds = 300\n')
    return load_config(path)


@pytest.fixture
def journal(config):
    store = Store.open(config.daemon.state_dir)
    yield store
    store.close()


def test_unhealthy_until_the_first_pass_then_healthy(config, journal):
    provider = Provider(config, monotonic=Clock())
    healthy, details = provider.health()
    assert not healthy and details["problems"] == ["starting: the first scan is not finished"]
    provider.passed(journal_error=None)
    healthy, details = provider.health()
    assert healthy, details
    assert details["problems"] == [] and details["last_pass_seconds_ago"] == 0 and details["state_free_bytes"] > 0


def test_a_loop_that_stopped_passing_is_unhealthy(config, journal):
    clock = Clock()
    provider = Provider(config, monotonic=clock)
    provider.passed(journal_error=None)
    clock.now += STALL_SECONDS - 1
    assert provider.health()[0]
    clock.now += 2
    healthy, details = provider.health()
    assert not healthy and details["problems"] == [f"the loop has not completed a pass for {STALL_SECONDS + 1:.0f}s"]
    provider.passed(journal_error=None)  # it passes again
    assert provider.health()[0]


def test_a_journal_that_cannot_be_written_is_unhealthy_with_the_reason(config, journal):
    provider = Provider(config, monotonic=Clock())
    provider.passed(journal_error="the disk holding /x/syncd.db is full: free some space")
    healthy, details = provider.health()
    assert not healthy
    assert details["problems"] == [
        "the journal cannot be written: the disk holding /x/syncd.db is full: free some space"]
    provider.passed(journal_error=None)
    assert provider.health()[0]


def test_a_paused_target_is_reported_not_unhealthy(config, journal):
    journal.set_paused("other", "target 'other': cannot create /x: Not a directory", time.time())
    provider = Provider(config, monotonic=Clock())
    provider.passed(journal_error=None)
    healthy, details = provider.health()
    assert healthy
    assert details["paused_targets"] == [
        {"target": "other", "reason": "target 'other': cannot create /x: Not a directory"}]


def test_history_keeps_one_hour_of_samples(config):
    clock = Clock()
    provider = Provider(config, monotonic=clock)  # sample_seconds = 300: 13 samples span an hour
    assert provider.sample_due()
    for n in range(20):
        provider.sample(1e9 + 300 * n, backlog=20 - n, delivered=n, sent_bytes=100 * n)
        assert not provider.sample_due()
        clock.now += 300
        assert provider.sample_due()
    history = provider.history()
    assert history["step_seconds"] == 300 and len(history["samples"]) == 13
    assert history["samples"][0] == {"at": 1e9 + 300 * 7, "backlog": 13, "delivered": 7, "bytes": 700}
    assert history["samples"][-1]["delivered"] == 19


def test_status_json_is_what_syncd_status_json_prints(config, journal, tmp_path):
    item = journal.observe(str(config.folders[0].path), "cam/a", str(tmp_path / "inbox/cam/a.png"), None, None,
                           "sig", time.time())
    journal.invalid(item, "inbox/cam/a.png: the image is truncated", ["local", "other"], time.time())
    journal.set_paused("other", "bad key", time.time())
    clock = Clock()
    provider = Provider(config, monotonic=clock)
    served = provider.status_json()
    printed = run_cli("status", "--json", "--config", str(config.config_path)).stdout

    def without_time(text):
        return live_without_time(json.loads(text))

    assert without_time(served) == without_time(printed)
    assert served.decode().endswith("}\n") and served.decode().count("\n") == printed.count("\n")
    assert without_time(served)["folders"][0]["targets"][0]["failed_items"] == [
        {"key": "cam/a", "reason": "inbox/cam/a.png: the image is truncated"}]
    # Read at most once a second: a crowd of pages costs one status read.
    journal.set_paused("other", None, time.time())
    assert provider.status_json() is served
    clock.now += 1.5
    assert json.loads(provider.status_json())["targets"][1]["paused"] is None


def test_status_json_without_a_journal_is_a_local_error(config):
    provider = Provider(config, monotonic=Clock())
    with pytest.raises(LocalError, match="no journal"):
        provider.status_json()


def test_the_listener_never_migrates_the_journal_the_daemon_is_opening(config):
    """The daemon creates the journal file, then migrates it: a status read in between must
    not run a second migration (it made the daemon fail with 'table items already exists')."""
    config.daemon.state_dir.mkdir(parents=True)
    db = config.daemon.state_dir / DB_NAME
    sqlite3.connect(db).close()  # the file exists, its schema does not yet
    provider = Provider(config, monotonic=Clock())
    with pytest.raises(LocalError, match="is being opened by the daemon"):
        provider.status_json()
    provider.passed(journal_error=None)
    healthy, details = provider.health()
    assert not healthy and any("is being opened by the daemon" in p for p in details["problems"])
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()
    Store.open(config.daemon.state_dir).close()  # the daemon's own migration goes through
    assert json.loads(provider.status_json())["folders"][0]["items"] == 0
