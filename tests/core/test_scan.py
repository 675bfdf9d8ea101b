"""Rescan fast paths (syncd.scan): directory digests and listing signatures must never hide a
change — a file rewritten in place, a requeued item, new rules, a parent's class map, items
or whole directories that vanished."""

from __future__ import annotations

import json
import os
import shutil
import time

from syncd.journal.store import Store
from syncd.scan import Scan
from tests.conftest import drive
from tests.helpers import age_files, image_bytes, mask_bytes, write_item


def fresh_scan(daemon) -> Scan:
    folder = daemon.folders[0]
    return Scan(daemon.store, folder.name, folder.root, folder.rules, folder.settings.key_prefix)


def settled_and_digested(daemon):
    """Deliver everything, then rescan once: the rescan stores the directories' digests."""
    drive(daemon)
    daemon.scan(time.time() + 7200)
    return fresh_scan(daemon)


def item_states(daemon) -> dict[str, str]:
    return {r["key"]: r["state"] for r in daemon.store.query("SELECT key, state FROM items")}


def test_unchanged_directories_are_skipped_whole(make_daemon, inbox, scripted):
    for i in range(3):
        write_item(inbox / "cam1", f"a{i}", metadata={"i": i})
    for i in range(2):
        write_item(inbox / "cam2" / "deep", f"b{i}")
    daemon = make_daemon({"fake": scripted})
    scan = settled_and_digested(daemon)
    assert list(scan.items()) == []
    assert scan.skipped == {"": 0, "cam1/": 3, "cam2/": 0, "cam2/deep/": 2}
    assert scan.vanished() == []
    assert len(scripted.sent) == 5


def test_a_file_rewritten_in_place_is_found_in_a_digested_directory(make_daemon, inbox, scripted):
    for i in range(3):
        write_item(inbox / "cam1", f"a{i}", metadata={"i": i})
    daemon = make_daemon({"fake": scripted})
    settled_and_digested(daemon)
    sidecar = inbox / "cam1" / "a1.json"
    with open(sidecar, "r+") as handle:  # same inode, same size: only the mtime tells
        text = handle.read()
        handle.seek(0)
        handle.write(text.replace('"i": 1', '"i": 7'))
    age_files(sidecar, seconds=1800)
    assert [f.key for f in fresh_scan(daemon).items()] == ["cam1/a1"]
    daemon.scan(time.time() + 7200)
    drive(daemon)
    assert scripted.items["cam1/a1"]["metadata"] == {"i": 7}
    assert len(scripted.sent) == 4


def test_a_requeued_item_is_observed_again_although_its_files_are_unchanged(make_daemon, inbox, scripted):
    (inbox / "cam1").mkdir()
    (inbox / "cam1" / "bad.png").write_bytes(b"not an image")
    age_files(inbox / "cam1" / "bad.png")
    write_item(inbox / "cam1", "good")
    daemon = make_daemon({"fake": scripted})
    scan = settled_and_digested(daemon)
    assert list(scan.items()) == [] and scan.skipped["cam1/"] == 2  # the invalid item counts as settled
    daemon.store.requeue(["cam1/bad"], time.time())  # `syncd retry cam1/bad`
    assert [f.key for f in fresh_scan(daemon).items()] == ["cam1/bad"]


def test_changed_rules_find_items_in_digested_directories(make_daemon, inbox, scripted, tmp_path):
    write_item(inbox, "keep")
    write_item(inbox, "skip_me")
    first = make_daemon({"fake": scripted}, folder={"exclude": ["skip_*"]})
    settled_and_digested(first)
    assert set(scripted.items) == {"keep"}
    first.close(wait_seconds=0)
    second = make_daemon({"fake": scripted})
    drive(second)
    assert set(scripted.items) == {"keep", "skip_me"}


def test_a_parent_class_map_change_is_seen_below_it(make_daemon, inbox, scripted):
    (inbox / "class_map.json").write_text(json.dumps({"road": [255, 0, 0]}))
    age_files(inbox / "class_map.json")
    write_item(inbox / "cam1", "m", mask=mask_bytes(colours=((0, 0, 0), (255, 0, 0))))
    daemon = make_daemon({"fake": scripted})
    settled_and_digested(daemon)
    assert len(scripted.sent) == 1
    (inbox / "class_map.json").write_text(json.dumps({"lane": [255, 0, 0]}))
    age_files(inbox / "class_map.json", seconds=1800)
    assert [f.key for f in fresh_scan(daemon).items()] == ["cam1/m"]
    daemon.scan(time.time() + 7200)
    drive(daemon)
    assert len(scripted.sent) == 2


def test_vanished_items_and_directories_are_marked_gone(make_daemon, inbox, scripted):
    for directory in ("cam1", "cam2", "cam3"):
        for i in range(2):
            write_item(inbox / directory, f"f{i}")
    daemon = make_daemon({"fake": scripted})
    settled_and_digested(daemon)
    (inbox / "cam1" / "f0.png").unlink()
    shutil.rmtree(inbox / "cam2")
    daemon.scan(time.time() + 7200)
    states = item_states(daemon)
    assert states == {"cam1/f0": "gone", "cam1/f1": "ready", "cam2/f0": "gone", "cam2/f1": "gone",
                      "cam3/f0": "ready", "cam3/f1": "ready"}


def test_a_new_file_in_a_digested_directory_is_found(make_daemon, inbox, scripted):
    write_item(inbox / "cam1", "a")
    daemon = make_daemon({"fake": scripted})
    settled_and_digested(daemon)
    write_item(inbox / "cam1", "b")
    daemon.scan(time.time() + 7200)
    drive(daemon)
    assert set(scripted.items) == {"cam1/a", "cam1/b"}


def test_the_journal_forgets_a_directory_digest_when_an_item_changes(tmp_path):
    store = Store.open(tmp_path / "state")
    try:
        folder, directory = "/w/inbox", "/w/inbox/cam1/"
        item_id = store.observe(folder, "cam1/a", directory + "a.png", None, None, "1:2:3|-|-|-", 1.0)
        store.settled(item_id, "v1", ["t"], 2.0)
        store.save_dir_digests(folder, [(directory, "cam1/", "d1", 1)])
        assert store.dir_digests(folder) == {directory: ("d1", 1)}
        store.conn.execute("UPDATE items SET error='x' WHERE id=?", (item_id,))  # not a state change
        assert store.dir_digests(folder) == {directory: ("d1", 1)}
        store.resettle(item_id, 3.0)
        assert store.dir_digests(folder) == {}
        # A digest is not saved while an item below it is not settled.
        store.save_dir_digests(folder, [(directory, "cam1/", "d2", 1)])
        assert store.dir_digests(folder) == {}
        store.settled(item_id, "v1", ["t"], 4.0)
        store.save_dir_digests(folder, [(directory, "cam1/", "d3", 1)])
        assert store.dir_digests(folder) == {directory: ("d3", 1)}
        store.gone(item_id, 5.0)
        assert store.dir_digests(folder) == {}
    finally:
        store.close()


def test_unusual_files_take_the_full_path(make_daemon, inbox, scripted):
    write_item(inbox / "cam1", "a")
    daemon = make_daemon({"fake": scripted})
    settled_and_digested(daemon)
    os.symlink(inbox / "cam1" / "missing.png", inbox / "cam1" / "broken.png")
    scan = fresh_scan(daemon)
    assert [f.key for f in scan.items()] == ["cam1/broken"]  # no digest: the daemon's checks decide
    assert image_bytes(seed=0)  # the fixture image is still valid


def test_digests_with_a_key_prefix(make_daemon, inbox, scripted):
    write_item(inbox, "top")
    write_item(inbox / "cam1", "a")
    daemon = make_daemon({"fake": scripted}, folder={"key_prefix": "site-a"})
    scan = settled_and_digested(daemon)
    assert list(scan.items()) == [] and scan.skipped == {"site-a/": 1, "site-a/cam1/": 1}
    assert scan.vanished() == []
    (inbox / "cam1" / "a.png").unlink()
    daemon.scan(time.time() + 9000)
    assert item_states(daemon) == {"site-a/top": "ready", "site-a/cam1/a": "gone"}
