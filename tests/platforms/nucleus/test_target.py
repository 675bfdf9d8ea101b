"""The Nucleus target against the Nucleus emulator: check, the append's wire shape, job
polling, per-row and job errors, faults, re-sends, and the API key staying secret."""

from __future__ import annotations

import base64
import json
import re

import pytest

from syncd.errors import FatalTargetError, PermanentError, SyncdError, TransientError
from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget
from tests.emulators.base import Request, Response, json_response, route
from tests.emulators.nucleus import API, DS, NucleusEmulator
from tests.helpers import image_bytes, make_upload
from tests.platforms.nucleus.harness import make_target


def job_polls(emulator) -> list[str]:
    return [path for method, path in emulator.requests if method == "GET" and re.search(r"/job/[^/]+$", path)]


# -- settings and check ---------------------------------------------------------------------------
def test_settings_defaults_and_validation():
    settings = NucleusSettings(dataset_id="ds_abc")
    assert settings.api_key_env == "NUCLEUS_API_KEY"
    assert settings.base_url == "https://api.scale.com/v1/nucleus"
    assert settings.timeout == 120.0
    with pytest.raises(ValueError, match="dataset_id"):
        NucleusSettings()
    with pytest.raises(ValueError, match="not a Nucleus dataset id"):
        NucleusSettings(dataset_id="ds/abc")
    with pytest.raises(ValueError, match="extra"):
        NucleusSettings(dataset_id="ds_abc", api_key="secret")


def test_check_passes_on_an_image_dataset(target, emulator):
    assert target.check() == []
    assert emulator.requests[-1][1].endswith("/is_scene")


def test_check_unknown_dataset_is_fatal_and_names_it(emulator):
    target = make_target(emulator, "ds_doesnotexist")
    with pytest.raises(FatalTargetError, match="ds_doesnotexist") as caught:
        target.check()
    assert "dataset_id" in str(caught.value) and "list_datasets" in str(caught.value)


def test_check_scene_dataset_is_fatal(emulator):
    target = make_target(emulator, emulator.add_dataset("lidar", is_scene=True))
    with pytest.raises(FatalTargetError, match="scene dataset"):
        target.check()


def test_wrong_or_missing_key_is_fatal_and_never_shown(emulator, dataset_id):
    wrong = "wrong_key_9f8e7d6c5b4a"
    target = make_target(emulator, dataset_id, key=wrong)
    with pytest.raises(FatalTargetError) as caught:
        target.check()
    assert "401" in str(caught.value) and wrong not in str(caught.value)
    with pytest.raises(FatalTargetError):
        target.deliver(make_upload("a/b"))
    missing = NucleusTarget("nuc", NucleusSettings(dataset_id=dataset_id, base_url=emulator.endpoint), env={})
    with pytest.raises(FatalTargetError, match="NUCLEUS_API_KEY"):
        missing.check()


# -- deliver ------------------------------------------------------------------------------------
def test_deliver_sends_one_multipart_item_with_update_and_size(target, emulator, dataset_id):
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": 1, "nested": {"k": [1, 2]}})
    receipt = target.deliver(upload)
    assert receipt.remote_id == "cam1/frame_0001"
    assert receipt.extra["version"] == upload.version and receipt.extra["image_sha256"] == upload.image_sha256
    sent = emulator.journal[-1]
    assert sent["query"] == {"async": ["1"]}
    assert [p["name"] for p in sent["parts"]] == ["items", "image"]
    assert sent["rows"][0]["payload"] == {"metadata": {"site": "A", "n": 1, "nested": {"k": [1, 2]}},
                                          "reference_id": "cam1/frame_0001", "image_url": "cam1/frame_0001.png",
                                          "update": True, "width": 32, "height": 24}
    assert b'filename="cam1%2Fframe_0001.png"' in sent["body"]
    item = emulator.item(dataset_id, "cam1/frame_0001")
    assert item["metadata"] == upload.metadata and emulator.image(dataset_id, "cam1/frame_0001") == upload.image


def test_deliver_polls_through_queued_and_running_then_reads_errors(target, emulator, dataset_id):
    emulator.job_script = ["Queued", "Queued", "Running", "Running"]
    target.deliver(make_upload("poll/me"))
    assert len(job_polls(emulator)) == 5  # four pending answers, then Completed
    assert emulator.requests[-1][1].endswith("/errors")  # read even though the job Completed
    assert emulator.jobs()[-1].status == "Completed"
    assert emulator.item(dataset_id, "poll/me") is not None


def test_completed_job_with_row_error_is_permanent(target, emulator, dataset_id):
    emulator.reject["bad/item"] = "Image could not be processed: unsupported colour profile"
    with pytest.raises(PermanentError, match="unsupported colour profile") as caught:
        target.deliver(make_upload("bad/item"))
    assert "completed with errors" in str(caught.value) and emulator.jobs()[-1].status == "Completed"
    assert emulator.item(dataset_id, "bad/item") is None


def test_metadata_type_conflict_is_a_permanent_row_error(target, emulator):
    target.deliver(make_upload("a/1", metadata={"n": 1}))
    with pytest.raises(PermanentError, match="Metadata key 'n'"):
        target.deliver(make_upload("a/2", metadata={"n": "one"}))


@pytest.mark.parametrize("status, error", [("Errored_Server", TransientError), ("Errored_Hanging", TransientError),
                                           ("Retried", TransientError), ("Something_New", TransientError),
                                           ("Errored_User", PermanentError), ("Errored_Partial", PermanentError),
                                           ("Errored", PermanentError), ("Cancelled", PermanentError)])
def test_job_end_states_are_classified(target, emulator, status, error):
    emulator.fail_next_job(status, "the job went wrong")
    with pytest.raises(error, match=f"ended {status}|unknown status 'Something_New'") as caught:
        target.deliver(make_upload("job/state"))
    assert "the job went wrong" in str(caught.value)


def test_job_still_pending_after_job_timeout_is_transient(emulator, dataset_id):
    emulator.job_script = ["Running"] * 1000
    target = make_target(emulator, dataset_id, job_timeout=0.3, job_poll_interval=0.05)
    with pytest.raises(TransientError, match="still Running") as caught:
        target.deliver(make_upload("slow/job"))
    assert caught.value.outcome_unknown


def test_an_abandoned_job_is_finished_before_the_item_is_sent_again(emulator, dataset_id):
    """v1's job outlives job_timeout. Were v2 appended at once, a server that does not run
    jobs in order could run v1's job last and write v1 back over v2."""
    emulator.state.fifo = False
    emulator.job_script = ["Running"] * 1000
    target = make_target(emulator, dataset_id, job_timeout=0.2, job_poll_interval=0.05)
    with pytest.raises(TransientError, match="still Running"):
        target.deliver(make_upload("order/1", metadata={"v": 1}))
    # The next attempt, while the old job is still pending: nothing new is appended.
    with pytest.raises(TransientError, match="earlier upload"):
        target.deliver(make_upload("order/1", metadata={"v": 2}))
    assert len(emulator.jobs()) == 1
    emulator.job_script = ["Running"]  # the server catches up
    target.deliver(make_upload("order/1", metadata={"v": 2}))
    emulator.run_jobs()
    assert [j.status for j in emulator.jobs()] == ["Completed", "Completed"]
    assert emulator.item(dataset_id, "order/1")["metadata"] == {"v": 2}


def test_an_unreadable_abandoned_job_does_not_block_the_item(emulator, dataset_id):
    emulator.job_script = ["Running"] * 1000
    target = make_target(emulator, dataset_id, job_timeout=0.1, job_poll_interval=0.02)
    with pytest.raises(TransientError):
        target.deliver(make_upload("gone/1"))
    with emulator.lock:
        emulator.state.jobs.clear()  # the server forgot the job
    emulator.job_script = []
    target.deliver(make_upload("gone/1", metadata={"v": 2}))
    assert emulator.item(dataset_id, "gone/1")["metadata"] == {"v": 2}


def test_transient_failures_of_job_reads_are_retried_in_place(target, emulator, dataset_id):
    emulator.faults.next("503", path=r"/job/[^/]+$")
    emulator.faults.next("lost_reply", path=r"/job/[^/]+$")
    emulator.faults.next("reset", path=r"/errors$")
    target.deliver(make_upload("flaky/poll"))
    assert len(emulator.journal) == 1  # the image was sent once
    assert emulator.item(dataset_id, "flaky/poll") is not None


def test_429_gives_retry_after(target, emulator):
    emulator.faults.retry_after = 7
    emulator.faults.next("429", path=r"/append$")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("rate/limited"))
    assert caught.value.retry_after == 7


def test_update_replaces_metadata_and_image(target, emulator, dataset_id):
    first = target.deliver(make_upload("u/1", metadata={"a": 1, "b": 2}, seed=1))
    target.deliver(make_upload("u/1", metadata={"a": 3}, seed=2, previous=first))
    assert emulator.item(dataset_id, "u/1")["metadata"] == {"a": 3}
    assert emulator.image(dataset_id, "u/1") == image_bytes(seed=2)
    assert len(emulator.items(dataset_id)) == 1


def test_lost_reply_then_newer_version_lands_as_one_item(target, emulator, dataset_id):
    """v1's append is committed but its reply lost; v2 is then sent as a first delivery
    (nothing was acked). The item ends with v2, not the ignored-duplicate v1."""
    emulator.faults.next("lost_reply", path=r"/append$")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("lost/one", metadata={"v": 1}, seed=1))
    assert caught.value.outcome_unknown
    target.deliver(make_upload("lost/one", metadata={"v": 2}, seed=2))
    assert len(emulator.jobs()) == 2
    assert [i["reference_id"] for i in emulator.items(dataset_id)] == ["lost/one"]
    assert emulator.item(dataset_id, "lost/one")["metadata"] == {"v": 2}
    assert emulator.image(dataset_id, "lost/one") == image_bytes(seed=2)


def test_deleted_dataset_is_fatal(target, emulator, dataset_id):
    target.deliver(make_upload("x/1"))
    with emulator.lock:
        emulator.state.delete_dataset(dataset_id)
    with pytest.raises(FatalTargetError, match=dataset_id):
        target.deliver(make_upload("x/2"))


def test_server_400_is_permanent(emulator):
    target = make_target(emulator, emulator.add_dataset("scenes", is_scene=True))
    with pytest.raises(PermanentError, match="400.*scenes"):
        target.deliver(make_upload("s/1"))


def test_unserialisable_metadata_is_permanent_before_sending(target, emulator):
    with pytest.raises(PermanentError, match="not valid JSON"):
        target.deliver(make_upload("nan/1", metadata={"x": float("nan")}))
    assert not emulator.journal


# -- lookup -------------------------------------------------------------------------------------
def test_lookup_reads_refloc_without_a_version(target, emulator, dataset_id):
    upload = make_upload("look/up 1")
    assert target.lookup(upload) is None
    target.deliver(upload)
    found = target.lookup(upload)
    assert found.remote_id == "look/up 1"
    assert found.extra["item_id"] == emulator.item(dataset_id, "look/up 1")["id"]
    assert "version" not in found.extra  # nothing of syncd's is stored remotely
    assert emulator.requests[-1][1].endswith("/refloc/look%2Fup%201")


# -- secrets ------------------------------------------------------------------------------------
class EchoingEmulator(NucleusEmulator):
    """A server that echoes the request headers in its error bodies (it happens)."""

    echo_status = 400

    @route("POST", f"{API}/dataset/{DS}/append")
    def append(self, request: Request) -> Response:
        return json_response({"error": "bad", "headers": dict(request.headers)}, self.echo_status)


@pytest.mark.parametrize("status, error", [(400, PermanentError), (500, TransientError), (403, FatalTargetError)])
def test_api_key_never_in_error_messages(status, error):
    with EchoingEmulator() as emulator:
        emulator.echo_status = status
        target = make_target(emulator, emulator.add_dataset("d"))
        basic = base64.b64encode(f"{emulator.api_key}:".encode()).decode()
        with pytest.raises(error) as caught:
            target.deliver(make_upload("k/1"))
        message = str(caught.value)
        assert "authorization" in message.lower()  # the echo is there...
        assert emulator.api_key not in message and basic not in message  # ...the key is not
        assert emulator.api_key not in repr(target)


def test_every_error_class_is_secret_free(target, emulator):
    errors: list[SyncdError] = []
    for kind in ("500", "429", "reset", "lost_reply"):
        emulator.faults.next(kind, path=r"/append$")
        with pytest.raises(SyncdError) as caught:
            target.deliver(make_upload("s/1"))
        errors.append(caught.value)
    emulator.reject["s/1"] = "nope"
    with pytest.raises(SyncdError) as caught:
        target.deliver(make_upload("s/1"))
    errors.append(caught.value)
    assert len(errors) == 5
    assert all(emulator.api_key not in str(e) for e in errors), [str(e) for e in errors]


# -- legacy synchronous append reply ----------------------------------------------------------------
class SyncEmulator(NucleusEmulator):
    """A server answering the multipart append synchronously with counts (SDK <= 0.18)."""

    @route("POST", f"{API}/dataset/{DS}/append")
    def append(self, request: Request) -> Response:
        request.query.pop("async", None)
        return super().append(request)


def test_synchronous_count_reply_is_understood():
    with SyncEmulator() as emulator:
        dataset_id = emulator.add_dataset("d")
        target = make_target(emulator, dataset_id)
        receipt = target.deliver(make_upload("sync/1", metadata={"n": 1}))
        assert receipt.extra["job_id"] is None and emulator.item(dataset_id, "sync/1")["metadata"] == {"n": 1}
        assert not emulator.jobs()
        emulator.reject["sync/2"] = "refused row"
        with pytest.raises(PermanentError, match="refused row"):
            target.deliver(make_upload("sync/2"))
        assert json.loads(json.dumps(emulator.items(dataset_id)))[0]["reference_id"] == "sync/1"


# -- job error rows -------------------------------------------------------------------------------
def test_job_error_rows_are_shown_briefly():
    from syncd.targets.nucleus.jobs import JobResult, classify, error_message

    assert error_message('{"item": {"reference_id": "a"}, "error": "Bad image"}') == "Bad image"
    assert error_message('{"message": "m"}') == "m"
    assert error_message("plain text, not JSON") == "plain text, not JSON"
    assert error_message({"error": "already decoded"}) == "already decoded"
    result = JobResult(job_id="job_1", status="Completed", reply={}, rows=[f"e{n}" for n in range(5)])
    with pytest.raises(PermanentError, match=r"e0; e1; e2 \(and 2 more\)"):
        classify(result, what="item")
    classify(JobResult(job_id="job_2", status="Completed", reply={}), what="item")  # no errors: delivered
