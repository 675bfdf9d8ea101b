"""The Nucleus target's batch and job interface against the emulator, driven as the engine
drives it: ``deliver_batch`` (one multipart append of up to 10 items), ``job_state`` polls,
``finish_job``; per-item outcomes, lost replies, lost jobs, errors that name no item, the
ordering guarantee, and 404s classified by route (issue 10, item 16)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from syncd.errors import FatalTargetError, ItemError, PermanentError, SendAlone, TransientError
from syncd.targets.base import JobState, Receipt, Submitted
from syncd.targets.nucleus.jobs import pin_errors
from syncd.targets.nucleus.target import NucleusTarget
from tests.emulators.base import Request, Response, json_response, route
from tests.emulators.nucleus import API, DS, NucleusEmulator
from tests.helpers import image_bytes, make_upload
from tests.platforms.nucleus.harness import make_target

CAR = [{"type": "classification", "label": "car"}]



def batch(n: int = 10, *, prefix: str = "cam1/f", **kwargs):
    return [make_upload(f"{prefix}{i:02d}", metadata={"i": i}, seed=i, **kwargs) for i in range(n)]


def settle(target, job_id, uploads, *, max_polls: int = 50):
    """What the engine does with a Submitted job: poll it until it ended, then finish it."""
    for _ in range(max_polls):
        state = target.job_state(job_id)
        if state.status != "running":
            break
    assert state.status == "done", state
    return target.finish_job(job_id, state, uploads)


def appends(emulator) -> list[dict]:
    return [entry for entry in emulator.journal]


# -- one request, one job ---------------------------------------------------------------------------
def test_a_batch_of_ten_is_one_request_and_one_job(target, emulator, dataset_id):
    uploads = batch(10)
    results = target.deliver_batch(uploads)
    assert len(appends(emulator)) == 1 and len(emulator.jobs()) == 1
    job_id = emulator.jobs()[0].job_id
    assert results == [Submitted(job_id)] * 10
    sent = appends(emulator)[0]
    assert sent["query"] == {"async": ["1"]}
    assert [p["name"] for p in sent["parts"]] == ["items"] + ["image"] * 10
    assert [r["payload"]["reference_id"] for r in sent["rows"]] == [u.key for u in uploads]
    assert all(r["update"] is True for r in sent["rows"])
    # The image parts in the items' order, file names percent-encoded as aiohttp does.
    assert re.findall(rb'name="image"; filename="([^"]*)"', sent["body"]) == [
        f"cam1%2Ff{i:02d}.png".encode() for i in range(10)]
    assert emulator.items(dataset_id) == []  # nothing is written before the job ran
    receipts = settle(target, job_id, uploads)
    assert all(isinstance(r, Receipt) for r in receipts)
    assert [r.extra["version"] for r in receipts] == [u.version for u in uploads]
    assert {r.extra["job_id"] for r in receipts} == {job_id}
    for upload in uploads:
        assert emulator.item(dataset_id, upload.key)["metadata"] == upload.metadata
        assert emulator.image(dataset_id, upload.key) == upload.image
    assert emulator.requests[-1][1].endswith(f"/job/{job_id}/errors")  # always read, even Completed


def test_job_state_reads_running_done_and_lost(target, emulator):
    emulator.job_script = ["Queued", "Running"]
    [submitted] = target.deliver_batch(batch(1))
    assert target.job_state(submitted.job_id).status == "running"  # Queued: the SDK would stop here
    assert target.job_state(submitted.job_id).status == "running"
    done = target.job_state(submitted.job_id)
    assert done.status == "done" and done.reply["status"] == "Completed"
    assert target.job_state("job_unknown").status == "lost"


# -- per-item outcomes ----------------------------------------------------------------------------
def test_one_refused_item_fails_alone(target, emulator, dataset_id):
    uploads = batch(10)
    emulator.reject[uploads[3].key] = "Image could not be processed: unsupported colour profile"
    [first, *_] = results = target.deliver_batch(uploads)
    assert len(set(results)) == 1 and len(appends(emulator)) == 1
    outcomes = settle(target, first.job_id, uploads)
    assert isinstance(outcomes[3], PermanentError) and "unsupported colour profile" in str(outcomes[3])
    assert uploads[3].key in str(outcomes[3])
    assert all(isinstance(o, Receipt) for i, o in enumerate(outcomes) if i != 3)
    assert emulator.item(dataset_id, uploads[3].key) is None
    assert len(emulator.items(dataset_id)) == 9


def test_unserialisable_metadata_fails_that_item_before_sending(target, emulator, dataset_id):
    uploads = batch(4)
    uploads[1] = make_upload("cam1/nan", metadata={"x": float("nan")})
    results = target.deliver_batch(uploads)
    assert isinstance(results[1], PermanentError) and "not valid JSON" in str(results[1])
    assert [type(r) for r in results] == [Submitted, PermanentError, Submitted, Submitted]
    assert [r["payload"]["reference_id"] for r in appends(emulator)[0]["rows"]] == [
        uploads[0].key, uploads[2].key, uploads[3].key]


def test_a_mask_that_cannot_be_converted_fails_that_item_before_sending(target, emulator):
    uploads = batch(3)
    uploads[2] = make_upload("cam1/masked", mask=b"not a png", class_map={"road": [255, 0, 0]})
    results = target.deliver_batch(uploads)
    assert isinstance(results[2], ItemError)
    assert len(appends(emulator)[0]["rows"]) == 2


def test_an_error_naming_no_item_sends_the_unattributed_items_alone(target, emulator, dataset_id):
    uploads = batch(5)
    emulator.reject[uploads[0].key] = "refused row"
    emulator.fail_next_job("Completed", apply=True, rows=["Internal error while indexing the batch"])
    [first, *_] = target.deliver_batch(uploads)
    outcomes = settle(target, first.job_id, uploads)
    assert isinstance(outcomes[0], PermanentError) and "refused row" in str(outcomes[0])
    assert all(isinstance(o, SendAlone) for o in outcomes[1:])
    assert "Internal error while indexing" in str(outcomes[1])
    # Sent again one by one, each item settles by itself.
    for upload in uploads[1:]:
        [alone] = target.deliver_batch([upload])
        assert isinstance(settle(target, alone.job_id, [upload])[0], Receipt)
    assert len(emulator.items(dataset_id)) == 4


@pytest.mark.parametrize("status", ["Errored_User", "Errored_Partial", "Cancelled"])
def test_a_failed_job_of_several_items_sends_them_alone_but_one_item_fails(target, emulator, status):
    emulator.fail_next_job(status, "the batch went wrong")
    [first, *_] = target.deliver_batch(batch(3))
    assert all(isinstance(o, SendAlone) for o in settle(target, first.job_id, batch(3)))
    emulator.fail_next_job(status, "the item went wrong")
    [alone] = target.deliver_batch(batch(1))
    [outcome] = settle(target, alone.job_id, batch(1))
    assert isinstance(outcome, PermanentError) and "the item went wrong" in str(outcome)


def test_a_partial_job_fails_its_named_items_and_resends_the_rest_alone(target, emulator, dataset_id):
    uploads = batch(3)
    emulator.reject[uploads[1].key] = "bad row"
    emulator.fail_next_job("Errored_Partial", "1 of 3 failed", apply=True)
    [first, *_] = target.deliver_batch(uploads)
    outcomes = settle(target, first.job_id, uploads)
    assert [type(o) for o in outcomes] == [SendAlone, PermanentError, SendAlone]


def test_a_row_naming_an_item_not_settled_here_is_that_items(target, emulator, dataset_id):
    """After a restart the engine settles only the items whose files did not change since;
    a row about one of the others is not 'unattributed'."""
    uploads = batch(3)
    emulator.reject[uploads[1].key] = "bad row"
    [first, *_] = target.deliver_batch(uploads)
    kept = [uploads[0], uploads[2]]  # uploads[1] changed locally meanwhile: the engine re-sends it
    assert all(isinstance(o, Receipt) for o in settle(target, first.job_id, kept))


def test_after_a_restart_a_lone_item_of_a_failed_job_is_sent_alone_first(emulator, dataset_id):
    """A new process does not know how many items a job carried: an error naming nothing is
    not pinned on the one item it settles; sent alone, that item fails by itself."""
    emulator.fail_next_job("Errored_User", "the batch went wrong")
    [first, *_] = make_target(emulator, dataset_id).deliver_batch(batch(3))
    restarted = make_target(emulator, dataset_id)
    [outcome] = settle(restarted, first.job_id, batch(1))
    assert isinstance(outcome, SendAlone)
    emulator.fail_next_job("Errored_User", "the item went wrong")
    [alone] = restarted.deliver_batch(batch(1))
    [outcome] = settle(restarted, alone.job_id, batch(1))
    assert isinstance(outcome, PermanentError) and "the item went wrong" in str(outcome)


@pytest.mark.parametrize("status", ["Errored_Server", "Errored_Hanging", "Retried", "Something_New"])
def test_a_job_failed_by_the_server_retries_every_item(target, emulator, status):
    emulator.fail_next_job(status, "server trouble")
    [first, *_] = target.deliver_batch(batch(3))
    outcomes = settle(target, first.job_id, batch(3))
    assert all(isinstance(o, TransientError) and o.outcome_unknown for o in outcomes)


def test_the_synchronous_count_reply_settles_each_item():
    class SyncEmulator(NucleusEmulator):
        @route("POST", f"{API}/dataset/{DS}/append")
        def append(self, request: Request) -> Response:
            request.query.pop("async", None)
            return super().append(request)

    with SyncEmulator() as emulator:
        dataset_id = emulator.add_dataset("d")
        target = make_target(emulator, dataset_id)
        uploads = batch(3)
        emulator.reject[uploads[2].key] = "refused row"
        results = target.deliver_batch(uploads)
        assert [type(r) for r in results] == [Receipt, Receipt, PermanentError]
        assert "refused row" in str(results[2]) and results[0].extra["job_id"] is None
        assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == [u.key for u in uploads[:2]]


# -- the request as a whole -----------------------------------------------------------------------
def test_a_lost_reply_for_the_whole_batch_then_a_resend_leaves_one_item_per_key(target, emulator, dataset_id):
    uploads = batch(10)
    emulator.faults.next("lost_reply", path=r"/append$")
    with pytest.raises(TransientError) as caught:
        target.deliver_batch(uploads)
    assert caught.value.outcome_unknown
    # The re-send: three items changed meanwhile (newer versions).
    again = [make_upload(u.key, metadata={"i": i, "v": 2}, seed=100 + i) if i < 3 else u
             for i, u in enumerate(uploads)]
    [first, *_] = target.deliver_batch(again)
    assert all(isinstance(o, Receipt) for o in settle(target, first.job_id, again))
    emulator.run_jobs()  # the lost append's job too (it ran first: jobs are FIFO here)
    assert len(emulator.jobs()) == 2 and all(j.status == "Completed" for j in emulator.jobs())
    assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == [u.key for u in uploads]
    for upload in again:
        assert emulator.item(dataset_id, upload.key)["metadata"] == upload.metadata
        assert emulator.image(dataset_id, upload.key) == upload.image


def test_a_refused_request_sends_each_item_alone(emulator):
    target = make_target(emulator, emulator.add_dataset("scenes", is_scene=True))
    results = target.deliver_batch(batch(3))
    assert all(isinstance(r, SendAlone) for r in results) and "400" in str(results[0])
    with pytest.raises(PermanentError, match="400"):
        target.deliver(make_upload("s/1"))


def test_a_failed_request_keeps_the_items_that_failed_on_their_own(target, emulator):
    uploads = batch(3)
    uploads[0] = make_upload("cam1/nan", metadata={"x": float("inf")})
    emulator.faults.next("503", path=r"/append$")
    results = target.deliver_batch(uploads)
    assert isinstance(results[0], PermanentError)
    assert all(isinstance(r, TransientError) for r in results[1:])
    emulator.faults.next("503", path=r"/append$")
    with pytest.raises(TransientError):  # every item was in the request: raised
        target.deliver_batch(batch(3))


def test_a_lost_job_is_answered_lost_and_its_items_go_again(target, emulator, dataset_id):
    uploads = batch(4)
    [first, *_] = target.deliver_batch(uploads)
    with emulator.lock:
        emulator.state.jobs.clear()  # the server forgot the job (its rows never ran)
    assert target.job_state(first.job_id) == JobState("lost", {})
    [again, *_] = target.deliver_batch(uploads)  # nothing holds the items back
    assert again.job_id != first.job_id
    assert all(isinstance(o, Receipt) for o in settle(target, again.job_id, uploads))
    assert len(emulator.items(dataset_id)) == 4


# -- ordering ---------------------------------------------------------------------------------------
def test_an_item_whose_earlier_job_may_still_run_waits_the_others_go(emulator, dataset_id):
    """The engine gave up on a job (job_timeout) and sends its items again. Were they
    appended at once, a server that does not run jobs in order could run the old job last
    and write the older version over the newer one."""
    emulator.state.fifo = False
    emulator.job_script = ["Running"] * 1000
    target = make_target(emulator, dataset_id)
    old = batch(2)
    [given_up, _] = target.deliver_batch(old)  # never finished: the engine gave up on it
    newer = [make_upload(old[0].key, metadata={"v": 2}, seed=50), make_upload("cam1/other")]
    results = target.deliver_batch(newer)
    assert isinstance(results[0], TransientError) and "earlier upload" in str(results[0])
    assert not results[0].outcome_unknown and isinstance(results[1], Submitted)
    assert [r["payload"]["reference_id"] for r in appends(emulator)[-1]["rows"]] == ["cam1/other"]
    emulator.run_jobs()  # the old job ends
    [resent] = target.deliver_batch(newer[:1])
    emulator.run_jobs()
    assert target.job_state(resent.job_id).status == "done"
    assert emulator.item(dataset_id, old[0].key)["metadata"] == {"v": 2}


class FakeClock:
    """The waiting of StartupJobs without real time: ``sleep`` moves the clock."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def restarted_target(emulator, dataset_id, **overrides) -> tuple[NucleusTarget, FakeClock]:
    target = make_target(emulator, dataset_id, **overrides)
    clock = FakeClock()
    target.startup._clock, target.startup._sleep = clock, clock.sleep
    return target, clock


def unknown_at_start(uploads):
    """The uploads as the engine hands them over after a restart that found their outcome unknown."""
    return [dataclasses.replace(upload, outcome_unknown_at_start=True) for upload in uploads]


def listed_jobs(emulator) -> int:
    return sum(method == "POST" and path.endswith("/jobs/") for method, path in emulator.requests)


def test_jobs_from_before_the_start_are_waited_for_by_items_whose_outcome_was_unknown(emulator, dataset_id):
    """After a restart the new process does not know which items the old one's jobs hold;
    only an item whose outcome was unknown at the start can be in one: it is not appended
    until they have ended. The other items of the batch go at once."""
    emulator.state.fifo = False
    emulator.job_script = ["Running"] * 1000
    before = make_target(emulator, dataset_id)
    crashed = batch(2)
    before.deliver_batch(crashed)  # then the process dies before journaling the job
    target, clock = restarted_target(emulator, dataset_id, job_timeout=60, job_poll_interval=0.5)
    mixed = unknown_at_start(crashed) + batch(1, prefix="cam2/f")
    results = target.deliver_batch(mixed)
    assert all(isinstance(r, TransientError) and "running before syncd started" in str(r) for r in results[:2])
    assert not results[0].outcome_unknown
    assert isinstance(results[2], Submitted)
    assert [r["payload"]["reference_id"] for r in appends(emulator)[-1]["rows"]] == ["cam2/f00"]
    assert listed_jobs(emulator) == 1
    emulator.run_jobs()
    assert all(isinstance(r, Submitted) for r in target.deliver_batch(unknown_at_start(crashed)))
    assert listed_jobs(emulator) == 1  # listed once per process


def test_a_fresh_start_neither_lists_nor_waits_for_jobs_it_cannot_be_in(emulator, dataset_id):
    """A daemon on a fresh journal (or after a clean stop) has no item of unknown outcome:
    jobs running on the dataset (another device's, in a fleet) do not hold it up."""
    emulator.job_script = ["Running"] * 1000
    make_target(emulator, dataset_id).deliver_batch(batch(2, prefix="other-device/f"))
    target, clock = restarted_target(emulator, dataset_id, job_timeout=60, job_poll_interval=0.5)
    results = target.deliver_batch(batch(3, prefix="cam2/f"))
    assert all(isinstance(r, Submitted) for r in results)
    assert listed_jobs(emulator) == 0 and clock.now == 1000.0  # no listing, no waiting


def test_jobs_this_process_started_are_not_waited_for_as_jobs_from_before_the_start(emulator, dataset_id):
    """The listing comes with the first item of unknown outcome, after this process's first
    appends: those jobs are still running then, but they are not from before the start (the
    item cannot be in one): the item goes at once."""
    emulator.job_script = ["Running"] * 1000
    target, clock = restarted_target(emulator, dataset_id, job_timeout=60, job_poll_interval=0.5)
    assert all(isinstance(r, Submitted) for r in target.deliver_batch(batch(2, prefix="cam2/f")))
    [result] = target.deliver_batch(unknown_at_start(batch(1, prefix="x/")))
    assert isinstance(result, Submitted), result
    assert listed_jobs(emulator) == 1 and clock.now == 1000.0  # listed, nothing waited for


def test_jobs_from_before_the_start_are_given_up_after_job_timeout(emulator, dataset_id):
    emulator.job_script = ["Running"] * 1000
    make_target(emulator, dataset_id).deliver_batch(batch(1))
    target, clock = restarted_target(emulator, dataset_id, job_timeout=60, job_poll_interval=0.5)
    assert isinstance(target.deliver_batch(unknown_at_start(batch(1, prefix="x/")))[0], TransientError)
    clock.now += 60  # job_timeout since the target found the job
    assert isinstance(target.deliver_batch(unknown_at_start(batch(1, prefix="x/")))[0], Submitted)


# -- error rows ---------------------------------------------------------------------------------------
def test_error_rows_are_pinned_by_reference_id_url_or_name():
    keys = ["a/1", "a/10", "b c"]
    urls = ["a/1.png", "a/10.png", "b c.jpg"]
    rows = [
        '{"item":{"referenceId":"a/10","imageUrl":"a/10.png"},"error":"bad image"}',  # the emulator's shape
        json.dumps({"annotation": {"reference_id": "b c"}, "error": "snake"}),
        json.dumps({"item": {"imageUrl": "a/1.png"}, "error": "by url"}),
        "Item with id a/1 does not exist.",  # not JSON: a whole-token mention (not a/10)
        json.dumps({"error": "Internal error"}),  # names nothing
        "a/1 and a/10 both",  # names two: unattributed
    ]
    pinned, loose = pin_errors(rows, keys, urls)
    assert pinned == {1: ["bad image"], 2: ["snake"], 0: ["by url", "Item with id a/1 does not exist."]}
    assert loose == ["Internal error", "a/1 and a/10 both"]


# -- issue 10, item 16: 404 by route ------------------------------------------------------------------
class TaxonomyGone(NucleusEmulator):
    """add_taxonomy answers 404 (a route the deployment does not serve) while the dataset exists."""

    @route("POST", f"{API}/dataset/{DS}/add_taxonomy")
    def add_taxonomy(self, request: Request) -> Response:
        return json_response({"error": "Not Found"}, 404)


def test_a_404_on_a_sub_route_is_not_a_missing_dataset():
    with TaxonomyGone() as emulator:
        dataset_id = emulator.add_dataset("d")
        target = make_target(emulator, dataset_id)
        receipt = target.deliver(make_upload("tax/1", labels=CAR))  # delivered, the category not sent
        assert emulator.item(dataset_id, "tax/1") is not None
        assert any("category not sent" in n and "404" in n for n in receipt.extra["not_sent"])
        assert receipt.extra["annotations_sha256"] is None  # tried again with the next change
        with emulator.lock:
            emulator.state.delete_dataset(dataset_id)
        with pytest.raises(FatalTargetError, match=f"{dataset_id}.*does not exist"):
            target.deliver(make_upload("tax/2", labels=CAR))


def test_a_404_on_a_sub_route_after_the_dataset_vanished_pauses(target, emulator, dataset_id):
    """The dataset is deleted between the append's job and the labels: the probe's 404 is
    checked against the dataset, which is gone: the item's outcome pauses the target."""
    first = target.deliver(make_upload("gone/1"))
    upload = make_upload("gone/1", labels=CAR, metadata={"v": 2}, previous=first)
    [submitted] = target.deliver_batch([upload])
    emulator.run_jobs()
    state = target.job_state(submitted.job_id)
    with emulator.lock:
        emulator.state.delete_dataset(dataset_id)
    [outcome] = target.finish_job(submitted.job_id, state, [upload])
    assert isinstance(outcome, FatalTargetError) and "does not exist" in str(outcome)


def test_image_bytes_of_the_batch_are_the_uploads(target, emulator, dataset_id):
    uploads = batch(2, fmt="JPEG")
    [first, _] = target.deliver_batch(uploads)
    settle(target, first.job_id, uploads)
    sent = appends(emulator)[0]
    assert [p["content_type"] for p in sent["parts"]] == ["application/json", "image/jpg", "image/jpg"]
    assert emulator.image(dataset_id, uploads[1].key) == image_bytes(seed=1, fmt="JPEG")
