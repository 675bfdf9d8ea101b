"""Labels and masks through the RedBrick target and emulator: every label type and a mask in
one createDatapoint, putLabels replacing them on change (and only then), lost replies and
re-sends without duplicates, labels RedBrick refuses and a missing nibabel (image delivered,
the loss reported), labels made in RedBrick left alone, large label lists as a file."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import sys
import uuid

import nibabel
import numpy as np
import pytest
from PIL import Image

from syncd.errors import FatalTargetError, TransientError
from syncd.targets.redbrick.annotations import EMPTY, FIX_NIBABEL, MASK_NEEDS_NIBABEL, expected_digest
from syncd.targets.redbrick.payload import to_redbrick
from syncd.targets.redbrick.target import VERSION_KEY, RedBrickSettings, RedBrickTarget
from tests.emulators.redbrick import RedBrickEmulator
from tests.helpers import make_upload

CLASS_MAP = {"void": [1, 1, 1], "road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
LABELS = [
    {"type": "classification", "label": "daytime", "attributes": {"weather": "rain", "cars": 3}},
    {"type": "box", "label": "car", "x": 8, "y": 6, "width": 16, "height": 12, "attributes": {"occluded": True}},
    {"type": "point", "label": "nose", "x": 16, "y": 12},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [32, 0], [16, 24]]},
    {"type": "polyline", "label": "lane", "points": [[0, 24], [32, 12]]},
    {"type": "keypoints", "label": "person", "points": [{"x": 5, "y": 5}]},
]
BOX = LABELS[1]


def mask_pixels() -> np.ndarray:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:8] = CLASS_MAP["sky"]
    pixels[16:, :16] = CLASS_MAP["road"]
    pixels[10:14, 20:30] = CLASS_MAP["car"]
    return pixels


def mask_png(pixels: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask_pixels() if pixels is None else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled(key="cam1/f1", labels=LABELS, mask=True, **more):
    return make_upload(key, labels=labels, mask=mask_png() if mask is True else mask or None,
                       class_map=CLASS_MAP if mask else None, **more)


@pytest.fixture
def rb():
    with RedBrickEmulator() as emulator:
        emulator.org_id = str(uuid.uuid4())
        emulator.project_id = emulator.add_project(emulator.org_id, name="Labels")["projectId"]
        emulator.key = emulator.add_api_key(emulator.org_id)
        settings = RedBrickSettings(org_id=emulator.org_id, project_id=emulator.project_id,
                                    url=f"http://localhost:{emulator.port}", timeout=5)
        emulator.target = RedBrickTarget("rb", settings, env={"REDBRICK_API_KEY": emulator.key})

        def task():
            [only] = emulator.tasks_in(emulator.org_id, emulator.project_id)
            return only

        emulator.task = task
        yield emulator
        emulator.target.close()


def ops(rb) -> list[str]:
    return [c["op"] for c in rb.calls]


def volume(nifti: bytes) -> np.ndarray:
    """The instance map of a NIfTI as an (H, W) array (RedBrick's volume is (W, H, 1))."""
    image = nibabel.Nifti1Image.from_bytes(gzip.decompress(nifti))
    return np.asarray(image.dataobj)[:, :, 0].T


def test_every_label_type_and_the_mask_arrive_in_the_create(rb):
    upload = labelled()
    receipt = rb.target.deliver(upload)
    expected = to_redbrick(upload)
    task = rb.task()
    assert ops(rb) == ["itemsUploadPresignSDK", "presignUploadsSDK", "createDatapointSDK"]
    assert task["labels"] == expected.labels
    assert task["labelsData"] == json.dumps(expected.labels, separators=(",", ":"))
    assert {lb["category"] for lb in task["labels"]} == {"daytime", "car", "nose", "roof", "lane", "road", "sky"}
    assert expected.unsupported == ["keypoints"]  # reported by the core, not sent
    # The mask: one NIfTI, referenced by labelsMap, holding instance k where class k is.
    [seg_path] = [entry["labelName"] for entry in task["labelsMap"]]
    assert task["labelsMap"] == [{"labelName": seg_path, "seriesIndex": 0}]
    assert task["segmentations"] == {0: expected.nifti}
    instances = {lb["dicom"]["instanceid"]: lb["category"] for lb in task["labels"] if "dicom" in lb}
    assert instances == {1: "road", 2: "car", 3: "sky"}
    want = np.zeros((24, 32), dtype=np.uint8)
    for k, name in instances.items():
        want[(mask_pixels() == CLASS_MAP[name]).all(axis=2)] = k
    assert (volume(task["segmentations"][0]) == want).all()
    # The wire: the SDK's presign variables and PUT headers, no credentials on the PUT.
    presign = rb.calls_of("presignUploadsSDK")[0]["variables"]
    assert presign["filesData"] == [] and presign["fileTypeData"] == "application/json"
    assert presign["fileEncodingData"] == "gzip" and presign["fileTypeSeg"] == "application/octet-stream"
    assert presign["fileEncodingSeg"] is None and presign["filesSeg"][0].startswith("labels/")
    assert presign["filesSeg"][0].endswith("/0.nii.gz")
    put = next(p for p in rb.puts if p["filePath"] == seg_path)
    assert put["headers"]["content-type"] == "application/octet-stream"
    assert put["headers"]["x-ms-blob-type"] == "BlockBlob" and "apikey" not in put["headers"]
    assert receipt.extra["labels_sha256"] == expected_digest(upload) != EMPTY
    assert receipt.extra["labels_written"] is True and receipt.extra["not_sent"] == []


def test_public_storage_uploads_the_mask_only(rb):
    settings = RedBrickSettings(org_id=rb.org_id, project_id=rb.project_id, url=f"http://localhost:{rb.port}",
                                storage="public", public_url_prefix="https://cdn.example.com/")
    target = RedBrickTarget("rb", settings, env={"REDBRICK_API_KEY": rb.key})
    target.deliver(labelled(labels=[BOX]))
    assert ops(rb) == ["presignUploadsSDK", "createDatapointSDK"] and len(rb.task()["segmentations"]) == 1
    target.close()


def test_a_label_edit_replaces_labels_and_removing_the_mask_clears_it(rb):
    first = rb.target.deliver(labelled(labels=LABELS[:3]))
    rb.calls.clear()
    edited = labelled(labels=[BOX], mask=False, metadata={"k": "2"}, previous=first)
    second = rb.target.deliver(edited)
    task = rb.task()
    assert ops(rb) == ["updateTasksLabelsSDK", "updateTaskItemsSDK"]
    assert task["labels"] == to_redbrick(edited).labels and len(task["labels"]) == 1  # replaced, not added
    assert task["labelsMap"] == [] and task["segmentations"] == {} and task["meta"][VERSION_KEY] == edited.version
    put = rb.calls_of("updateTasksLabelsSDK")[0]["variables"]
    assert put["taskId"] == first.remote_id and put["finalize"] is False and put["extraData"] == "null"
    # The mask comes back, the box moves: again exactly what the sidecar says.
    moved = dict(BOX, x=0)
    third = labelled(labels=[moved], previous=second)
    rb.target.deliver(third)
    assert rb.task()["labels"] == to_redbrick(third).labels and rb.task()["labelsVersion"] == 2
    assert rb.task()["segmentations"] == {0: to_redbrick(third).nifti}


def test_metadata_or_image_changes_do_not_resend_labels(rb):
    first = rb.target.deliver(labelled(metadata={"k": "1"}))
    labels = rb.task()["labels"]
    rb.calls.clear()
    second = rb.target.deliver(labelled(metadata={"k": "2"}, previous=first))
    third = rb.target.deliver(labelled(metadata={"k": "2"}, seed=7, previous=second))
    assert ops(rb) == ["updateTaskItemsSDK", "itemsUploadPresignSDK", "updateTaskItemsSDK"]
    assert rb.task()["labels"] == labels and rb.task()["labelsVersion"] == 0
    assert third.extra["labels_sha256"] == first.extra["labels_sha256"]


def test_lost_reply_on_put_labels_then_retry_keeps_one_set(rb):
    first = rb.target.deliver(labelled(labels=LABELS[:2]))
    second = labelled(labels=LABELS[2:5], previous=first)
    rb.faults.next("lost_reply", path=r"/updateTasksLabelsSDK$")
    with pytest.raises(TransientError) as caught:
        rb.target.deliver(second)
    assert caught.value.outcome_unknown
    # What the daemon does next: look up. The marker is still the first version (labels go
    # before it), so the labels are unknown and sent again: replaced, never duplicated.
    found = rb.target.lookup(second)
    assert found.extra["version"] == first.extra["version"] and found.extra["labels_sha256"] is None
    rb.target.deliver(dataclasses.replace(second, previous=found))
    task = rb.task()
    assert task["labels"] == to_redbrick(second).labels and task["labelsVersion"] == 2
    assert task["meta"][VERSION_KEY] == second.version


def test_lost_reply_on_create_is_adopted_and_a_resend_sends_no_labels(rb):
    upload = labelled()
    rb.faults.next("lost_reply", path=r"/createDatapointSDK$")
    with pytest.raises(TransientError):
        rb.target.deliver(upload)
    found = rb.target.lookup(upload)
    assert found.extra["version"] == upload.version and found.extra["labels_sha256"] == expected_digest(upload)
    rb.calls.clear()
    rb.target.deliver(dataclasses.replace(upload, previous=found))  # the contract suite re-sends anyway
    assert ops(rb) == ["updateTaskItemsSDK"] and rb.task()["labels"] == to_redbrick(upload).labels


def test_a_task_made_by_hand_is_adopted_with_our_labels(rb):
    existing = rb.add_task(rb.org_id, rb.project_id, "cam1/f1")
    rb.op_updateTasksLabelsSDK({"orgId": rb.org_id, "projectId": rb.project_id, "taskId": existing["taskId"],
                                "labelsData": '[{"category": "theirs", "seriesclassify": true}]'}, rb.org_id)
    upload = labelled()
    receipt = rb.target.deliver(upload)
    assert receipt.remote_id == existing["taskId"] and rb.task()["labels"] == to_redbrick(upload).labels
    # The NIfTI uploaded for the refused create is the one putLabels refers to: uploaded once.
    assert ops(rb) == ["itemsUploadPresignSDK", "presignUploadsSDK", "createDatapointSDK", "tasksListSDK",
                       "updateTasksLabelsSDK", "updateTaskItemsSDK"]


def test_items_without_labels_leave_labels_made_in_redbrick_alone(rb):
    first = rb.target.deliver(make_upload("a/1", metadata={"k": "1"}))
    theirs = '[{"category": "theirs", "seriesclassify": true}]'
    rb.op_updateTasksLabelsSDK({"orgId": rb.org_id, "projectId": rb.project_id, "taskId": first.remote_id,
                                "labelsData": theirs}, rb.org_id)
    second_upload = make_upload("a/1", metadata={"k": "2"}, previous=first)
    rb.faults.next("lost_reply", path=r"/updateTaskItemsSDK$")
    with pytest.raises(TransientError):
        rb.target.deliver(second_upload)
    found = rb.target.lookup(second_upload)
    second = rb.target.deliver(dataclasses.replace(second_upload, previous=found))
    # Receipts written before labels were sent have no label record: the same rule holds.
    old = dataclasses.replace(second, extra={k: v for k, v in second.extra.items() if not k.startswith("labels")})
    rb.target.deliver(make_upload("a/1", metadata={"k": "3"}, previous=old))
    assert "updateTasksLabelsSDK" not in ops(rb)[1:] and rb.task()["labelsData"] == theirs
    # Labels syncd wrote are removed with the sidecar's labels, though.
    fourth = rb.target.deliver(make_upload("a/1", labels=[BOX], previous=old))
    assert rb.task()["labels"] == to_redbrick(make_upload("a/1", labels=[BOX])).labels
    rb.target.deliver(make_upload("a/1", metadata={"k": "5"}, previous=fourth))
    assert rb.task()["labels"] == [] and rb.task()["labelsData"] == "[]"


def test_labels_redbrick_refuses_do_not_hold_the_image_back(rb, caplog):
    rb.known_categories = {"car"}
    upload = labelled(labels=[BOX, LABELS[3]], mask=False)
    receipt = rb.target.deliver(upload)
    task = rb.task()
    assert task["labels"] == [] and task["items"] and task["meta"][VERSION_KEY] == upload.version
    [note] = receipt.extra["not_sent"]
    assert "RedBrick refused" in note and "roof" in note and receipt.extra["labels_sha256"] is None
    assert "roof" in caplog.text
    # An update whose putLabels is refused still writes the metadata, and says so again.
    second = rb.target.deliver(labelled(labels=[BOX, LABELS[3]], mask=False, metadata={"k": "2"}, previous=receipt))
    assert rb.task()["meta"]["k"] == "2" and "RedBrick refused" in second.extra["not_sent"][0]
    # Once RedBrick takes them (the category was added), the next change sends them.
    rb.known_categories = None
    third = rb.target.deliver(labelled(labels=[BOX, LABELS[3]], mask=False, metadata={"k": "3"}, previous=second))
    assert len(rb.task()["labels"]) == 2 and third.extra["not_sent"] == []


def test_without_nibabel_the_image_and_labels_go_and_the_mask_is_reported(rb, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # what `import nibabel` sees when it is not installed
    assert FIX_NIBABEL in rb.target.check()[0]
    upload = labelled()
    receipt = rb.target.deliver(upload)
    assert "presignUploadsSDK" not in ops(rb)
    task = rb.task()
    assert task["labels"] == to_redbrick(labelled(mask=False)).labels and task["segmentations"] == {}
    assert task["items"] and receipt.extra["not_sent"] == [MASK_NEEDS_NIBABEL]
    assert "pip install 'syncd[redbrick]'" in MASK_NEEDS_NIBABEL
    second = rb.target.deliver(labelled(metadata={"k": "2"}, previous=receipt))
    assert rb.task()["labelsVersion"] == 0 and second.extra["not_sent"] == [MASK_NEEDS_NIBABEL]
    # nibabel installed: the next update of the item sends the mask.
    monkeypatch.delitem(sys.modules, "nibabel")
    third = rb.target.deliver(labelled(metadata={"k": "3"}, previous=second))
    assert rb.task()["segmentations"] == {0: to_redbrick(upload).nifti} and third.extra["not_sent"] == []


def test_task_deleted_in_redbrick_is_created_again_with_its_labels(rb):
    first = rb.target.deliver(labelled())
    rb.op_deleteTasksSDK({"orgId": rb.org_id, "projectId": rb.project_id, "taskIds": [first.remote_id]}, rb.org_id)
    second = rb.target.deliver(labelled(metadata={"k": "2"}, previous=first))  # labels unchanged
    assert rb.task()["labels"] == to_redbrick(labelled()).labels and rb.task()["segmentations"]
    rb.op_deleteTasksSDK({"orgId": rb.org_id, "projectId": rb.project_id, "taskIds": [second.remote_id]}, rb.org_id)
    third = labelled(labels=[BOX], previous=second)  # labels changed: putLabels finds no task
    rb.target.deliver(third)
    assert rb.task()["labels"] == to_redbrick(third).labels


def test_more_than_a_thousand_labels_go_as_a_gzipped_file(rb):
    points = [{"type": "point", "label": "p", "x": i % 32, "y": i % 24} for i in range(1001)]
    upload = make_upload("many/1", labels=points)
    rb.target.deliver(upload)
    create = rb.calls_of("createDatapointSDK")[0]["variables"]
    assert create["labelsData"] == "[]" and create["labelsDataPath"] and create["labelsMap"] == []
    assert rb.task()["labels"] == to_redbrick(upload).labels
    put = next(p for p in rb.puts if p["filePath"] == create["labelsDataPath"])
    assert put["headers"]["content-encoding"] == "gzip" and put["headers"]["content-type"] == "application/json"
    assert put["headers"]["x-ms-blob-type"] == "BlockBlob"


def test_failed_label_uploads_are_known_outcomes(rb):
    rb.faults.next("503", path=r"/presignUploadsSDK$")
    with pytest.raises(TransientError) as caught:
        rb.target.deliver(labelled())
    assert caught.value.outcome_unknown is False
    rb.faults.next("503", path=r"^/upload/seg-")  # the NIfTI's PUT
    with pytest.raises(TransientError) as caught:
        rb.target.deliver(labelled())
    assert caught.value.outcome_unknown is False and rb.tasks_in(rb.org_id, rb.project_id) == []
    rb.target.deliver(labelled())
    assert rb.task()["segmentations"]


def test_label_errors_are_classified_and_redacted(rb):
    first_upload = labelled(labels=[BOX], mask=False)
    first = rb.target.deliver(first_upload)
    rb.script_error("updateTasksLabelsSDK", f"label refused for key {rb.key}")
    second = rb.target.deliver(labelled(labels=LABELS[:2], mask=False, previous=first))
    assert rb.key not in json.dumps(second.extra) and "***" in second.extra["not_sent"][0]
    rb.script_error("updateTasksLabelsSDK", "Not authorized for this project")
    with pytest.raises(FatalTargetError) as caught:
        rb.target.deliver(labelled(labels=LABELS[:3], mask=False, previous=second))
    rb.script_error("updateTasksLabelsSDK", "Rate limit exceeded")
    with pytest.raises(TransientError):
        rb.target.deliver(labelled(labels=LABELS[:3], mask=False, previous=second))
    assert rb.key not in str(caught.value) and rb.task()["labels"] == to_redbrick(first_upload).labels
