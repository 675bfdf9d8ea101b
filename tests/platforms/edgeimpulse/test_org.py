"""The Edge Impulse organization-data target against the emulator: the add request, metadata
updates, image replacement, recovery, and errors inside HTTP 200 bodies."""

from __future__ import annotations

import json

import pytest

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.labels.support import FEATURES
from syncd.targets.edgeimpulse.org import EdgeImpulseOrgSettings, EdgeImpulseOrgTarget
from syncd.targets.edgeimpulse.payload import IMAGE_KEY, VERSION_KEY, sample_name, user_metadata
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import make_upload, mask_bytes

ADD = r"/data/add$"


class World:
    def __init__(self, emulator: EdgeImpulseEmulator):
        self.emulator = emulator
        self.org = emulator.add_org("Org tests")
        emulator.add_org_dataset(self.org["id"], "frames")
        self.key = emulator.make_org_key(self.org["id"])
        self.targets: list[EdgeImpulseOrgTarget] = []

    def target(self, **overrides) -> EdgeImpulseOrgTarget:
        fields = dict(organization_id=self.org["id"], dataset="frames", api_url=f"{self.emulator.url}/v1", timeout=5)
        fields.update(overrides)
        target = EdgeImpulseOrgTarget("org", EdgeImpulseOrgSettings(**fields), env={"EI_ORG_API_KEY": self.key})
        self.targets.append(target)
        return target

    def items(self, key: str | None = None) -> list[dict]:
        return [i for i in self.emulator.items_in(self.org["id"], "frames")
                if key is None or i["name"] == sample_name(key)]

    def only(self, key: str) -> dict:
        found = self.items(key)
        assert len(found) == 1, f"expected one data item for {key}, found {len(found)}"
        return found[0]


@pytest.fixture
def world():
    with EdgeImpulseEmulator() as emulator:
        emulator.record = True
        made = World(emulator)
        yield made
        for target in made.targets:
            target.close()


def test_add_request_fields_and_stored_item(world):
    target = world.target(bucket_id=1, bucket_name="ei-default-bucket")
    upload = make_upload("cam1/frame_0001", metadata={"site": "A", "n": 2})
    receipt = target.deliver(upload)
    (entry,) = world.emulator.recorded("POST", ADD)
    fields = {p["name"]: p["text"] for p in entry["parts"] if p["filename"] is None}
    assert fields["name"] == "cam1__frame_0001" and fields["dataset"] == "frames"
    assert fields["bucketId"] == "1" and fields["bucketName"] == "ei-default-bucket"
    assert json.loads(fields["metadata"]) == {"site": "A", "n": "2", VERSION_KEY: upload.version,
                                              IMAGE_KEY: upload.image_sha256}
    (file_part,) = [p for p in entry["parts"] if p["filename"]]
    assert (file_part["name"], file_part["filename"], file_part["content_type"]) == ("files[]", "frame_0001.png",
                                                                                   "image/png")
    item = world.only("cam1/frame_0001")
    assert receipt.remote_id == str(item["id"]) and receipt.extra["version"] == upload.version
    assert world.emulator.files_of(item["id"]) == {"frame_0001.png": upload.image}


def test_metadata_update_sends_the_complete_map_in_place(world):
    target = world.target()
    first = target.deliver(make_upload("u/1", metadata={"a": "1", "gone": "x"}))
    second = make_upload("u/1", metadata={"a": "2"}, previous=first)
    receipt = target.deliver(second)
    assert receipt.remote_id == first.remote_id and receipt.extra["version"] == second.version
    assert user_metadata(world.only("u/1")["metadata"]) == {"a": "2"}
    (update,) = world.emulator.recorded("POST", r"/data/\d+$")
    assert update["json"] == {"metadata": {"a": "2", VERSION_KEY: second.version, IMAGE_KEY: second.image_sha256}}
    assert len(world.emulator.recorded("POST", ADD)) == 1


def test_merging_update_route_makes_the_item_be_replaced(world):
    world.emulator.org_metadata_merge = True
    target = world.target()
    first = target.deliver(make_upload("m/1", metadata={"keep": "1", "drop": "2"}))
    second = make_upload("m/1", metadata={"keep": "3"}, previous=first)
    receipt = target.deliver(second)
    item = world.only("m/1")
    assert user_metadata(item["metadata"]) == {"keep": "3"} and receipt.remote_id == str(item["id"])
    assert world.emulator.files_of(item["id"]) == {"m/1".split("/")[-1] + ".png": second.image}


def test_image_change_deletes_then_creates_and_files_follow(world):
    target = world.target()
    first = target.deliver(make_upload("img/1", metadata={"a": "1"}))
    second = make_upload("img/1", metadata={"a": "1"}, seed=8, previous=first)
    receipt = target.deliver(second)
    item = world.only("img/1")
    assert receipt.remote_id == str(item["id"]) != first.remote_id
    assert world.emulator.files_of(item["id"]) == {"1.png": second.image}
    order = [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in world.emulator.journal if e["method"] != "GET"]
    assert order[-2:] == [("DELETE", first.remote_id), ("POST", "add")]


def test_lost_reply_on_add_then_lookup_adopts(world):
    target = world.target()
    upload = make_upload("lost/1", metadata={"a": "1"})
    world.emulator.faults.next("lost_reply", path=ADD)
    with pytest.raises(TransientError) as caught:
        target.deliver(upload)
    assert caught.value.outcome_unknown
    found = target.lookup(upload)
    assert found.remote_id == str(world.only("lost/1")["id"]) and found.extra["version"] == upload.version
    filters = [e["query"]["filter"] for e in world.emulator.recorded("GET", r"/data$")]
    assert filters == [["name = 'lost__1'"]]


def test_lookup_with_two_items_keeps_the_one_holding_the_image(world):
    target = world.target()
    old = target.deliver(make_upload("two/1", seed=1))
    new_upload = make_upload("two/1", seed=2)
    new = target.deliver(new_upload)  # as if a replacement was interrupted before the delete
    assert len(world.items("two/1")) == 2
    found = target.lookup(new_upload)
    assert found.remote_id == new.remote_id and found.extra["stale_ids"] == [int(old.remote_id)]
    assert found.extra["version"] is None
    target.deliver(make_upload("two/1", seed=2, previous=found))
    assert world.only("two/1")["id"] == int(new.remote_id)


def test_errors_in_200_bodies(world):
    """A missing dataset (here said inside an HTTP 200) pauses the target: not the item's fault."""
    target = world.target(dataset="missing")
    world.emulator.error_status = 200
    with pytest.raises(FatalTargetError) as caught:
        target.deliver(make_upload("e/1"))
    assert "does not exist" in str(caught.value) and "dataset" in str(caught.value)
    with pytest.raises(FatalTargetError, match="create the dataset"):
        target.check()
    assert world.target().check() == []


def test_update_of_a_deleted_item_creates_it_again(world):
    target = world.target()
    first = target.deliver(make_upload("gone/1"))
    with world.emulator.lock:
        del world.emulator.data_items[int(first.remote_id)]
    receipt = target.deliver(make_upload("gone/1", metadata={"b": "1"}, previous=first))
    assert receipt.remote_id != first.remote_id and user_metadata(world.only("gone/1")["metadata"]) == {"b": "1"}


@pytest.mark.parametrize("fault", ["429", "503"])
def test_transient_faults_on_update_and_secret_free_auth_errors(world, fault):
    target = world.target()
    first = target.deliver(make_upload("t/1"))
    world.emulator.faults.retry_after = 3
    world.emulator.faults.next(fault, path=r"/data/\d+$", method="POST")
    with pytest.raises(TransientError) as caught:
        target.deliver(make_upload("t/1", metadata={"x": "1"}, previous=first))
    assert caught.value.retry_after == (3 if fault == "429" else None)
    project_key = world.emulator.make_key(world.emulator.add_project()["id"])
    wrong = EdgeImpulseOrgTarget("org", EdgeImpulseOrgSettings(organization_id=world.org["id"], dataset="frames",
                                 api_url=f"{world.emulator.url}/v1"), env={"EI_ORG_API_KEY": project_key})
    with pytest.raises(FatalTargetError) as caught:
        wrong.deliver(make_upload("t/2"))
    assert project_key not in str(caught.value)
    wrong.close()


@pytest.mark.parametrize("status, body, expected, words", [
    (200, {"success": False, "error": "Invalid API key or no access to this organization"},
     FatalTargetError, "API key"),
    (200, {"success": False, "error": "Too many requests, slow down"}, TransientError, "Too many"),
    (200, {"success": False, "error": "Invalid metadata: key too long"}, PermanentError, "key too long"),
    (200, {"success": False}, PermanentError, "no error given"),
    (200, "<html>gateway</html>", TransientError, "not a JSON object"),
    (200, ["not", "an", "object"], TransientError, "not a JSON object"),
    (400, {"success": False, "error": "Metadata must be strings"}, PermanentError, "Metadata must be strings"),
    (403, {"success": False, "error": "Forbidden"}, FatalTargetError, "Forbidden"),
    (504, "upstream timed out", TransientError, "upstream timed out"),
])
def test_reply_classification(world, status, body, expected, words):
    target = world.target()
    first = target.deliver(make_upload("c/1"))
    world.emulator.reply_next(r"/data/\d+$", status, body)
    with pytest.raises(expected) as caught:
        target.deliver(make_upload("c/1", metadata={"n": "2"}, previous=first))
    assert type(caught.value) is expected and words in str(caught.value) and world.key not in str(caught.value)


def test_labels_and_mask_are_reported_not_sent(world):
    """Organization data holds files and metadata only: an item with labels and a mask is
    delivered as its image and metadata, and everything else is listed as not representable."""
    labels = [{"type": "classification", "label": "day"},
              {"type": "box", "label": "car", "x": 1, "y": 1, "width": 4, "height": 4}]
    upload = make_upload("lab/1", metadata={"a": "1"}, labels=labels, mask=mask_bytes(), class_map={"car": [255, 0, 0]})
    receipt = world.target().deliver(upload)
    item = world.only("lab/1")
    assert receipt.extra["version"] == upload.version
    assert world.emulator.files_of(item["id"]) == {"1.png": upload.image}
    assert user_metadata(item["metadata"]) == {"a": "1"}
    assert EdgeImpulseOrgTarget.unsupported_labels(labels, has_mask=True) == ["classification", "box", "mask"]
    assert EdgeImpulseOrgTarget.unsupported_types() == list(FEATURES)
