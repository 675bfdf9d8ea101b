"""The Edge Impulse project target against the emulator: wire shapes, labels, updates,
duplicate refusals, recovery after lost replies, error classes."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import requests
from PIL import Image

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.base import Receipt
from syncd.targets.edgeimpulse.payload import IMAGE_KEY, VERSION_KEY, sample_name, user_metadata
from syncd.targets.edgeimpulse.target import EdgeImpulseSettings, EdgeImpulseTarget
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import image_bytes, make_upload

INGEST = r"^/api/[^/]+/files$"


class World:
    def __init__(self, emulator: EdgeImpulseEmulator):
        self.emulator = emulator
        self.project = emulator.add_project("Target tests")
        self.key = emulator.make_key(self.project["id"])
        self.targets: list[EdgeImpulseTarget] = []

    def target(self, **overrides) -> EdgeImpulseTarget:
        fields = dict(project_id=self.project["id"], ingestion_url=self.emulator.url,
                      api_url=f"{self.emulator.url}/v1", timeout=5)
        fields.update(overrides)
        target = EdgeImpulseTarget("ei", EdgeImpulseSettings(**fields), env={"EI_API_KEY": self.key})
        self.targets.append(target)
        return target

    def samples(self, key: str | None = None) -> list[dict]:
        found = self.emulator.samples_in(self.project["id"])
        return [s for s in found if key is None or s["filename"] == sample_name(key)]

    def only(self, key: str) -> dict:
        found = self.samples(key)
        assert len(found) == 1, f"expected one sample for {key}, found {len(found)}"
        return found[0]


@pytest.fixture
def world():
    with EdgeImpulseEmulator() as emulator:
        emulator.record = True
        made = World(emulator)
        yield made
        for target in made.targets:
            target.close()


# -- names ---------------------------------------------------------------------------------------
def test_sample_names_are_readable_for_plain_keys_and_never_collide():
    assert sample_name("cam1/frame_0001") == "cam1__frame_0001"
    assert sample_name("a.b/c-d.e_f") == "a.b__c-d.e_f"
    tricky = ["a/b", "a__b", "a_/b", "a/_b", "a___b", "a b/c", "a-b/c", "x/Käse", "x/K-se", "a//b", "a/b/",
              "x" * 200, "x" * 201, "a.", "a", "A"]
    names = [sample_name(k) for k in tricky]
    assert len(set(names)) == len(tricky), dict(zip(tricky, names))
    assert all(len(n) <= 120 and all(c.isalnum() or c in "._-" for c in n) for n in names)
    assert sample_name("a b/c").endswith(sample_name("a b/c")[-12:]) and "___" in sample_name("a b/c")


# -- the upload request --------------------------------------------------------------------------
def test_upload_request_carries_label_metadata_and_dedup_headers(world):
    target = world.target(category="training")
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": 3, "ok": True, "tags": ["x"], "none": None},
                         labels=[{"type": "box", "label": "car", "x": 1, "y": 1, "width": 2, "height": 2},
                                 {"type": "classification", "label": "Käse & Brot"}])
    receipt = target.deliver(upload)
    (entry,) = world.emulator.recorded("POST", INGEST)
    headers = entry["headers"]
    assert entry["path"] == "/api/training/files"
    assert headers["x-label"] == "K%C3%A4se%20%26%20Brot"
    assert headers["x-disallow-duplicates"] == "1" and headers["x-upload-source"]
    assert "x-no-label" not in headers
    assert json.loads(headers["x-metadata"]) == {"site": "A", "n": "3", "ok": "true", "tags": '["x"]', "none": "null",
                                                 VERSION_KEY: upload.version, IMAGE_KEY: upload.image_sha256}
    (part,) = entry["parts"]
    assert (part["name"], part["filename"], part["content_type"]) == ("data", "cam1__frame_0001.png", "image/png")
    sample = world.only("cam1/frame_0001")
    assert sample["label"] == "Käse & Brot" and sample["category"] == "training"
    assert world.emulator.sample_data[sample["id"]] == upload.image
    assert receipt.remote_id == str(sample["id"]) and receipt.extra["version"] == upload.version
    assert receipt.extra["image_sha256"] == upload.image_sha256


@pytest.mark.parametrize("source, upload_kwargs, expected", [
    ("classification", {"labels": [{"type": "box", "label": "car", "x": 1, "y": 1, "width": 2, "height": 2}]}, None),
    ("metadata", {"metadata": {"label": "idle", "x": "1"}}, "idle"),
    ("metadata", {"metadata": {"x": "1"}}, None),
    ("folder", {}, "cats"),
    ("none", {"labels": [{"type": "classification", "label": "dog"}]}, None),
])
def test_label_sources(world, source, upload_kwargs, expected):
    target = world.target(label_source=source)
    target.deliver(make_upload("site/cats/f1", **upload_kwargs))
    headers = world.emulator.recorded("POST", INGEST)[0]["headers"]
    if expected is None:
        assert headers["x-no-label"] == "1" and "x-label" not in headers
        assert world.only("site/cats/f1")["label"] == ""
    else:
        assert headers["x-label"] == expected and world.only("site/cats/f1")["label"] == expected


def test_other_image_formats_are_sent_as_png(world):
    target = world.target()
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(seed=3))).save(buffer, format="TIFF")
    upload = replace(make_upload("scan/page"), image=buffer.getvalue(), image_format="TIFF", image_name="page.tif")
    target.deliver(upload)
    sample = world.only("scan/page")
    stored = world.emulator.sample_data[sample["id"]]
    assert stored.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(stored)).tobytes() == Image.open(io.BytesIO(image_bytes(seed=3))).tobytes()
    assert sample["metadata"][IMAGE_KEY] == upload.image_sha256  # the local file's hash, as the journal knows it


def test_large_metadata_is_set_through_studio_after_the_upload(world):
    target = world.target()
    upload = make_upload("big/meta", metadata={f"k{i}": "v" * 100 for i in range(60)})
    receipt = target.deliver(upload)
    header = json.loads(world.emulator.recorded("POST", INGEST)[0]["headers"]["x-metadata"])
    assert VERSION_KEY not in header
    sample = world.only("big/meta")
    assert user_metadata(sample["metadata"]) == upload.metadata and sample["metadata"][VERSION_KEY] == upload.version
    assert target.lookup(upload).extra["version"] == upload.version == receipt.extra["version"]


# -- updates -------------------------------------------------------------------------------------
def test_metadata_and_label_change_update_the_sample_in_place(world):
    target = world.target()
    first = target.deliver(make_upload("u/1", metadata={"a": "1", "gone": "x"},
                                       labels=[{"type": "classification", "label": "cat"}]))
    second = make_upload("u/1", metadata={"a": "2"}, labels=[{"type": "classification", "label": "dog"}],
                         previous=first)
    receipt = target.deliver(second)
    assert receipt.remote_id == first.remote_id and receipt.extra["version"] == second.version
    sample = world.only("u/1")
    assert sample["label"] == "dog" and user_metadata(sample["metadata"]) == {"a": "2"}
    assert len(world.emulator.recorded("POST", INGEST)) == 1
    assert world.emulator.recorded("POST", r"/raw-data/\d+/metadata$")[0]["json"] == {
        "metadata": {"a": "2", VERSION_KEY: second.version, IMAGE_KEY: second.image_sha256}}
    assert world.emulator.recorded("POST", r"/edit-label$")[0]["json"] == {"label": "dog"}


def test_merging_platform_gets_removed_keys_cleared(world):
    world.emulator.metadata_merge = True
    target = world.target()
    first = target.deliver(make_upload("m/1", metadata={"keep": "1", "drop": "2"}))
    target.deliver(make_upload("m/1", metadata={"keep": "3"}, previous=first))
    assert user_metadata(world.only("m/1")["metadata"]) == {"keep": "3"}
    cleared = world.emulator.recorded("POST", r"/clear-metadata-by-key$")
    assert [e["json"]["metadataKey"] for e in cleared] == ["drop"]


def test_image_change_uploads_new_sample_then_deletes_old(world):
    target = world.target()
    first = target.deliver(make_upload("img/1", metadata={"a": "1"}))
    second = make_upload("img/1", metadata={"a": "1"}, seed=9, previous=first)
    receipt = target.deliver(second)
    sample = world.only("img/1")
    assert receipt.remote_id == str(sample["id"]) != first.remote_id
    assert world.emulator.sample_data[sample["id"]] == second.image
    assert [e["path"] for e in world.emulator.recorded("DELETE", "")] == [
        f"/v1/api/{world.project['id']}/raw-data/{first.remote_id}"]


@pytest.mark.parametrize("error_status", [200, 404])
def test_sample_deleted_in_studio_is_uploaded_again(world, error_status):
    world.emulator.error_status = error_status  # the "not found" arrives inside a 200 or as a 404
    target = world.target()
    first = target.deliver(make_upload("del/1", metadata={"a": "1"}))
    with world.emulator.lock:
        del world.emulator.samples[int(first.remote_id)]
    receipt = target.deliver(make_upload("del/1", metadata={"a": "2"}, previous=first))
    assert receipt.remote_id != first.remote_id
    assert user_metadata(world.only("del/1")["metadata"]) == {"a": "2"}


def test_receipt_of_another_project_is_not_reused(world):
    target = world.target()
    foreign = Receipt("77", {"project_id": 99999, "image_sha256": make_upload("p/1").image_sha256})
    receipt = target.deliver(make_upload("p/1", previous=foreign))
    assert receipt.remote_id == str(world.only("p/1")["id"])
    assert not world.emulator.recorded("POST", r"/metadata$")


# -- duplicates and recovery ------------------------------------------------------------------------
def test_resend_refused_as_duplicate_adopts_own_sample_and_updates_it(world):
    target = world.target()
    first = target.deliver(make_upload("dup/1", metadata={"v": "old"}))
    # A re-send without lookup (e.g. the journal was lost) with newer metadata.
    again = make_upload("dup/1", metadata={"v": "new"})
    receipt = target.deliver(again)
    assert receipt.remote_id == first.remote_id and receipt.extra["version"] == again.version
    assert user_metadata(world.only("dup/1")["metadata"]) == {"v": "new"}
    (refused, _) = world.emulator.recorded("POST", INGEST)
    assert refused["headers"]["x-disallow-duplicates"] == "1"


def test_identical_image_of_another_item_is_refused_unless_duplicates_are_allowed(world):
    target = world.target()
    target.deliver(make_upload("same/a", seed=4))
    with pytest.raises(PermanentError) as caught:
        target.deliver(make_upload("same/b", seed=4))
    message = str(caught.value)
    assert "already exists" in message and "allow_duplicates" in message and world.key not in message
    assert world.samples("same/b") == []
    world.target(allow_duplicates=True).deliver(make_upload("same/b", seed=4))
    assert len(world.samples("same/b")) == 1
    assert "x-disallow-duplicates" not in world.emulator.recorded("POST", INGEST)[-1]["headers"]


def test_per_file_failure_is_permanent_and_names_the_reason(world):
    target = world.target()
    broken = replace(make_upload("bad/1"), image=b"\x89PNX not really a png")
    with pytest.raises(PermanentError) as caught:
        target.deliver(broken)
    assert "not a valid image" in str(caught.value) and world.key not in str(caught.value)
    assert world.samples() == []


def test_lost_reply_then_lookup_adopts_the_sample_without_resending(world):
    target = world.target()
    upload = make_upload("lost/1", metadata={"a": "1"}, labels=[{"type": "classification", "label": "cat"}])
    world.emulator.faults.next("lost_reply", path=INGEST)
    with pytest.raises(TransientError) as caught:
        target.deliver(upload)
    assert caught.value.outcome_unknown
    found = target.lookup(upload)
    assert found.extra["version"] == upload.version  # the daemon adopts it: no second upload
    assert found.remote_id == str(world.only("lost/1")["id"])
    assert len(world.emulator.recorded("POST", INGEST)) == 1


def test_lost_reply_on_metadata_update_is_adopted(world):
    target = world.target()
    first = target.deliver(make_upload("lost/2", metadata={"a": "1"}))
    second = make_upload("lost/2", metadata={"a": "2"}, previous=first)
    world.emulator.faults.next("lost_reply", path=r"/metadata$")
    with pytest.raises(TransientError):
        target.deliver(second)
    found = target.lookup(second)
    assert found.remote_id == first.remote_id and found.extra["version"] == second.version


def test_interrupted_image_replacement_converges_to_one_sample(world):
    target = world.target()
    first = target.deliver(make_upload("swap/1"))
    second = make_upload("swap/1", seed=12, previous=first)
    world.emulator.faults.next("503", method="DELETE")
    with pytest.raises(TransientError) as caught:
        target.deliver(second)
    assert caught.value.outcome_unknown and len(world.samples("swap/1")) == 2
    found = target.lookup(replace(second, previous=None))
    assert found.extra["version"] is None and found.extra["stale_ids"] == [int(first.remote_id)]
    receipt = target.deliver(replace(second, previous=found))
    sample = world.only("swap/1")
    assert receipt.remote_id == str(sample["id"]) and world.emulator.sample_data[sample["id"]] == second.image
    assert target.lookup(second).extra["version"] == second.version


# -- error classes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, method", [(INGEST, "POST"), (r"/raw-data/\d+/metadata$", "POST"),
                                          (r"/raw-data$", "GET")])
@pytest.mark.parametrize("fault", ["429", "500", "502"])
def test_rate_limits_and_server_errors_are_transient(world, path, method, fault):
    target = world.target()
    first = target.deliver(make_upload("t/1"))
    world.emulator.faults.retry_after = 7
    world.emulator.faults.next(fault, path=path, method=method)
    upload = make_upload("t/1", metadata={"x": "y"}, previous=first) if "metadata" in path else make_upload("t/2")
    with pytest.raises(TransientError) as caught:
        target.lookup(upload) if method == "GET" else target.deliver(upload)
    assert (caught.value.retry_after == 7) if fault == "429" else caught.value.retry_after is None
    assert world.key not in str(caught.value)


def test_errors_inside_http_200_are_classified(world):
    target = world.target()
    first = target.deliver(make_upload("e/1"))
    world.emulator.error_status = 200
    world.emulator.revoke(world.key)  # 401 on every route
    with pytest.raises(FatalTargetError) as caught:
        target.deliver(make_upload("e/1", metadata={"a": "b"}, previous=first))
    assert world.key not in str(caught.value) and "Invalid API key" in str(caught.value)


def test_check_refuses_wrong_project_and_revoked_key(world):
    other = world.emulator.add_project("Someone else's")
    with pytest.raises(FatalTargetError) as caught:
        world.target(project_id=other["id"]).check()
    assert "project_id" in str(caught.value) and world.key not in str(caught.value)
    (boxes_note,) = world.target().check()  # a single-label project keeps no bounding boxes
    assert "Bounding boxes" in boxes_note and "masks" in boxes_note
    detector = world.emulator.add_project("Boxes", labeling_method="object_detection")
    world.key = world.emulator.make_key(detector["id"])
    assert "ignored" in world.target(project_id=detector["id"]).check()[0]
    assert world.target(project_id=detector["id"], label_source="none").check() == []
    world.emulator.revoke(world.key)
    with pytest.raises(FatalTargetError) as caught:
        world.target(project_id=detector["id"]).check()
    assert world.key not in str(caught.value) and world.key not in repr(caught.value)


def test_missing_key_and_reserved_metadata_keys(world):
    target = EdgeImpulseTarget("ei", EdgeImpulseSettings(project_id=1, ingestion_url=world.emulator.url), env={})
    with pytest.raises(FatalTargetError, match="EI_API_KEY"):
        target.deliver(make_upload("k/1"))
    with pytest.raises(PermanentError, match=VERSION_KEY):
        world.target().deliver(make_upload("k/2", metadata={VERSION_KEY: "mine"}))
    assert world.samples() == []


def test_sample_uploaded_by_another_tool_with_our_name_and_bytes_is_adopted(world):
    upload = make_upload("pre/existing", metadata={"a": "1"})
    with requests.Session() as session:  # as the CLI uploader or the SDK would have done it
        session.post(f"{world.emulator.url}/api/training/files", headers={"x-api-key": world.key, "x-label": "x"},
                     files=[("data", ("pre__existing.png", upload.image, "image/png"))], timeout=5)
    before = world.only("pre/existing")
    receipt = world.target().deliver(upload)  # refused as a duplicate, found by name and hash, adopted
    after = world.only("pre/existing")
    assert receipt.remote_id == str(before["id"]) == str(after["id"])
    assert after["metadata"][IMAGE_KEY] == upload.image_sha256 and user_metadata(after["metadata"]) == {"a": "1"}


def test_recovery_is_bounded_when_the_sample_found_cannot_be_updated(world):
    """Issue 10 item 14: the journal lost, the re-send refused as a duplicate, the sample
    found by name but Studio answering "not found" for it (here on every try): one upload per
    attempt at most, ending in a clear transient error, never a recursion."""
    target = world.target()
    upload = make_upload("lost/journal", metadata={"a": "1"})
    sample_id = target.deliver(upload).remote_id
    world.emulator.journal.clear()
    for _ in range(40):
        world.emulator.reply_next(r"/raw-data/\d+/metadata$", 200,
                                  {"success": False, "error": f"No sample found with ID {sample_id}"})
    with pytest.raises(TransientError) as caught:
        target.deliver(upload)  # no previous receipt: the journal was deleted
    assert "vanished" in str(caught.value) or "not found" in str(caught.value).lower()
    assert len(world.emulator.recorded("POST", INGEST)) == 1
    assert len(world.emulator.recorded("POST", r"/metadata$")) == 1
    # With the previous receipt the attempt is bounded too: the update, one upload, one lookup.
    world.emulator.journal.clear()
    with pytest.raises(TransientError):
        target.deliver(replace(upload, previous=target.lookup(upload)))
    assert len(world.emulator.recorded("POST", INGEST)) == 1
    assert len(world.emulator.recorded("POST", r"/metadata$")) == 1
    # Once Studio finds the sample again, the next attempt adopts it.
    world.emulator.canned.clear()
    receipt = target.deliver(upload)
    assert receipt.remote_id == sample_id and receipt.extra["version"] == upload.version
    assert len(world.samples("lost/journal")) == 1


# -- a 404 on a route of the project or the service pauses; on a sample it means "gone" ------------
def test_ingestion_404_pauses_the_target_and_check_sees_it(world):
    """Issue 10 item 15: a 404 from the ingestion service (a wrong URL, the service moved) is
    about the target, not the item: FatalTargetError (the daemon pauses the target and keeps
    the item due); the check fails until the route answers again, then the item goes."""
    target = world.target()
    assert target.check()  # (a note about boxes) the project and the ingestion route answer
    world.emulator.hide_routes(r"^/api/")
    with pytest.raises(FatalTargetError) as caught:
        target.deliver(make_upload("gone/1"))
    assert "404" in str(caught.value) and world.key not in str(caught.value)
    with pytest.raises(FatalTargetError, match="ingestion_url"):
        target.check()
    world.emulator.hide_routes(None)
    target.check()
    target.deliver(make_upload("gone/1"))
    assert len(world.samples("gone/1")) == 1


@pytest.mark.parametrize("error_status", [200, 404])
def test_project_route_not_found_pauses_sample_route_not_found_is_gone(world, error_status):
    target = world.target()
    first = target.deliver(make_upload("nf/1"))
    world.emulator.error_status = error_status
    # The list route (a project route) answering "not found": the project is gone.
    world.emulator.reply_next(r"/raw-data$", error_status, {"success": False, "error": "Project not found"})
    with pytest.raises(FatalTargetError, match="Project not found"):
        target.lookup(make_upload("nf/1"))
    # A sample route answering "not found": that sample is gone (uploaded again).
    with world.emulator.lock:
        del world.emulator.samples[int(first.remote_id)]
    receipt = target.deliver(make_upload("nf/1", metadata={"a": "b"}, previous=first))
    assert receipt.remote_id != first.remote_id and len(world.samples("nf/1")) == 1


def test_error_words_are_read_in_the_platforms_text_only(world):
    """A Studio refusal of an item whose key contains "permission" / "not found" is that
    item's failure, not an auth problem or a missing route."""
    target = world.target()
    first = target.deliver(make_upload("permission/not found"))
    world.emulator.reply_next(r"/metadata$", 400, {"success": False, "error": "Metadata value too long"})
    with pytest.raises(PermanentError) as caught:
        target.deliver(make_upload("permission/not found", metadata={"a": "b"}, previous=first))
    assert type(caught.value) is PermanentError and "too long" in str(caught.value)
