"""The RedBrick target against the RedBrick emulator: settings, check, create and update,
direct and public storage, adoption by name, lost replies, error classes, secrets."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import uuid

import pytest
from pydantic import ValidationError

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets import target_class
from syncd.targets.redbrick.annotations import EMPTY
from syncd.targets.redbrick.client import PUBLIC_STORAGE, REDBRICK_STORAGE, classify_errors, encode_body, graphql_url
from syncd.targets.redbrick.target import VERSION_KEY, RedBrickSettings, RedBrickTarget
from tests.emulators.redbrick import RedBrickEmulator
from tests.helpers import image_bytes, make_upload


@pytest.fixture
def rb():
    """An emulator with one organisation, a project and a key; ``rb.target(**settings)``."""
    with RedBrickEmulator() as emulator:
        emulator.org_id = str(uuid.uuid4())
        emulator.project_id = emulator.add_project(emulator.org_id, name="Frames")["projectId"]
        emulator.key = emulator.add_api_key(emulator.org_id)
        made = []

        def target(env=None, **overrides):
            values = {"org_id": emulator.org_id, "project_id": emulator.project_id,
                      "url": f"http://localhost:{emulator.port}", "timeout": 5, **overrides}
            made.append(RedBrickTarget("rb", RedBrickSettings(**values), env=env or {"REDBRICK_API_KEY": emulator.key}))
            return made[-1]

        emulator.target = target
        emulator.remote = lambda: emulator.tasks_in(emulator.org_id, emulator.project_id)
        yield emulator
        for t in made:
            t.close()


def ops(emulator) -> list[str]:
    return [c["op"] for c in emulator.calls]


# -- wire rules and settings ------------------------------------------------------------------
@pytest.mark.parametrize("url, endpoint", [
    ("https://api.redbrickai.com", "https://api.redbrickai.com/graphql/"),
    ("https://API.redbrickai.com/", "https://api.redbrickai.com/graphql/"),
    ("http://localhost:4000", "http://localhost:4000/graphql/"),
    ("https://abc.execute-api.us-east-1.amazonaws.com/prod/", "https://abc.execute-api.us-east-1.amazonaws.com/prod/graphql/"),
    ("https://rb.example.com/some/path", "https://rb.example.com/api/graphql/"),
    ("http://127.0.0.1:8080", "https://127.0.0.1:8080/api/graphql/"),
])
def test_graphql_url_follows_the_sdk_rule(url, endpoint):
    assert graphql_url(url) == endpoint


def test_body_is_base64_gzip_json():
    body = encode_body("query q { a }", {"x": 1})
    assert json.loads(gzip.decompress(base64.b64decode(body))) == {"query": "query q { a }", "variables": {"x": 1}}


def test_settings_validate_ids_and_storage():
    org, project = str(uuid.uuid4()), str(uuid.uuid4())
    settings = RedBrickSettings(org_id=org.upper(), project_id=project)
    assert settings.org_id == org and settings.url == "https://api.redbrickai.com" and settings.storage == "direct"
    with pytest.raises(ValidationError, match="project_id must be a UUID"):
        RedBrickSettings(org_id=org, project_id="my-project")
    with pytest.raises(ValidationError, match="needs public_url_prefix"):
        RedBrickSettings(org_id=org, project_id=project, storage="public")
    with pytest.raises(ValidationError, match='only used with storage = "public"'):
        RedBrickSettings(org_id=org, project_id=project, public_url_prefix="https://cdn.example.com/")
    with pytest.raises(ValidationError, match="extra"):
        RedBrickSettings(org_id=org, project_id=project, api_key="secret")
    assert target_class("redbrick") is RedBrickTarget


def test_key_of_wrong_length_or_missing_is_fatal_and_secret_free(rb):
    bad = "s3cr3t-" * 3
    with pytest.raises(FatalTargetError, match="expected 43 characters") as caught:
        rb.target(env={"REDBRICK_API_KEY": bad}).check()
    assert bad not in str(caught.value) and "REDBRICK_API_KEY" in str(caught.value)
    with pytest.raises(FatalTargetError, match="RB_KEY"):
        rb.target(env={}, api_key_env="RB_KEY").check()
    assert rb.calls == []


# -- check ------------------------------------------------------------------------------------
def test_check_reads_project_and_label_storage(rb):
    assert rb.target().check() == []
    assert ops(rb) == ["getProjectSDK", "getLabelStorageSDK"]


def test_check_unknown_project_names_org_and_project(rb):
    other = str(uuid.uuid4())
    with pytest.raises(FatalTargetError) as caught:
        rb.target(project_id=other).check()
    assert other in str(caught.value) and rb.org_id in str(caught.value)


def test_check_project_states(rb):
    creating = rb.add_project(rb.org_id, status="CREATING")["projectId"]
    archived = rb.add_project(rb.org_id, status="REMOVING")["projectId"]
    with pytest.raises(TransientError, match="still being created"):
        rb.target(project_id=creating).check()
    with pytest.raises(FatalTargetError, match="archived"):
        rb.target(project_id=archived).check()


def test_key_of_another_org_is_fatal(rb):
    """The emulator answers with an errors[] entry in a 200, as GraphQL servers do."""
    stranger = rb.add_api_key(str(uuid.uuid4()))
    with pytest.raises(FatalTargetError, match="Unauthorized") as caught:
        rb.target(env={"REDBRICK_API_KEY": stranger}).check()
    assert stranger not in str(caught.value)


# -- deliver ----------------------------------------------------------------------------------
def test_direct_upload_creates_one_task_with_bytes_and_string_metadata(rb):
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": 3, "ok": True, "tags": ["x"], "none": None})
    receipt = rb.target().deliver(upload)
    [task] = rb.remote()
    assert task["name"] == "cam1/frame_0001" and receipt.remote_id == task["taskId"]
    assert task["meta"] == {"site": "A", "n": "3", "ok": "true", "tags": '["x"]', "none": "null",
                            VERSION_KEY: upload.version}
    assert task["storageId"] == REDBRICK_STORAGE and task["labelsData"] == "[]" and task["isGroundTruth"] is False
    blob = rb.blobs[task["items"][0]]
    assert blob["data"] == upload.image and blob["content_type"] == "image/png"
    assert ops(rb) == ["itemsUploadPresignSDK", "createDatapointSDK"]
    presign = rb.calls[0]["variables"]
    assert presign["files"] == ["frame_0001.png"] and presign["fileType"] == ["image/png"]
    assert receipt.extra == {"taskId": task["taskId"], "dpId": task["dpId"], "name": "cam1/frame_0001",
                             "version": upload.version, "image_sha256": upload.image_sha256,
                             "items": task["items"], "storage": "direct", "labels_sha256": EMPTY,
                             "labels_written": False, "not_sent": []}
    # The PUT carries the bytes and no credentials; GraphQL calls carry the key, gzipped.
    [put] = rb.puts
    assert put["headers"]["content-type"] == "image/png" and "apikey" not in put["headers"]
    assert all(c["headers"]["content-encoding-rb"] == "gzip" for c in rb.calls)


def test_jpeg_goes_as_image_jpeg_and_tiff_is_refused(rb):
    target = rb.target(ground_truth=True)
    target.deliver(make_upload("j/1", fmt="JPEG"))
    assert rb.puts[0]["headers"]["content-type"] == "image/jpeg"
    assert rb.remote()[0]["isGroundTruth"] is True and rb.remote()[0]["stage"] == "Output"
    tiff = dataclasses.replace(make_upload("t/1"), image_name="1.tif", image_format="TIFF")
    with pytest.raises(PermanentError, match=r"\.png, \.jpg, \.jpeg, \.bmp"):
        target.deliver(tiff)
    assert len(rb.remote()) == 1


def test_public_storage_points_at_the_url(rb):
    target = rb.target(storage="public", public_url_prefix="https://cdn.example.com/frames")
    target.deliver(make_upload("cam 1/f#1", metadata={"k": "v"}))
    [task] = rb.remote()
    assert task["items"] == ["https://cdn.example.com/frames/cam%201/f%231.png"]
    assert task["storageId"] == PUBLIC_STORAGE
    assert ops(rb) == ["createDatapointSDK"] and rb.puts == []


def test_metadata_change_updates_in_place_without_upload(rb):
    target = rb.target()
    first = target.deliver(make_upload("a/b", metadata={"site": "A", "old": "x"}))
    rb.calls.clear()
    second_upload = make_upload("a/b", metadata={"site": "B"}, previous=first)
    second = target.deliver(second_upload)
    [task] = rb.remote()
    assert task["meta"] == {"site": "B", VERSION_KEY: second_upload.version}
    assert ops(rb) == ["updateTaskItemsSDK"] and rb.calls[0]["variables"]["items"] is None
    assert second.remote_id == first.remote_id and second.extra["items"] == first.extra["items"]


def test_image_change_uploads_and_replaces_items(rb):
    target = rb.target()
    first = target.deliver(make_upload("a/b", seed=1))
    second = target.deliver(make_upload("a/b", seed=2, previous=first))
    [task] = rb.remote()
    assert task["items"] == second.extra["items"] != first.extra["items"]
    assert rb.blobs[task["items"][0]]["data"] == image_bytes(seed=2)
    assert ops(rb) == ["itemsUploadPresignSDK", "createDatapointSDK", "itemsUploadPresignSDK", "updateTaskItemsSDK"]


@pytest.mark.parametrize("message", [None, "Something about the name nobody predicted"])
def test_duplicate_name_is_adopted_and_updated(rb, message):
    """A task of that name exists (made by hand, or by a delivery whose reply was lost):
    whatever the server's wording, the target finds it by name and updates it."""
    if message:
        rb.duplicate_message = message
    existing = rb.add_task(rb.org_id, rb.project_id, "dup/x", meta={"by": "hand"})
    upload = make_upload("dup/x", metadata={"site": "A"})
    receipt = rb.target().deliver(upload)
    [task] = rb.remote()
    assert receipt.remote_id == existing["taskId"] == task["taskId"]
    assert task["meta"] == {"site": "A", VERSION_KEY: upload.version}
    assert task["storageId"] == REDBRICK_STORAGE and rb.blobs[task["items"][0]]["data"] == upload.image
    assert ops(rb) == ["itemsUploadPresignSDK", "createDatapointSDK", "tasksListSDK", "updateTaskItemsSDK"]


def test_lost_reply_on_create_then_recovery_makes_one_task(rb):
    target = rb.target()
    upload = make_upload("lost/1", metadata={"k": "v"})
    rb.faults.next("lost_reply", path=r"/createDatapointSDK$")
    with pytest.raises(TransientError) as caught:
        target.deliver(upload)
    assert caught.value.outcome_unknown
    assert [f[0] for f in rb.faults.injected] == ["lost_reply"]
    assert rb.faults.injected[0][2].endswith("createDatapointSDK")
    # What delivery.py does next: look up; the task holds this version, so it is adopted.
    found = target.lookup(upload)
    assert found.extra["version"] == upload.version and found.extra["image_sha256"] == upload.image_sha256
    assert found.remote_id == rb.remote()[0]["taskId"]
    # Re-sending anyway (as the contract test does) updates in place, without re-uploading.
    rb.calls.clear()
    target.deliver(make_upload("lost/1", metadata={"k": "v"}, previous=found))
    assert ops(rb) == ["updateTaskItemsSDK"] and len(rb.remote()) == 1


def test_lost_reply_on_update_then_lookup_adopts(rb):
    target = rb.target()
    first = target.deliver(make_upload("lost/2", metadata={"k": "1"}))
    second = make_upload("lost/2", metadata={"k": "2"}, seed=5, previous=first)
    rb.faults.next("lost_reply", path=r"/updateTaskItemsSDK$")
    with pytest.raises(TransientError):
        target.deliver(second)
    found = target.lookup(second)
    assert found.extra["version"] == second.version and found.extra["items"] == rb.remote()[0]["items"]


def test_lookup_after_an_update_that_never_arrived_keeps_the_known_image(rb):
    """The update's request failed before it reached RedBrick: the task still holds the
    previous file path, so the previous image hash carries over and only metadata is sent."""
    target = rb.target()
    first = target.deliver(make_upload("keep/1", metadata={"k": "1"}))
    second = make_upload("keep/1", metadata={"k": "2"}, previous=first)
    found = target.lookup(second)
    assert found.extra["version"] == first.extra["version"]
    assert found.extra["image_sha256"] == first.extra["image_sha256"]
    rb.calls.clear()
    target.deliver(dataclasses.replace(second, previous=found))
    assert ops(rb) == ["updateTaskItemsSDK"] and rb.remote()[0]["meta"]["k"] == "2"


def test_lookup_compares_names_exactly_across_pages(rb):
    """taskSearch is a prefix search: "p/a1" also matches the 150 names p/a10..p/a1149; the
    exact one is created last, so it is on the last page."""
    for i in range(150):
        rb.add_task(rb.org_id, rb.project_id, f"p/a1{i}")
    target = rb.target()
    assert target.lookup(make_upload("p/a1")) is None
    task = rb.add_task(rb.org_id, rb.project_id, "p/a1", meta={"by": "hand"})
    rb.calls.clear()
    found = target.lookup(make_upload("p/a1"))
    assert found.remote_id == task["taskId"] and found.extra["version"] is None and found.extra["storage"] == "public"
    assert ops(rb) == ["tasksListSDK"] * 4
    assert [c["variables"]["after"] is None for c in rb.calls] == [True, False, False, False]


def test_task_deleted_in_redbrick_is_created_again(rb):
    target = rb.target()
    first = target.deliver(make_upload("gone/1", metadata={"k": "1"}))
    rb.op_deleteTasksSDK({"orgId": rb.org_id, "projectId": rb.project_id, "taskIds": [first.remote_id]}, rb.org_id)
    second = target.deliver(make_upload("gone/1", metadata={"k": "2"}, previous=first))
    [task] = rb.remote()
    assert second.remote_id == task["taskId"] != first.remote_id and task["meta"]["k"] == "2"
    assert rb.blobs[task["items"][0]]["data"] == image_bytes(seed=0)


def test_reserved_metadata_key_is_refused(rb):
    with pytest.raises(PermanentError, match=VERSION_KEY):
        rb.target().deliver(make_upload("r/1", metadata={VERSION_KEY: "mine"}))
    assert rb.calls == []


# -- error classes ----------------------------------------------------------------------------
@pytest.mark.parametrize("message, kind", [
    ("Unauthorized", FatalTargetError),
    ("You do not have permission to upload to this project", FatalTargetError),
    ("Project 123 not found", FatalTargetError),
    ("Rate limit exceeded, slow down", TransientError),
    ("Internal server error", TransientError),
    ("Invalid item path", PermanentError),
])
def test_classify_graphql_errors(message, kind):
    error = classify_errors([message], "ctx")
    assert type(error) is kind or (kind is PermanentError and isinstance(error, PermanentError))
    assert message in str(error)


def test_errors_in_a_200_are_classified_and_redacted(rb):
    target = rb.target()
    rb.script_error("createDatapointSDK", f"items invalid for key {rb.key}")
    with pytest.raises(PermanentError, match="items invalid") as caught:
        target.deliver(make_upload("e/1"))
    assert rb.key not in str(caught.value) and "***" in str(caught.value)
    assert rb.remote() == [] and ops(rb)[-1] == "tasksListSDK"  # looked up before giving up
    rb.script_error("createDatapointSDK", "Too many requests")
    with pytest.raises(TransientError):
        target.deliver(make_upload("e/1"))
    rb.script_error("itemsUploadPresignSDK", "Not authorized for this project")
    with pytest.raises(FatalTargetError):
        target.deliver(make_upload("e/1"))
    target.deliver(make_upload("e/1"))
    assert len(rb.remote()) == 1


@pytest.mark.parametrize("fault", ["429", "503", "500", "reset"])
def test_transient_http_faults(rb, fault):
    target = rb.target()
    rb.faults.retry_after = 7
    rb.faults.next(fault, path=r"/createDatapointSDK$")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("f/1"))
    # A 429 was refused before anything was done (no lookup needed) and slows the target.
    assert caught.value.outcome_unknown == (fault != "429")
    assert caught.value.throttled == (fault == "429")
    if fault == "429":
        assert caught.value.retry_after == 7
    assert rb.key not in str(caught.value)
    assert rb.remote() == []


def test_faults_on_queries_and_puts_are_known_outcomes(rb):
    target = rb.target()
    rb.faults.next("503", path=r"/itemsUploadPresignSDK$")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("q/1"))
    assert caught.value.outcome_unknown is False
    rb.faults.next("lost_reply", path=r"^/upload/")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("q/1"))
    assert caught.value.outcome_unknown is False
    rb.faults.next("503", path=r"^/upload/")
    with pytest.raises(TransientError, match="new upload URL"):
        target.deliver(make_upload("q/1"))
    target.deliver(make_upload("q/1"))
    assert [t["name"] for t in rb.remote()] == ["q/1"]


def test_revoked_key_and_wrong_endpoint_are_fatal(rb):
    target = rb.target()
    target.check()
    rb.revoke(rb.key)
    with pytest.raises(FatalTargetError, match="check the API key") as caught:
        target.deliver(make_upload("x/1"))
    assert rb.key not in str(caught.value)
    with pytest.raises(FatalTargetError, match="no RedBrick GraphQL endpoint"):
        rb.target(url=f"http://localhost:{rb.port}/nothing").check()
