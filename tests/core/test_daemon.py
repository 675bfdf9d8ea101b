"""The coordinator driven tick by tick: settle, deliver, update, retry, pause, delete, recover."""

from __future__ import annotations

import json
import threading
import time

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.journal.store import Store
from tests.conftest import ScriptedTarget, drive
from tests.helpers import age_files, image_bytes, write_item


def states(daemon, target="fake"):
    rows = daemon.store.query(
        "SELECT i.key, d.state, d.error, d.next_attempt_at FROM deliveries d JOIN items i ON i.id=d.item_id "
        "WHERE d.target=?",
        (target,),
    )
    return {r["key"]: r for r in rows}


def test_delivers_every_item_once_and_updates_in_place(make_daemon, inbox, scripted):
    for i in range(5):
        write_item(inbox / "cam1", f"f{i}", metadata={"i": i})
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    assert sorted(scripted.items) == [f"cam1/f{i}" for i in range(5)]
    assert all(not update for _, _, update in scripted.sent)
    (inbox / "cam1" / "f2.json").write_text(json.dumps({"metadata": {"i": 2, "edited": True}}))
    age_files(inbox / "cam1" / "f2.json")
    daemon.scan(time.time())
    drive(daemon)
    assert len(scripted.sent) == 6
    assert scripted.sent[-1][0] == "cam1/f2" and scripted.sent[-1][2] is True  # an update, not a new item
    assert scripted.items["cam1/f2"]["metadata"] == {"i": 2, "edited": True}


def test_fresh_file_waits_for_settle_seconds(make_daemon, inbox, scripted):
    daemon = make_daemon({"fake": scripted}, daemon={"settle_seconds": 5.0})
    write_item(inbox, "fresh", old=False)
    now = time.time()
    daemon.scan(now)
    daemon.tick(now + 1)
    assert daemon.settling and not scripted.sent
    daemon.tick(now + 6)  # quiet for settle_seconds by our clock
    drive(daemon)
    assert list(scripted.items) == ["fresh"]


def test_unchanged_files_are_not_rehashed_on_rescan(make_daemon, inbox, scripted):
    write_item(inbox, "a", metadata={})
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    before = daemon.store.query("SELECT updated_at FROM items")[0]["updated_at"]
    daemon.scan(time.time() + 10)
    assert daemon.settling == {}
    assert daemon.store.query("SELECT updated_at FROM items")[0]["updated_at"] == before


def test_transient_errors_back_off_in_the_journal_then_succeed(make_daemon, inbox, scripted):
    write_item(inbox, "flaky")
    scripted.script["flaky"] = [TransientError("503", retry_after=30), TransientError("reset")]
    daemon = make_daemon({"fake": scripted})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=2)
    row = states(daemon)["flaky"]
    assert row["state"] == "pending" and row["next_attempt_at"] >= now + 30  # Retry-After honoured
    assert "503" in row["error"]
    drive(daemon, step=60)
    assert "flaky" in scripted.items and states(daemon)["flaky"]["state"] == "acked"


def test_permanent_error_fails_one_item_and_others_go_on(make_daemon, inbox, scripted):
    for name in ("good1", "poison", "good2"):
        write_item(inbox, name)
    scripted.script["poison"] = [PermanentError("HTTP 400: bad item")]
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    rows = states(daemon)
    assert rows["poison"]["state"] == "failed" and "bad item" in rows["poison"]["error"]
    assert rows["good1"]["state"] == rows["good2"]["state"] == "acked"
    # syncd retry requeues it; this time the platform accepts it.
    assert daemon.store.requeue(["poison"], time.time()) >= 1
    drive(daemon)
    assert states(daemon)["poison"]["state"] == "acked"


def test_fatal_error_pauses_one_target_while_the_other_goes_on(make_daemon, inbox):
    good, broken = ScriptedTarget("good"), ScriptedTarget("broken")
    broken.check_error = FatalTargetError("HTTP 401: bad key")
    write_item(inbox, "a")
    daemon = make_daemon({"good": good, "broken": broken})
    drive(daemon, until=lambda: "a" in good.items and "broken" in daemon.paused)
    assert broken.items == {}
    paused = daemon.store.query("SELECT paused_reason FROM targets WHERE name='broken'")[0]["paused_reason"]
    assert "401" in paused
    broken.check_error = None  # the key was fixed: the re-check resumes the target
    drive(daemon, until=lambda: "a" in broken.items, step=120)


def test_newer_version_waits_for_the_one_in_flight(make_daemon, inbox, scripted):
    write_item(inbox, "a", metadata={"v": 1})
    scripted.gate = threading.Event()
    daemon = make_daemon({"fake": scripted})
    now = time.time() + 3600
    daemon.tick(now)
    assert states(daemon)["a"]["state"] == "in_flight"
    assert scripted.entered.wait(5)  # the request is on the wire
    (inbox / "a.json").write_text(json.dumps({"metadata": {"v": 2}}))
    age_files(inbox / "a.json")
    daemon.scan(now + 1)
    daemon.tick(now + 2)
    assert len(daemon.in_flight) == 1  # never two deliveries of one item to one target
    scripted.gate.set()
    drive(daemon)
    assert [update for _, _, update in scripted.sent] == [False, True]  # v1 then v2, in order
    assert scripted.items["a"]["metadata"] == {"v": 2}


def test_after_upload_delete_removes_files_only_once_acked(make_daemon, inbox):
    good, failing = ScriptedTarget("good"), ScriptedTarget("failing")
    write_item(inbox, "keepme", metadata={"k": 1})
    write_item(inbox, "deleteme", metadata={"k": 1})
    failing.script["keepme"] = [PermanentError("refused")]
    daemon = make_daemon({"good": good, "failing": failing}, folder={"after_upload": "delete"})
    drive(daemon)
    assert not (inbox / "deleteme.png").exists() and not (inbox / "deleteme.json").exists()
    assert (inbox / "keepme.png").exists()  # one target has not acked it: nothing is lost
    assert set(good.items) == {"keepme", "deleteme"}


def test_vanished_image_cancels_pending_delivery(make_daemon, inbox, scripted):
    write_item(inbox, "a")
    scripted.check_error = FatalTargetError("down")
    daemon = make_daemon({"fake": scripted})
    drive(daemon, until=lambda: "fake" in daemon.paused)
    (inbox / "a.png").unlink()
    daemon.scan(time.time())
    assert daemon.store.query("SELECT state FROM items")[0]["state"] == "gone"


def test_missing_folder_pauses_and_is_not_everything_deleted(make_daemon, inbox, scripted, tmp_path):
    write_item(inbox, "a")
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    inbox.rename(tmp_path / "unmounted")
    daemon.tick(time.time())
    assert daemon.folders[0].missing
    assert daemon.store.query("SELECT state FROM items")[0]["state"] == "ready"
    (tmp_path / "unmounted").rename(inbox)
    drive(daemon)
    assert not daemon.folders[0].missing and len(scripted.sent) == 1


def test_crash_recovery_looks_up_create_only_targets(make_daemon, inbox, tmp_path):
    target = ScriptedTarget("fake", create_only=True)
    write_item(inbox, "a")
    daemon = make_daemon({"fake": target})
    drive(daemon)
    # Simulate a crash after the request was committed but before the ack was journaled.
    daemon.store._tx([("UPDATE deliveries SET state='in_flight', acked_version=NULL, receipt=NULL", ())])
    daemon.close(wait_seconds=0)
    again = make_daemon({"fake": target})
    drive(again)
    assert target.lookups == 1 and len(target.sent) == 1  # adopted, not sent twice
    assert states(again)["a"]["state"] == "acked"


def test_second_daemon_on_the_same_state_dir_is_refused(make_daemon, scripted):
    import pytest

    from syncd.errors import LocalError

    make_daemon({"fake": scripted})
    with pytest.raises(LocalError, match="already using the state directory"):
        make_daemon({"fake": ScriptedTarget()})


def test_invalid_item_is_failed_and_retried_when_fixed(make_daemon, inbox, scripted):
    (inbox / "bad.png").write_bytes(b"garbage")
    age_files(inbox / "bad.png")
    write_item(inbox, "good")
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    row = states(daemon)["bad"]
    assert row["state"] == "failed" and "bad.png" in row["error"]
    (inbox / "bad.png").write_bytes(image_bytes(seed=3))
    age_files(inbox / "bad.png")
    daemon.scan(time.time())
    drive(daemon)
    assert states(daemon)["bad"]["state"] == "acked" and set(scripted.items) == {"good", "bad"}


def test_journal_survives_reopen(make_daemon, inbox, scripted, tmp_path):
    write_item(inbox, "a")
    daemon = make_daemon({"fake": scripted})
    drive(daemon)
    daemon.close(wait_seconds=0)
    store = Store.open(tmp_path / "state")
    try:
        assert store.counts().get("acked") == 1
    finally:
        store.close()


def test_parts_a_target_could_not_send_are_shown_in_status(make_daemon, inbox):
    from syncd.targets.base import Receipt

    class Partial(ScriptedTarget):
        def deliver(self, upload):
            receipt = super().deliver(upload)
            return Receipt(receipt.remote_id, {**receipt.extra, "not_sent": ["mask: nibabel is not installed"]})

    target = Partial("fake")
    write_item(inbox, "a")
    daemon = make_daemon({"fake": target})
    drive(daemon)
    note = daemon.store.query("SELECT note FROM deliveries")[0]["note"]
    assert note == "not sent: mask: nibabel is not installed"
    assert daemon.store.requeue_incomplete(time.time()) == 1  # syncd retry --incomplete
    drive(daemon)
    assert len(target.sent) == 2 and target.sent[-1][2] is True  # sent again, as an update
