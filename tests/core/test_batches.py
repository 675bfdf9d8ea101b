"""Batches (syncd.dispatch, syncd.delivery) driven tick by tick against the scripted target:
batches formed up to ``max_batch``, a lone item sent at once, one refused item failing alone,
a lost reply for a whole batch recovered item by item, send-alone, throttling."""

from __future__ import annotations

import threading
import time

from syncd.errors import PermanentError, SendAlone, TransientError
from tests.conftest import ScriptedTarget, drive
from tests.helpers import write_item


def rows(daemon) -> dict[str, dict]:
    return {r["key"]: r for r in daemon.store.query(
        "SELECT i.key, d.state, d.error, d.attempts, d.solo, d.outcome_unknown, d.next_attempt_at "
        "FROM deliveries d JOIN items i ON i.id=d.item_id")}


def write_items(inbox, count: int, prefix: str = "f") -> list[str]:
    for i in range(count):
        write_item(inbox, f"{prefix}{i:02d}", metadata={"i": i}, seed=i)
    return [f"{prefix}{i:02d}" for i in range(count)]


def test_due_items_go_in_batches_of_at_most_max_batch(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    target.gate = threading.Event()  # the first batches wait on the platform while the rest settles
    # The two slots of one worker take at most 20 items before the gate opens: of 35, at least
    # 15 are due at once afterwards, and full batches go first.
    keys = write_items(inbox, 35)
    daemon = make_daemon({"fake": target})
    drive(daemon, until=lambda: not daemon.settling and target.entered.is_set())
    target.gate.set()
    drive(daemon)
    assert sorted(key for key, _, _ in target.sent) == keys  # each once
    assert all(1 <= len(batch) <= 10 for batch in target.batches)
    assert max(len(batch) for batch in target.batches) == 10  # two slots of one worker: full batches
    assert sum(len(batch) for batch in target.batches) == 35
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_a_lone_item_is_sent_at_once_without_waiting_for_a_batch(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10)
    write_item(inbox, "alone")
    daemon = make_daemon({"fake": target})
    daemon.tick(time.time() + 3600)  # one pass: settled, intent journaled, handed over
    assert rows(daemon)["alone"]["state"] == "in_flight"
    daemon._collect(time.time() + 3600, block=5)
    assert target.batches == [["alone"]] and rows(daemon)["alone"]["state"] == "acked"


def test_one_refused_item_in_a_batch_fails_alone(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    keys = write_items(inbox, 6)
    target.script["f03"] = [PermanentError("HTTP 400: f03 is refused")]
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert any("f03" in batch and len(batch) > 1 for batch in target.batches)  # it travelled with others
    states = rows(daemon)
    assert states["f03"]["state"] == "failed" and "f03 is refused" in states["f03"]["error"]
    assert all(states[key]["state"] == "acked" for key in keys if key != "f03")
    assert len([b for b in target.batches if "f03" in b]) == 1  # not sent again


def test_a_lost_reply_for_a_whole_batch_is_recovered_item_by_item(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1, create_only=True)
    keys = write_items(inbox, 4)
    target.batch_script = ["lose_reply"]
    daemon = make_daemon({"fake": target}, daemon={"retry_base_seconds": 1, "retry_max_seconds": 1})
    drive(daemon, step=5)
    # Every item landed with the lost reply; each was looked up and adopted, none sent twice.
    assert sorted(key for key, _, _ in target.sent) == keys
    assert target.lookups == 4
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_a_batch_refused_as_a_whole_is_sent_item_by_item(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    keys = write_items(inbox, 3)
    target.batch_script = [SendAlone("HTTP 400: one item of the request is bad")]
    target.script["f01"] = [PermanentError("HTTP 400: f01 is bad")]
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert target.batches[0] == keys
    assert sorted(target.batches[1:]) == [[key] for key in keys]  # then each alone
    states = rows(daemon)
    assert states["f01"]["state"] == "failed" and "f01 is bad" in states["f01"]["error"]
    assert states["f00"]["state"] == states["f02"]["state"] == "acked"
    assert all(r["solo"] == 0 for r in states.values())  # back to batches once settled


def test_a_whole_request_refused_permanently_splits_the_batch(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    keys = write_items(inbox, 3)
    target.batch_script = [PermanentError("HTTP 413: request too large")]
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert target.batches[0] == keys and sorted(target.batches[1:]) == [[key] for key in keys]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_throttled_batch_holds_the_target_not_the_items(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    keys = write_items(inbox, 3)
    target.batch_script = [TransientError("HTTP 429", retry_after=30, throttled=True)]
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=5)
    states = rows(daemon)
    # No backoff of their own and no attempt counted: the items are due, the target held.
    assert all(r["state"] == "pending" and r["next_attempt_at"] <= now and r["attempts"] == 0
               for r in states.values())
    daemon.tick(now + 10)
    daemon._collect(now + 10, block=0.2)
    assert len(target.batches) == 1  # held for Retry-After
    assert daemon.next_deadline(now + 10) <= now + 30  # the loop wakes when the hold ends
    drive(daemon, now=now + 31 - 3600)
    assert sorted(key for key, _, _ in target.sent) == keys
    assert daemon.store.target_rates()["fake"][1] == "unlimited"


def test_a_fault_while_the_target_serves_others_is_retried_soon_not_after_the_items_own_backoff():
    """The backoff of a faulted item follows its target's run of failed requests: while the
    target answers others, even an item's fourth fault is retried after ``retry_base`` (its
    own count would have waited up to 8x that); when every request fails, it doubles per
    fault; an item that failed QUICK_RETRIES times backs off on its own count."""
    from syncd.health import QUICK_RETRIES, RateGate

    gate = RateGate("fake", workers=1, rate_limit=0)
    for attempts in (1, 2, 4):
        gate.faulted()
        assert gate.retry_attempts(attempts) == 1
        gate.served(0.0)
    gate.faulted()
    gate.faulted()
    gate.faulted()
    assert gate.retry_attempts(4) == 3 and gate.retry_attempts(2) == 2  # the target fails: doubling
    assert gate.retry_attempts(QUICK_RETRIES + 1) == QUICK_RETRIES + 1


def test_a_batch_that_fails_counts_as_one_fault_of_its_target(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, workers=1)
    keys = write_items(inbox, 3)
    target.batch_script = [TransientError("HTTP 500")]
    daemon = make_daemon({"fake": target}, daemon={"retry_base_seconds": 50, "retry_max_seconds": 600})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=5)
    gate = daemon.dispatcher.health.gates["fake"]
    assert gate.faults == 1  # one request failed, not three
    states = rows(daemon)
    assert all(r["attempts"] == 1 and now <= r["next_attempt_at"] <= now + 50 for r in states.values())
    drive(daemon, now=now + 60 - 3600)
    assert sorted(key for key, _, _ in target.sent) == keys and gate.faults == 0
