"""The RedBrick emulator itself: transport (gzip+base64 and plain JSON), auth, the rules the
target and the SDK rely on (unique names, uploaded items, metadata replace, search, strict
labels and segmentation files, the public -> import conversion)."""

from __future__ import annotations

import gzip
import json
import struct
import uuid

import pytest
import requests

from syncd.targets.redbrick.client import encode_body
from tests.emulators.redbrick import PUBLIC, REDBRICK, RedBrickEmulator


@pytest.fixture
def rb():
    with RedBrickEmulator() as emulator:
        emulator.org_id = str(uuid.uuid4())
        emulator.project_id = emulator.add_project(emulator.org_id)["projectId"]
        emulator.key = emulator.add_api_key(emulator.org_id)
        yield emulator


def call(rb, op: str, variables: dict, *, gzip: bool = True, key: str | None = None, kind: str = "query"):
    query = f"{kind} {op}($x: Int) {{ x }}"
    headers = {"ApiKey": rb.key if key is None else key, "Content-Type": "application/json"}
    if gzip:
        headers["Content-Encoding-RB"] = "gzip"
        body = encode_body(query, variables)
    else:
        body = json.dumps({"query": query, "variables": variables})
    return requests.post(f"{rb.url}/graphql/", data=body, headers=headers, timeout=5)


def ids(rb, **more):
    return {"orgId": rb.org_id, "projectId": rb.project_id, **more}


def create(rb, name: str, **more):
    variables = ids(rb, name=name, storageId=PUBLIC, items=[f"https://x/{name}.png"], isGroundTruth=False, **more)
    return call(rb, "createDatapointSDK", variables, kind="mutation").json()


def test_gzip_and_plain_json_bodies_and_auth(rb):
    for compressed in (True, False):
        reply = call(rb, "getProjectSDK", ids(rb), gzip=compressed)
        assert reply.status_code == 200 and reply.json()["data"]["project"]["projectId"] == rb.project_id
    assert call(rb, "getProjectSDK", ids(rb), key="k" * 43).status_code == 401
    assert call(rb, "noSuchOperation", {}).status_code == 400
    missing = call(rb, "getProjectSDK", ids(rb, projectId=str(uuid.uuid4()))).json()
    assert missing == {"data": {"project": None}}


def test_names_are_unique_and_metadata_must_be_strings(rb):
    first = create(rb, "a")
    assert first["data"]["createDatapoint"]["taskId"]
    dup = create(rb, "a")
    assert dup["data"] == {"createDatapoint": None} and "already exists" in dup["errors"][0]["message"]
    bad = create(rb, "b", metaData=json.dumps({"n": 1}))
    assert "strings" in bad["errors"][0]["message"]
    assert [t["name"] for t in rb.tasks_in(rb.org_id, rb.project_id)] == ["a"]


def test_direct_items_must_be_uploaded_with_the_signed_content_type(rb):
    grant = call(rb, "itemsUploadPresignSDK", ids(rb, files=["f.png"], fileType=["image/png"])).json()
    item = grant["data"]["itemsUploadPresign"]["items"][0]
    variables = ids(rb, name="d", storageId=REDBRICK, items=[item["filePath"]], isGroundTruth=False)
    refused = call(rb, "createDatapointSDK", variables, kind="mutation").json()
    assert "was not uploaded" in refused["errors"][0]["message"]
    wrong = requests.put(item["presignedUrl"], data=b"x", headers={"Content-Type": "image/jpeg"}, timeout=5)
    assert wrong.status_code == 403
    assert requests.put(item["presignedUrl"], data=b"png!", headers={"Content-Type": "image/png"}, timeout=5).ok
    assert call(rb, "createDatapointSDK", variables, kind="mutation").json()["data"]["createDatapoint"]["dpId"]
    assert rb.blobs[item["filePath"]]["data"] == b"png!"


def test_update_items_replaces_metadata_and_appends(rb):
    task_id = create(rb, "u", metaData=json.dumps({"a": "1", "b": "2"}))["data"]["createDatapoint"]["taskId"]
    update = ids(rb, taskId=task_id, storageId=PUBLIC, metaData=json.dumps({"a": "3"}))
    assert call(rb, "updateTaskItemsSDK", update, kind="mutation").json()["data"]["updateTaskItems"]["ok"]
    [task] = rb.tasks_in(rb.org_id, rb.project_id)
    assert task["meta"] == {"a": "3"} and task["items"] == ["https://x/u.png"]
    append = ids(rb, taskId=task_id, storageId=PUBLIC, items=["https://x/u2.png"], append=True)
    call(rb, "updateTaskItemsSDK", append, kind="mutation")
    [task] = rb.tasks_in(rb.org_id, rb.project_id)
    assert task["items"] == ["https://x/u.png", "https://x/u2.png"] and task["meta"] == {"a": "3"}
    gone = call(rb, "updateTaskItemsSDK", ids(rb, taskId=str(uuid.uuid4()), storageId=PUBLIC), kind="mutation")
    assert "not found" in gone.json()["errors"][0]["message"]
    road = '[{"category": "road", "seriesclassify": true}]'
    labels = ids(rb, taskId=task_id, labelsData=road, finalize=False)
    assert call(rb, "updateTasksLabelsSDK", labels, kind="mutation").json()["data"]["putLabels"]["ok"]
    [task] = rb.tasks_in(rb.org_id, rb.project_id)
    assert task["labelsData"] == road and task["labels"] == [{"category": "road", "seriesclassify": True}]


def test_generic_tasks_prefix_exact_and_paging(rb):
    for name in ("cam/1", "cam/10", "cam/11", "other"):
        create(rb, name)

    def search(term, first=2, after=None):
        reply = call(rb, "tasksListSDK", ids(rb, taskSearch=term, first=first, after=after))
        page = reply.json()["data"]["genericTasks"]
        return [e["datapoint"]["name"] for e in page["entries"]], page["cursor"]

    names, cursor = search("cam/1")
    assert names == ["cam/1", "cam/10"] and cursor
    assert search("cam/1", after=cursor) == (["cam/11"], None)
    assert search('"cam/1"') == (["cam/1"], None)
    assert search("", first=10)[0] == ["cam/1", "cam/10", "cam/11", "other"]


def test_validate_and_convert(rb):
    def convert(tasks):
        return call(rb, "validateAndConvertToImportFormatSDK", {"original": json.dumps(tasks), "convert": True,
                                                                 "storageId": REDBRICK}).json()["data"][
            "validateAndConvertToImportFormat"]

    assert convert([{"name": "a", "items": ["x.png"]}]) == {"isValid": True, "error": None, "converted": None}
    converted = convert([{"taskId": "t", "metaData": {"k": "v"}, "series": [{"items": "a.png"}, {"items": ["b", "c"],
                                                                                               "name": "s1"}]}])
    assert converted["isValid"] and json.loads(converted["converted"]) == [{
        "taskId": "t", "metaData": {"k": "v"}, "items": ["a.png", "b", "c"],
        "seriesInfo": [{"name": None, "itemsIndices": [0], "metaData": None},
                       {"name": "s1", "itemsIndices": [1, 2], "metaData": None}]}]
    assert convert([{"name": "no-items"}])["isValid"] is False
    assert convert([{"series": [{"items": "a.png", "ellipses": []}]}])["isValid"] is False
    assert convert([{"series": [{"items": "a.png", "boundingBoxes": [{"category": "car"}]}]}])["isValid"] is False


def test_faults_can_target_one_operation(rb):
    rb.faults.next("503", path=r"/createDatapointSDK$")
    assert call(rb, "getProjectSDK", ids(rb)).status_code == 200
    assert call(rb, "createDatapointSDK", {}, kind="mutation").status_code == 503
    assert rb.faults.injected == [("503", "POST", "/graphql/createDatapointSDK")]
    rb.script_error("getProjectSDK", "boom")
    assert call(rb, "getProjectSDK", ids(rb)).json() == {"data": None, "errors": [{"message": "boom"}]}
    assert call(rb, "getProjectSDK", ids(rb)).json()["data"]["project"]


# -- labels -----------------------------------------------------------------------------------
BOX = {"category": "car", "attributes": [], "bbox2d": {"xnorm": 0.1, "ynorm": 0.1, "wnorm": 0.5, "hnorm": 0.5}}


@pytest.mark.parametrize("labels, message", [
    ("not json", "JSON string"),
    ([{**BOX, "colour": "red"}], "unknown keys ['colour']"),
    ([{**BOX, "point": {"xnorm": 0, "ynorm": 0}}], "exactly one of"),
    ([{"category": "car"}], "exactly one of"),
    ([{**BOX, "bbox2d": {"xnorm": 0.9, "ynorm": 0, "wnorm": 0.5, "hnorm": 0.1}}], "outside the image"),
    ([{"category": "roof", "polygon": [{"xnorm": 0, "ynorm": 0}, {"xnorm": 1, "ynorm": 1}]}], "at least 3 points"),
    ([{"category": "nose", "point": {"xnorm": 2, "ynorm": 0}}], "0..1"),
    ([{**BOX, "attributes": {"occluded": True}}], "list of {name, value}"),
    ([{"category": "road", "dicom": {"instanceid": 1}, "volumeindex": 0}], "no labelsMap entry"),
    ([{"category": "day", "seriesclassify": "yes"}], "must be true"),
])
def test_labels_are_checked_strictly(rb, labels, message):
    data = labels if isinstance(labels, str) else json.dumps(labels)
    reply = create(rb, "l", labelsData=data)
    assert reply["data"] == {"createDatapoint": None} and message in reply["errors"][0]["message"]
    assert rb.tasks_in(rb.org_id, rb.project_id) == []
    assert create(rb, "l", labelsData=json.dumps([BOX]))["data"]["createDatapoint"]["taskId"]
    assert rb.tasks_in(rb.org_id, rb.project_id)[0]["labels"] == [BOX]


def test_segmentation_files_must_be_uploaded_nifti_with_the_blob_header(rb):
    grants = call(rb, "presignUploadsSDK", ids(rb, filesData=[], fileTypeData="application/json",
                                               fileEncodingData="gzip", filesSeg=["labels/a/b/0.nii.gz"],
                                               fileTypeSeg="application/octet-stream", fileEncodingSeg=None)).json()
    assert grants["data"]["presignData"] == []
    [seg] = grants["data"]["presignSeg"]
    segment = {"category": "road", "attributes": [], "dicom": {"instanceid": 1}, "volumeindex": 0}
    labels_map = [{"labelName": seg["filePath"], "seriesIndex": 0}]
    refused = create(rb, "s", labelsData=json.dumps([segment]), labelsMap=labels_map)
    assert "was not uploaded" in refused["errors"][0]["message"]
    headers = {"Content-Type": "application/octet-stream"}
    no_blob_type = requests.put(seg["presignedUrl"], data=b"x", headers=headers, timeout=5)
    assert no_blob_type.status_code == 400 and b"MissingRequiredHeader" in no_blob_type.content
    headers["x-ms-blob-type"] = "BlockBlob"
    assert requests.put(seg["presignedUrl"], data=gzip_bytes(b"not nifti"), headers=headers, timeout=5).ok
    assert "not a NIfTI-1 file" in create(rb, "s", labelsData=json.dumps([segment]),
                                          labelsMap=labels_map)["errors"][0]["message"]
    nifti = gzip_bytes(struct.pack("<i", 348) + bytes(340) + b"n+1\0" + bytes(8))
    assert requests.put(seg["presignedUrl"], data=nifti, headers=headers, timeout=5).ok
    created = create(rb, "s", labelsData=json.dumps([segment]), labelsMap=labels_map)
    task_id = created["data"]["createDatapoint"]["taskId"]
    [task] = rb.tasks_in(rb.org_id, rb.project_id)
    assert task["segmentations"] == {0: nifti} and task["labels"] == [segment]
    # putLabels replaces labels and segmentations as a whole.
    put = call(rb, "updateTasksLabelsSDK", ids(rb, taskId=task_id, labelsData=json.dumps([BOX]), labelsMap=[],
                                               finalize=False, extraData="null"), kind="mutation").json()
    assert put["data"]["putLabels"]["ok"]
    [task] = rb.tasks_in(rb.org_id, rb.project_id)
    assert task["labels"] == [BOX] and task["segmentations"] == {} and task["labelsVersion"] == 1


def test_public_series_annotations_are_converted(rb):
    series = {"items": "a.png", "classifications": [{"category": "day", "attributes": {"w": "rain"}}],
              "boundingBoxes": [{"pointTopLeft": {"xNorm": 0.1, "yNorm": 0.2}, "wNorm": 0.3, "hNorm": 0.4,
                                 "category": "car"}],
              "landmarks": [{"point": {"xNorm": 0.5, "yNorm": 0.5}, "category": "nose"}],
              "polylines": [{"points": [{"xNorm": 0, "yNorm": 1}, {"xNorm": 1, "yNorm": 0}], "category": "lane"}],
              "segmentations": "seg.nii.gz", "segmentMap": {"2": "car", "1": {"category": "road"}}}
    original = json.dumps([{"name": "t", "series": [series]}])
    reply = call(rb, "validateAndConvertToImportFormatSDK",
                 {"original": original, "convert": True, "storageId": REDBRICK}).json()
    [task] = json.loads(reply["data"]["validateAndConvertToImportFormat"]["converted"])
    assert task["items"] == ["a.png"] and task["labelsMap"] == [{"labelName": "seg.nii.gz", "seriesIndex": 0}]
    assert task["labels"] == [
        {"category": "day", "attributes": [{"name": "w", "value": "rain"}], "seriesclassify": True},
        {"category": "car", "attributes": [], "bbox2d": {"xnorm": 0.1, "ynorm": 0.2, "wnorm": 0.3, "hnorm": 0.4}},
        {"category": "nose", "attributes": [], "point": {"xnorm": 0.5, "ynorm": 0.5}},
        {"category": "lane", "attributes": [], "polyline": [{"xnorm": 0, "ynorm": 1}, {"xnorm": 1, "ynorm": 0}]},
        {"category": "road", "attributes": [], "dicom": {"instanceid": 1}, "volumeindex": 0},
        {"category": "car", "attributes": [], "dicom": {"instanceid": 2}, "volumeindex": 0},
    ]


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)
