"""``after_upload = "delete"`` as a user sees it (issue 10, items 12 and 13): what ``status``
counts after the files are gone, what the log says, a name used again, a companion that
arrives after its image was delivered and deleted."""

from __future__ import annotations

import json
import logging

from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import run_cli, run_once, write_config
from tests.helpers import write_atomic, write_item


def delete_config(tmp_path):
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        folders=[{"path": "inbox", "targets": ["local"], "after_upload": "delete"}])


def folder_status(config) -> dict:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["folders"][0]


def gone_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]


# -- item 13: counting what was delivered and deleted -------------------------------------------
def test_status_counts_what_was_delivered_and_deleted_across_runs(tmp_path):
    config = delete_config(tmp_path)
    for i in range(3):
        write_item(tmp_path / "inbox", f"a{i}", metadata={"i": i}, seed=i)
    first = run_once(config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not list((tmp_path / "inbox").iterdir())
    for run in range(2):  # right after, and after another run that finds the folder empty
        folder = folder_status(config)
        assert folder["deleted_after_upload"] == 3, (run, folder)
        assert folder["targets"][0]["delivered"] == 3, (run, folder)
        assert folder["items"] == 3
        text = run_cli("status", "--config", str(config)).stdout
        assert "3 items, 0 settling, 3 deleted after upload" in text and "-> local: 3 delivered" in text, text
        again = run_once(config)
        assert again.returncode == 0 and "is gone" not in again.stderr, again.stderr
        assert again.stdout.startswith("3 delivered"), again.stdout


def test_the_events_of_files_deleted_after_upload_log_nothing_and_keep_the_count(make_daemon, inbox, caplog):
    """A watching daemon hears the deletion of each file it removed (image, sidecar): these are
    not items gone, and the state stays 'deleted'."""
    caplog.set_level(logging.INFO)
    paths = []
    for i in range(3):
        image = write_item(inbox, f"a{i}", metadata={"i": i}, seed=i)
        paths += [image, image.with_suffix(".json")]
    daemon = make_daemon(folder={"after_upload": "delete"})
    clock = drive(daemon)
    for path in paths:  # what inotify reports for the files after_upload removed
        daemon.watcher.events.put(str(path))
    drive(daemon, now=clock - 3600)
    assert gone_lines(caplog) == []
    states = [row["state"] for row in daemon.store.query("SELECT state FROM items")]
    assert states == ["deleted"] * 3
    deleted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("deleted local files of")]
    assert len(deleted) == 3


def test_an_item_removed_by_the_user_is_gone_once_in_the_log(make_daemon, inbox, caplog):
    caplog.set_level(logging.INFO)
    image = write_item(inbox, "a", metadata={"n": 1})
    daemon = make_daemon()
    clock = drive(daemon)
    image.unlink()
    image.with_suffix(".json").unlink()
    for path in (image, image.with_suffix(".json"), image):
        daemon.watcher.events.put(str(path))
    clock = drive(daemon, now=clock - 3600)
    daemon.scan(clock)
    assert gone_lines(caplog) == [f"item a is gone from {inbox}"]


def test_a_name_used_again_after_deletion_replaces_the_delivered_item(tmp_path):
    """The same key is the same item: a new file with the name of one delivered and deleted
    replaces it remotely (an update, never a second item); the log says so."""
    config = delete_config(tmp_path)
    write_item(tmp_path / "inbox", "frame_0001", metadata={"take": 1}, seed=1)
    assert run_once(config).returncode == 0
    write_item(tmp_path / "inbox", "frame_0001", metadata={"take": 2}, seed=2)
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "frame_0001 was delivered and deleted before: this new file replaces it on local" in result.stderr
    record = json.loads((tmp_path / "synced" / "frame_0001.json").read_text())
    assert record["metadata"] == {"take": 2}
    folder = folder_status(config)
    assert folder["targets"][0]["delivered"] == 1 and folder["deleted_after_upload"] == 1


def test_the_same_file_dropped_again_sends_nothing_and_is_deleted_again(tmp_path):
    """rsync from a source that keeps its files brings them back after each deletion."""
    config = delete_config(tmp_path)
    write_item(tmp_path / "inbox", "a", metadata={"n": 1})
    assert run_once(config).returncode == 0
    write_item(tmp_path / "inbox", "a", metadata={"n": 1})
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replaces" not in result.stderr and "delivered to" not in result.stderr, result.stderr
    assert not list((tmp_path / "inbox").iterdir())
    log = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()
    assert len(log) == 1
    assert folder_status(config)["deleted_after_upload"] == 1


def _states(daemon) -> dict[str, str]:
    return {r["key"]: r["state"] for r in daemon.store.query("SELECT key, state FROM items")}


def test_a_crash_between_deleting_and_journaling_still_counts_as_deleted(make_daemon, inbox):
    """The files were removed but the daemon stopped before journaling it: the next scan finds
    them missing, and an item every target acked is 'deleted', not 'gone'."""
    write_item(inbox, "a")
    daemon = make_daemon(folder={"after_upload": "delete"})
    clock = drive(daemon)
    assert not (inbox / "a.png").exists()
    daemon.store._tx([("UPDATE items SET state='ready'", ())])  # as if the deletion was never journaled
    daemon.scan(clock + 1)
    assert _states(daemon) == {"a": "deleted"}


# -- item 12: a companion that arrives after its image was delivered and deleted -----------------
def test_a_late_sidecar_updates_the_delivered_item(tmp_path):
    """The local target gives the delivered image back: it is put beside the sidecar, the item
    is delivered again whole (an update of the same record) and both are deleted."""
    config = delete_config(tmp_path)
    inbox = tmp_path / "inbox"
    write_item(inbox / "cam", "a", seed=3)
    assert run_once(config).returncode == 0
    assert json.loads((tmp_path / "synced" / "cam" / "a.json").read_text())["metadata"] == {}
    write_atomic(inbox / "cam" / "a.json", json.dumps({"metadata": {"late": True}}))
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a.json arrived after cam/a was delivered and deleted: its image is put back from local" in result.stderr
    assert "replaces" not in result.stderr
    record = json.loads((tmp_path / "synced" / "cam" / "a.json").read_text())
    assert record["metadata"] == {"late": True} and record["key"] == "cam/a"
    assert not list((inbox / "cam").iterdir())  # delivered together, then deleted together
    log = [json.loads(line)["key"] for line in
           (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()]
    assert log == ["cam/a", "cam/a"]  # the first delivery and its update: one record
    folder = folder_status(config)
    assert folder["late_companions"] == [] and folder["deleted_after_upload"] == 1
    assert folder["targets"][0]["delivered"] == 1


def test_a_late_sidecar_seen_live_updates_the_item(make_daemon, inbox):
    image = write_item(inbox, "a")
    daemon = make_daemon(folder={"after_upload": "delete"})
    clock = drive(daemon)
    sidecar = write_atomic(inbox / "a.json", json.dumps({"metadata": {"n": 2}}))
    for path in (image, sidecar):  # the deletion's event, then the sidecar's
        daemon.watcher.events.put(str(path))
    drive(daemon, now=clock - 3600)
    record = json.loads((daemon.config.target_settings["local"].path / "a.json").read_text())
    assert record["metadata"] == {"n": 2}
    assert not list(inbox.iterdir())


def test_a_late_sidecar_a_target_cannot_take_is_named_by_status(make_daemon, inbox):
    """A platform that cannot give the image back: the sidecar stays, status names it (with
    what to do), and the note goes when the sidecar is removed."""
    target = ScriptedTarget("fake")
    write_item(inbox, "a")
    daemon = make_daemon({"fake": target}, folder={"after_upload": "delete"})
    clock = drive(daemon)
    sidecar = write_atomic(inbox / "a.json", json.dumps({"metadata": {"n": 2}}))
    daemon.watcher.events.put(str(sidecar))
    clock = drive(daemon, now=clock - 3600)
    notes = daemon.store.late_companions(str(inbox))
    assert notes == [("a", "a.json arrived after a was delivered and deleted after upload, and is not delivered "
                           "(fake cannot give its image back): put a.png back beside it to deliver them together, "
                           "or remove it")]
    assert sidecar.exists() and len(target.sent) == 1
    status = run_cli("status", "--config", str(daemon.config.config_path)).stdout
    assert "LATE a: a.json arrived after a was delivered" in status
    daemon.scan(clock)  # a rescan finds it again: still one note, not logged twice
    assert daemon.store.late_companions(str(inbox)) == notes
    sidecar.unlink()
    daemon.scan(clock + 1)
    assert daemon.store.late_companions(str(inbox)) == []
