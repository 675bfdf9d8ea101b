"""Labels and masks on the Edge Impulse project target, through the emulator: the sample
label and bounding boxes arrive as the converter builds them, label changes replace the
boxes in place, lost replies never duplicate them, and what Edge Impulse cannot hold is
reported while the item is still delivered."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from syncd.errors import PermanentError, TransientError
from syncd.targets.edgeimpulse.payload import sample_name, to_edgeimpulse, user_metadata
from syncd.targets.edgeimpulse.target import EdgeImpulseSettings, EdgeImpulseTarget
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import make_upload

INGEST = r"^/api/[^/]+/files$"
BOXES = r"/raw-data/\d+/bounding-boxes$"
CLASS_MAP = {"car": [0, 0, 142], "road": [128, 64, 128]}
CAR = {"type": "box", "label": "car", "x": 2, "y": 3, "width": 10.4, "height": 5}
SIGN = {"type": "box", "label": "sign", "x": 20, "y": 1, "width": 4, "height": 6}
DAY = {"type": "classification", "label": "day"}


def mask_png(*regions: tuple[str, slice, slice], speckle: bool = False) -> bytes:
    """A 32x24 RGB mask painted with ``(class, rows, cols)`` regions (or isolated pixels)."""
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    for name, rows, cols in regions:
        pixels[rows, cols] = CLASS_MAP[name]
    if speckle:  # one car pixel every other row and column: 192 separate regions
        pixels[::2, ::2] = CLASS_MAP["car"]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


MASK = mask_png(("road", slice(18, 24), slice(0, 32)), ("car", slice(2, 6), slice(24, 30)))


class World:
    def __init__(self, emulator: EdgeImpulseEmulator, labeling_method: str = "object_detection"):
        self.emulator = emulator
        self.project = emulator.add_project("Labels", labeling_method=labeling_method)
        self.key = emulator.make_key(self.project["id"])
        self.target = EdgeImpulseTarget("ei", EdgeImpulseSettings(
            project_id=self.project["id"], ingestion_url=emulator.url, api_url=f"{emulator.url}/v1", timeout=5),
            env={"EI_API_KEY": self.key})

    def only(self, key: str) -> dict:
        found = [s for s in self.emulator.samples_in(self.project["id"]) if s["filename"] == sample_name(key)]
        assert len(found) == 1, f"expected one sample for {key}, found {len(found)}"
        return found[0]

    def sent(self, method: str, path: str) -> list[dict]:
        return self.emulator.recorded(method, path)

    def redeliver(self, upload):
        """What the daemon does after an unknown outcome: look up, adopt or update."""
        found = self.target.lookup(upload)
        if found is not None and found.extra.get("version") == upload.version:
            return found, True
        return self.target.deliver(replace(upload, previous=found)), False


@pytest.fixture
def world():
    with EdgeImpulseEmulator() as emulator:
        emulator.record = True
        made = World(emulator)
        yield made
        made.target.close()


def boxes_of(upload) -> list[dict]:
    return to_edgeimpulse(upload).bounding_boxes


def test_label_boxes_and_mask_arrive_in_one_upload(world):
    upload = make_upload("rt/1", metadata={"a": "1"}, labels=[CAR, DAY, SIGN], mask=MASK, class_map=CLASS_MAP)
    receipt = world.target.deliver(upload)
    sample = world.only("rt/1")
    assert sample["label"] == "day"
    assert sample["boundingBoxes"] == [
        {"label": "car", "x": 2, "y": 3, "width": 10, "height": 5},  # 2..12.4 -> whole pixels 2..12
        {"label": "sign", "x": 20, "y": 1, "width": 4, "height": 6},
        {"label": "car", "x": 24, "y": 2, "width": 6, "height": 4},  # the mask's regions, one box each
        {"label": "road", "x": 0, "y": 18, "width": 32, "height": 6},
    ] == boxes_of(upload)
    (request,) = world.sent("POST", INGEST)  # one request: image, label, metadata and boxes
    assert json.loads(request["headers"]["x-bounding-boxes"]) == boxes_of(upload)
    assert [p["filename"] for p in request["parts"]] == ["rt__1.png"]
    assert not world.sent("POST", BOXES)
    assert receipt.extra["version"] == upload.version
    assert world.target.lookup(upload).extra["version"] == upload.version  # complete: boxes included


def test_many_boxes_travel_as_a_labels_part(world):
    upload = make_upload("rt/many", mask=mask_png(speckle=True), class_map=CLASS_MAP)
    world.target.deliver(upload)
    (request,) = world.sent("POST", INGEST)
    assert "x-bounding-boxes" not in request["headers"]
    assert [p["filename"] for p in request["parts"]] == ["rt__many.png", "bounding_boxes.labels"]
    sample = world.only("rt/many")
    assert len(sample["boundingBoxes"]) == 192 and sample["boundingBoxes"] == boxes_of(upload)
    assert world.target.lookup(upload).extra["version"] == upload.version


def test_label_changes_replace_the_boxes_and_metadata_changes_send_none(world):
    first = world.target.deliver(make_upload("up/1", labels=[CAR, SIGN, DAY], mask=MASK, class_map=CLASS_MAP))
    # Metadata only: the boxes are already right, so the bounding-boxes route is not called.
    second = world.target.deliver(make_upload("up/1", metadata={"m": "1"}, labels=[CAR, SIGN, DAY], mask=MASK,
                                              class_map=CLASS_MAP, previous=first))
    assert not world.sent("POST", BOXES)
    # A box removed, the mask changed, the class changed: the complete new list replaces the old.
    new_mask = mask_png(("car", slice(10, 12), slice(0, 4)))
    third = make_upload("up/1", metadata={"m": "1"}, labels=[SIGN, {"type": "classification", "label": "night"}],
                        mask=new_mask, class_map=CLASS_MAP, previous=second)
    receipt = world.target.deliver(third)
    sample = world.only("up/1")
    assert receipt.remote_id == first.remote_id == str(sample["id"])
    assert sample["label"] == "night" and user_metadata(sample["metadata"]) == {"m": "1"}
    assert sample["boundingBoxes"] == [{"label": "sign", "x": 20, "y": 1, "width": 4, "height": 6},
                                       {"label": "car", "x": 0, "y": 10, "width": 4, "height": 2}]
    assert [e["json"] for e in world.sent("POST", BOXES)] == [{"boundingBoxes": sample["boundingBoxes"]}]
    # Every label and the mask removed: the boxes are cleared and the sample is unlabeled.
    world.target.deliver(make_upload("up/1", metadata={"m": "1"}, previous=receipt))
    sample = world.only("up/1")
    assert sample["boundingBoxes"] == [] and sample["label"] == ""
    assert world.sent("POST", BOXES)[-1]["json"] == {"boundingBoxes": []}
    assert len(world.sent("POST", INGEST)) == 1  # all of it in place, never a second sample


def test_image_change_carries_the_boxes_to_the_new_sample(world):
    first = world.target.deliver(make_upload("img/1", labels=[CAR]))
    receipt = world.target.deliver(make_upload("img/1", labels=[SIGN], seed=5, previous=first))
    sample = world.only("img/1")
    assert receipt.remote_id == str(sample["id"]) != first.remote_id
    assert sample["boundingBoxes"] == [{"label": "sign", "x": 20, "y": 1, "width": 4, "height": 6}]


def test_lost_reply_on_the_boxes_request_never_duplicates(world):
    first = world.target.deliver(make_upload("lost/1", labels=[CAR]))
    second = make_upload("lost/1", labels=[CAR, SIGN], previous=first)
    world.emulator.faults.next("lost_reply", path=BOXES)
    with pytest.raises(TransientError) as caught:
        world.target.deliver(second)
    assert caught.value.outcome_unknown
    # Sent again as it is (no lookup): the boxes are already there, nothing is re-sent.
    world.target.deliver(second)
    assert len(world.sent("POST", BOXES)) == 1
    # The daemon's way: the lookup sees the complete sample and adopts it.
    receipt, adopted = world.redeliver(replace(second, previous=None))
    assert adopted and receipt.remote_id == first.remote_id
    assert world.only("lost/1")["boundingBoxes"] == boxes_of(second)


def test_lost_reply_on_the_upload_then_resend_keeps_one_set_of_boxes(world):
    upload = make_upload("lost/2", labels=[CAR, SIGN], mask=MASK, class_map=CLASS_MAP)
    world.emulator.faults.next("lost_reply", path=INGEST)
    with pytest.raises(TransientError):
        world.target.deliver(upload)
    receipt, adopted = world.redeliver(upload)
    assert adopted and receipt.remote_id == str(world.only("lost/2")["id"])
    # A re-send without the lookup (state directory lost): refused as a duplicate, adopted.
    world.target.deliver(upload)
    sample = world.only("lost/2")
    assert sample["boundingBoxes"] == boxes_of(upload) and len(sample["boundingBoxes"]) == 4
    assert not world.sent("POST", BOXES)


def test_what_edge_impulse_cannot_hold_is_reported_and_the_item_delivered(world):
    labels = [
        {"type": "classification", "label": "day"},
        {"type": "classification", "label": "rain"},
        {"type": "box", "label": "car", "x": 1, "y": 1, "width": 4, "height": 4, "attributes": {"occluded": True}},
        {"type": "point", "label": "nose", "x": 3, "y": 4},
        {"type": "polygon", "label": "roof", "points": [[0, 0], [10, 0], [5, 8]]},
        {"type": "polyline", "label": "lane", "points": [[0, 20], [31, 18]]},
        {"type": "keypoints", "label": "person", "points": [{"name": "head", "x": 5, "y": 5}]},
    ]
    upload = make_upload("lossy/1", labels=labels)
    receipt = world.target.deliver(upload)
    sample = world.only("lossy/1")
    assert receipt.extra["version"] == upload.version
    assert sample["label"] == "day"
    assert sample["boundingBoxes"] == [{"label": "car", "x": 1, "y": 1, "width": 4, "height": 4}]
    # The rest is not sent, and it is listed (the daemon shows this per item in `syncd status`).
    assert EdgeImpulseTarget.unsupported_labels(labels) == [
        "point", "polygon", "polyline", "keypoints", "attributes", "multiple classifications"]
    assert to_edgeimpulse(upload).unsupported == EdgeImpulseTarget.unsupported_labels(labels)


def test_single_label_project_drops_ingested_boxes_and_the_lookup_notices(world):
    flat = World(world.emulator, labeling_method="single_label")
    try:
        upload = make_upload("flat/1", labels=[CAR, DAY])
        flat.emulator.faults.next("lost_reply", path=INGEST)
        with pytest.raises(TransientError):
            flat.target.deliver(upload)
        assert flat.only("flat/1")["boundingBoxes"] == []  # dropped silently, as documented
        receipt, adopted = flat.redeliver(upload)
        assert not adopted  # not complete without its boxes: sent through Studio
        assert flat.only("flat/1")["boundingBoxes"] == boxes_of(upload)
        assert flat.target.lookup(upload).extra["version"] == upload.version == receipt.extra["version"]
    finally:
        flat.target.close()


@pytest.mark.parametrize("fault, error", [("429", TransientError), ("503", TransientError)])
def test_boxes_route_failures_are_classified(world, fault, error):
    first = world.target.deliver(make_upload("err/1", labels=[CAR]))
    world.emulator.faults.retry_after = 3
    world.emulator.faults.next(fault, path=BOXES)
    with pytest.raises(error) as caught:
        world.target.deliver(make_upload("err/1", labels=[SIGN], previous=first))
    assert world.key not in str(caught.value)
    assert caught.value.retry_after == (3 if fault == "429" else None)


def test_boxes_refused_by_studio_fail_the_item_with_its_words(world):
    first = world.target.deliver(make_upload("err/2", labels=[CAR]))
    world.emulator.reply_next(BOXES, 200, {"success": False, "error": "Bounding box label is too long"})
    with pytest.raises(PermanentError) as caught:
        world.target.deliver(make_upload("err/2", labels=[SIGN], previous=first))
    assert "too long" in str(caught.value) and world.key not in str(caught.value)
