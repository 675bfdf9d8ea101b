"""Remote jobs (syncd.jobs, syncd.dispatch) driven tick by tick against the scripted target:
jobs that complete, fail per item, fail without naming an item, get lost or time out; a cap
on outstanding jobs; a restart with jobs outstanding polls them instead of re-sending."""

from __future__ import annotations

import json
import threading
import time

from syncd.errors import FatalTargetError, PermanentError, TransientError
from tests.conftest import ScriptedTarget, drive
from tests.helpers import age_files, write_item


def rows(daemon) -> dict[str, dict]:
    return {r["key"]: r for r in daemon.store.query(
        "SELECT i.key, d.state, d.error, d.job_id, d.solo, d.outcome_unknown "
        "FROM deliveries d JOIN items i ON i.id=d.item_id")}


def jobs_table(daemon) -> list[dict]:
    return daemon.store.query("SELECT target, job_id, polls FROM jobs")


def write_items(inbox, count: int, sizes=((32, 24),)) -> list[str]:
    """``count`` items ``f0``, ``f1``...; their images' sizes taken in turn from ``sizes``."""
    for i in range(count):
        write_item(inbox, f"f{i}", metadata={"i": i}, seed=i, size=sizes[i % len(sizes)])
    return [f"f{i}" for i in range(count)]


def test_items_are_acked_when_their_job_completes(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    keys = write_items(inbox, 3)
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=5)
    # Submitted: in flight, held by the job, which the journal lists; no worker waits on it.
    states = rows(daemon)
    assert {r["state"] for r in states.values()} == {"in_flight"}
    assert {r["job_id"] for r in states.values()} == {"job-1"}
    assert [j["job_id"] for j in jobs_table(daemon)] == ["job-1"]
    assert not any(daemon.dispatcher.tasks.values()) and target.items == {}
    drive(daemon, now=now - 3600)
    assert target.jobs["job-1"]["reads"] == target.job_polls + 1  # running, running, done
    assert target.finished == [("job-1", keys)]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and jobs_table(daemon) == []
    assert sorted(key for key, _, _ in target.sent) == keys and len(target.batches) == 1


def test_polls_back_off_and_stop_when_no_job_is_left(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True, job_poll_interval=1.0)
    target.job_polls = 5
    write_items(inbox, 2)
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=5)
    job = daemon.dispatcher.jobs.get("fake", "job-1")
    gaps, clock = [], now
    while daemon.dispatcher.jobs.get("fake", "job-1") is not None and clock < now + 60:
        clock = max(clock + 0.01, daemon.next_deadline(clock))
        polls = job.polls
        daemon.tick(clock)
        daemon._collect(clock, block=1)
        if job.polls > polls:  # read, still running: when is the next read?
            gaps.append(round(job.next_poll_at - clock, 3))
    assert gaps == [0.4, 0.8, 1.0, 1.0, 1.0]  # backing off up to job_poll_interval
    assert daemon.dispatcher.jobs.count("fake") == 0 and not daemon.dispatcher.jobs.polling
    assert daemon.dispatcher.jobs.next_deadline(daemon.paused) is None  # no polling without jobs


def one_job_daemon(make_daemon, inbox):
    """A daemon with one item for a scripted job target whose jobs are read running twice,
    then done (``job_poll_interval`` 2 s); returns ``(target, daemon, its JobBook)``."""
    target = ScriptedTarget("fake", max_batch=1, jobs=True, job_poll_interval=2.0)
    target.job_polls = 2
    write_items(inbox, 1)
    daemon = make_daemon({"fake": target})
    return target, daemon, daemon.dispatcher.jobs


def test_once_a_job_was_seen_ending_the_next_are_read_at_about_when_they_end(make_daemon, inbox):
    """The first job is read with the backoff (0.2 s, 0.6 s, 1.4 s, ...: two "running", then
    done, so it ended between 0.6 s and 1.4 s: 1.0 s learned); a later job is read first at
    0.9 of that, then 0.1 of it later, not at 1.4 s."""
    target, daemon, book = one_job_daemon(make_daemon, inbox)
    now = time.time() + 3600

    def reads_of(job_id: str) -> list[float]:
        """Tick on the coordinator's deadlines until the job is gone; its reads, from its submission."""
        nonlocal now
        daemon.tick(now)
        daemon._collect(now, block=5)
        job = book.get("fake", job_id)
        assert job is not None
        reads = []
        while book.get("fake", job_id) is not None and now < job.submitted_at + 60:
            now = max(now + 0.001, daemon.next_deadline(now))
            before = target.jobs[job_id]["reads"]
            daemon.tick(now)
            daemon._collect(now, block=1)
            if target.jobs[job_id]["reads"] > before:
                reads.append(round(now - job.submitted_at, 3))
        return reads

    assert reads_of("job-1") == [0.2, 0.6, 1.4]
    assert round(book.typical["fake"], 3) == 1.0  # between the last "running" read and the one that found it done
    write_item(inbox, "g0")
    age_files(inbox)
    daemon.settler.scan(now)
    assert reads_of("job-2") == [0.9, 1.0, 1.2]


def test_before_any_job_ended_a_younger_job_is_not_read_before_an_older_one_was_seen_running(make_daemon, inbox):
    """Job 1 is read running at 0.2 s and 0.6 s; job 2, sent 0.5 s after it, is not read at
    0.2 s (job 1 was running at that age already) but first at 0.6 s of its own."""
    target, daemon, book = one_job_daemon(make_daemon, inbox)
    start = time.time() + 3600
    daemon.tick(start)
    daemon._collect(start, block=5)
    first = book.get("fake", "job-1")
    now, second, reads = start, None, {"job-1": [], "job-2": []}
    while (book.count("fake") or second is None) and now < start + 60:
        now = max(now + 0.001, daemon.next_deadline(now) or now + 0.05)
        if second is None and now >= start + 0.5:
            now = start + 0.5
            write_item(inbox, "g0")
            age_files(inbox)
            daemon.settler.scan(now)
        before = {job_id: target.jobs[job_id]["reads"] for job_id in target.jobs}
        daemon.tick(now)
        daemon._collect(now, block=1)
        second = second or book.get("fake", "job-2")
        for job_id, job in (("job-1", first), ("job-2", second)):
            if job is not None and target.jobs[job_id]["reads"] > before.get(job_id, 0):
                reads[job_id].append(round(now - job.submitted_at, 3))
    assert reads["job-1"] == [0.2, 0.6, 1.4]
    assert second is not None and reads["job-2"][0] >= 0.6  # not 0.2: job 1 was running at that age
    assert book.count("fake") == 0


def test_an_item_refused_in_a_job_fails_alone(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    write_items(inbox, 3)
    target.script["f1"] = [PermanentError("row 2: f1 is refused")]
    daemon = make_daemon({"fake": target})
    drive(daemon)
    states = rows(daemon)
    assert states["f1"]["state"] == "failed" and "f1 is refused" in states["f1"]["error"]
    assert states["f0"]["state"] == states["f2"]["state"] == "acked"


def test_a_job_error_that_names_no_item_sends_each_item_alone(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    keys = write_items(inbox, 3)
    target.job_script = {1: "unpinned"}
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert target.batches[0] == keys and sorted(target.batches[1:]) == [[key] for key in keys]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_a_lost_job_sends_its_items_again(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    keys = write_items(inbox, 2)
    target.job_script = {1: "lost"}
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert target.batches == [keys, keys]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and jobs_table(daemon) == []


def test_a_job_running_past_job_timeout_is_given_up_and_its_items_sent_again(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True, job_timeout=30)
    target.job_script = {1: "stuck"}
    write_items(inbox, 2)
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert len(target.batches) == 2 and "job-1" not in [job for job, _ in target.finished]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_a_job_whose_read_is_under_way_at_job_timeout_is_not_given_up(make_daemon, inbox):
    """job_timeout passes while the job's read is out (the target's rate held it): the read's
    answer decides. Given up on the coordinator's clock, the finished job's items were sent
    again as a new job (under load, a cascade that left deliveries in flight for minutes)."""
    target = ScriptedTarget("fake", max_batch=10, jobs=True, job_timeout=30)
    target.job_polls = 0  # done at its first read
    target.poll_gate = threading.Event()
    keys = write_items(inbox, 2)
    daemon = make_daemon({"fake": target})
    clock = drive(daemon, until=lambda: sum(map(len, target.batches)) == 2 and not daemon.dispatcher.tasks["fake"])
    assert daemon.dispatcher.jobs.count("fake") >= 1
    daemon.tick(clock + 1)  # the reads go out, and wait
    assert target.poll_entered.wait(5)
    daemon.tick(clock + 40)
    daemon._collect(clock + 40, block=0.2)
    target.poll_gate.set()
    drive(daemon, now=clock + 40 - 3600)
    assert sorted(key for batch in target.batches for key in batch) == keys  # each sent once
    assert sorted(key for _, finished in target.finished for key in finished) == keys
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and jobs_table(daemon) == []


def test_a_job_read_as_ended_is_not_given_up_while_its_end_cannot_be_read(make_daemon, inbox):
    """The job ended but its errors cannot be read for longer than job_timeout: that read is
    tried again (not the job's), and its item is not sent again."""
    target = ScriptedTarget("fake", max_batch=10, jobs=True, job_timeout=30, job_poll_interval=1.0)
    target.job_polls = 0
    target.finish_script = [TransientError("HTTP 503 reading the errors of job-1")] * 12  # a minute at 5 s a pass
    keys = write_items(inbox, 1)
    daemon = make_daemon({"fake": target})
    drive(daemon, timeout=30)
    assert target.batches == [keys] and target.finished == [("job-1", keys)] and not target.finish_script
    assert target.jobs["job-1"]["reads"] == 1
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and jobs_table(daemon) == []


def test_a_job_that_cannot_be_read_for_job_timeout_is_given_up(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True, job_timeout=30)
    target.job_script = {1: "unreadable"}
    keys = write_items(inbox, 1)
    daemon = make_daemon({"fake": target})
    drive(daemon)
    assert target.batches == [keys, keys] and [job for job, _ in target.finished] == ["job-2"]
    assert target.jobs["job-1"]["reads"] >= 5  # read at every pass until then
    assert {r["state"] for r in rows(daemon).values()} == {"acked"}


def test_outstanding_jobs_are_capped(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=1, workers=4, jobs=True, max_jobs=2)
    target.job_polls = 1000
    write_items(inbox, 5)
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    for step in range(5):
        daemon.tick(now + step)
        daemon._collect(now + step, block=0.5)
    assert len(target.batches) == 2 and daemon.dispatcher.jobs.count("fake") == 2


def test_a_restart_with_jobs_outstanding_polls_them_instead_of_sending_again(make_daemon, inbox, tmp_path):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    keys = write_items(inbox, 3)
    target.job_polls = 1000  # still running when the daemon stops
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)
    daemon._collect(now, block=5)
    assert [j["job_id"] for j in jobs_table(daemon)] == ["job-1"]
    daemon.close(wait_seconds=0)  # as good as a kill: the journal has the job
    # The item f2 changes while the daemon is down: it is sent again, at its new version.
    (inbox / "f2.json").write_text(json.dumps({"metadata": {"i": 2, "edited": True}}))
    age_files(inbox / "f2.json")
    target.job_polls = 0
    again = make_daemon({"fake": target})
    states = rows(again)
    assert {r["state"] for r in states.values()} == {"in_flight"}  # not made due again
    drive(again)
    assert target.jobs["job-1"]["reads"] >= 1  # polled after the restart
    assert target.finished[0] == ("job-1", ["f0", "f1"])  # f2's files changed since: not finished
    assert target.batches == [keys, ["f2"]]  # only the changed item is sent again
    assert {r["state"] for r in rows(again).values()} == {"acked"}
    assert target.items["f2"]["metadata"] == {"i": 2, "edited": True}


def test_a_job_that_cannot_be_read_pauses_the_target_and_is_read_after_it_resumes(make_daemon, inbox):
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    write_items(inbox, 2)
    target.job_script = {1: "revoked"}
    daemon = make_daemon({"fake": target}, daemon={"target_recheck_seconds": 30})
    clock = drive(daemon, until=lambda: "fake" in daemon.paused)
    # Paused with its job outstanding: the job holds its items (in flight), nothing is polled,
    # and `once` would not wait for it (the daemon is not busy).
    assert {r["state"] for r in rows(daemon).values()} == {"in_flight"}
    assert not daemon.busy() and daemon.dispatcher.jobs.next_deadline(daemon.paused) is None
    drive(daemon, now=clock - 3600, step=40)  # the re-check passes: resumed, the job read again
    assert "fake" not in daemon.paused and target.finished == [("job-1", ["f0", "f1"])]
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and len(target.batches) == 1


def test_only_an_outcome_unknown_at_the_start_is_flagged_to_the_target(make_daemon, inbox):
    """An item whose outcome was already unknown when the journal was opened may be in a job
    of an earlier process (``Upload.outcome_unknown_at_start``: Nucleus then waits for the
    dataset's jobs from before the start); a new item, or one whose reply this process
    lost, is not flagged (a fleet's devices do not wait for each other's jobs)."""
    target = ScriptedTarget("fake", max_batch=10, jobs=True)
    write_item(inbox, "a")
    daemon = make_daemon({"fake": target})
    drive(daemon)
    # A crash after the append of a new version was sent, before its job was journaled.
    daemon.store._tx([("UPDATE deliveries SET state='in_flight', acked_version=NULL, receipt=NULL", ())])
    daemon.close(wait_seconds=0)
    write_item(inbox, "b", seed=1)
    target.batch_script = ["lose_reply"]  # the first batch of the new process loses its reply
    target.handed.clear()
    again = make_daemon({"fake": target})
    drive(again)
    assert {r["state"] for r in rows(again).values()} == {"acked"}
    assert [flag for key, flag in target.handed if key == "a"] == [True, True]  # lost reply, then sent
    assert [flag for key, flag in target.handed if key == "b"] == [False, False]


def test_a_backlog_larger_than_the_content_cache_is_read_once(make_daemon, inbox):
    """Settling does not read ahead of the sends once the content cache is full: every item
    is read (decoded, hashed) once and sent from memory, none is pushed out by the items
    read after it and read again (jobs hold the sent ones for a while, as Nucleus' do)."""
    target = ScriptedTarget("fake", max_batch=2, workers=1, jobs=True, max_jobs=2)
    target.job_polls = 3  # passes go by while the jobs hold the sends and the cache is full
    keys = write_items(inbox, 40)
    daemon = make_daemon({"fake": target})
    daemon.cache.max_bytes = 6 * (inbox / "f0.png").stat().st_size  # room for about six items
    drive(daemon)
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and sorted(target.items) == sorted(keys)
    assert (daemon.cache.hits, daemon.cache.misses) == (40, 0)
    assert len(daemon.cache) == 0


def test_a_backlog_of_items_of_different_sizes_is_read_once(make_daemon, inbox):
    """What fits in the content cache is known before an item is read (its files' sizes), not
    guessed from the average of what it holds: a larger item never pushes out one not sent."""
    target = ScriptedTarget("fake", max_batch=2, workers=1, jobs=True, max_jobs=2)
    target.job_polls = 3
    keys = write_items(inbox, 40, sizes=[(16, 12), (64, 48), (24, 18), (48, 36), (32, 24)])
    daemon = make_daemon({"fake": target})
    daemon.cache.max_bytes = sum((inbox / f"f{i}.png").stat().st_size for i in range(5)) + 100
    drive(daemon)
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and sorted(target.items) == sorted(keys)
    assert (daemon.cache.hits, daemon.cache.misses) == (40, 0)
    assert len(daemon.cache) == 0


def test_a_paused_targets_backlog_is_read_past_a_full_content_cache(make_daemon, inbox):
    """Nothing is on its way while the only target is paused: settling does not stop at a
    full content cache, it reads on and the oldest content goes (read again when it is sent)."""
    target = ScriptedTarget("fake", max_batch=2, workers=1)
    target.check_error = FatalTargetError("HTTP 401: bad key")
    keys = write_items(inbox, 20)
    daemon = make_daemon({"fake": target}, daemon={"target_recheck_seconds": 30})
    daemon.cache.max_bytes = 6 * (inbox / "f0.png").stat().st_size
    daemon.health.pause("fake", "HTTP 401: bad key", time.time())  # before the first pass
    clock = drive(daemon, until=lambda: not daemon.settling)
    assert "fake" in daemon.paused and {r["state"] for r in rows(daemon).values()} == {"pending"}
    assert len(rows(daemon)) == 20 and len(daemon.cache) == 6  # the last six read
    target.check_error = None  # the key was fixed: the re-check resumes the target
    drive(daemon, now=clock - 3600, step=40)
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and sorted(target.items) == sorted(keys)
    assert (daemon.cache.hits, daemon.cache.misses) == (6, 14) and len(daemon.cache) == 0


def test_jobs_due_together_are_read_by_up_to_one_poll_task_per_worker_never_twice_at_once(make_daemon, inbox):
    """Each job read is a round trip: six jobs due at once are shared out over the target's
    three workers (three reads under way together), and no job is read by two tasks."""
    target = ScriptedTarget("fake", max_batch=1, workers=3, jobs=True)
    target.job_polls = 1
    keys = write_items(inbox, 6)
    daemon = make_daemon({"fake": target})
    reading: list[str] = []
    most = [0]
    lock = threading.Lock()
    read_job = target.job_state

    def job_state(job_id):
        with lock:
            assert job_id not in reading, f"{job_id} read by two poll tasks at once"
            reading.append(job_id)
            most[0] = max(most[0], len(reading))
        try:
            time.sleep(0.05)
            return read_job(job_id)
        finally:
            with lock:
                reading.remove(job_id)

    target.job_state = job_state
    drive(daemon)
    assert most[0] == 3
    assert target.finished and sorted(k for _, ks in target.finished for k in ks) == keys
    assert {r["state"] for r in rows(daemon).values()} == {"acked"} and not daemon.dispatcher.jobs.polling
