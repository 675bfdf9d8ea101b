"""The Nucleus emulator's annotation routes on their own, spoken to with plain requests:
strict payload checks (400), row errors in a 200 reply, update semantics per key, masks,
taxonomies, the deletion job, and what refloc answers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import image_bytes

BOX = {"label": "car", "type": "box", "geometry": {"x": 1, "y": 2, "width": 3, "height": 4}, "reference_id": "r1",
       "annotation_id": "a1", "metadata": {}}


@pytest.fixture
def emulator():
    with NucleusEmulator(job_script=()) as emulator:
        yield emulator


@pytest.fixture
def http(emulator):
    session = requests.Session()
    session.auth = (emulator.api_key, "")
    yield session
    session.close()


@pytest.fixture
def dataset_id(emulator, http):
    dataset_id = emulator.add_dataset("d")
    files = [("items", (None, json.dumps([{"reference_id": "r1", "image_url": "r1.png", "metadata": {}}]),
                        "application/json")), ("image", ("r1.png", image_bytes(), "image/png"))]
    assert http.post(f"{emulator.endpoint}/dataset/{dataset_id}/append", files=files).status_code == 200
    return dataset_id


def annotate(emulator, http, dataset_id, **body):
    return http.post(f"{emulator.endpoint}/dataset/{dataset_id}/annotate", json=body)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_request(emulator, http, dataset_id, data: bytes, *, name="r1.mask.png", update=True, url=None):
    segmentation = {"type": "mask", "mask_url": url or name, "annotations": [{"label": "road", "index": 1}],
                    "annotation_id": "m", "reference_id": "r1"}
    files = [("serialized_request", (None, json.dumps({"segmentations": [segmentation], "update": update}),
                                     "application/json")), ("mask", (name, data, "image/png"))]
    return http.post(f"{emulator.endpoint}/dataset/{dataset_id}/annotate", files=files)


@pytest.mark.parametrize("annotation, message", [
    ({**BOX, "type": "cuboid"}, "type must be one of"),
    ({**BOX, "label": ""}, "label must be a non-empty string"),
    ({**BOX, "geometry": {"x": 1, "y": 2, "width": "3", "height": 4}}, "numeric geometry"),
    ({**BOX, "colour": "red"}, "unknown fields"),
    ({**BOX, "type": "polygon", "geometry": {"vertices": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}}, "at least 3"),
    ({**BOX, "type": "keypoints", "geometry": {"keypoints": [{"x": 1, "y": 1, "visible": True}] * 2,
                                               "names": ["a", "a"], "skeleton": []}}, "names must be unique"),
    ({**BOX, "type": "keypoints", "geometry": {"keypoints": [{"x": 1, "y": 1, "visible": True}], "names": ["a"],
                                               "skeleton": [[0, 1]]}}, "skeleton"),
    ({**BOX, "metadata": [1]}, "metadata must be an object"),
])
def test_malformed_annotations_are_400(emulator, http, dataset_id, annotation, message):
    reply = annotate(emulator, http, dataset_id, update=True, annotations=[annotation])
    assert reply.status_code == 400 and message in reply.json()["error"]
    assert emulator.annotations(dataset_id, "r1") == {}


def test_request_level_checks(emulator, http, dataset_id):
    assert annotate(emulator, http, dataset_id, update=True).status_code == 400  # nothing to do
    assert annotate(emulator, http, dataset_id, update="yes", annotations=[BOX]).status_code == 400
    assert "duplicate" in annotate(emulator, http, dataset_id, annotations=[BOX, BOX]).json()["error"]
    assert annotate(emulator, http, dataset_id, annotations=[BOX], extra=1).status_code == 400
    assert annotate(emulator, http, "ds_nope", annotations=[BOX]).status_code == 404
    unauthorised = requests.post(f"{emulator.endpoint}/dataset/{dataset_id}/annotate", json={"annotations": [BOX]})
    assert unauthorised.status_code == 401


def test_unknown_item_and_unknown_category_are_row_errors_in_a_200(emulator, http, dataset_id):
    category = {"label": "day", "type": "category", "geometry": {}, "reference_id": "r1", "taxonomy_name": "t"}
    reply = annotate(emulator, http, dataset_id, update=True,
                     annotations=[{**BOX, "reference_id": "nope"}, category, BOX])
    assert reply.status_code == 200
    body = reply.json()
    assert body["annotations_processed"] == 1 and len(body["errors"]) == 2
    assert "Item with id nope does not exist" in body["errors"][0] and "Taxonomy 't'" in body["errors"][1]
    taxonomy = {"taxonomy_name": "t", "type": "category", "labels": ["night"], "update": False}
    assert http.post(f"{emulator.endpoint}/dataset/{dataset_id}/add_taxonomy", json=taxonomy).json()["status"] == \
        "Taxonomy created"
    assert "is not in taxonomy" in annotate(emulator, http, dataset_id, annotations=[category]).json()["errors"][0]
    again = http.post(f"{emulator.endpoint}/dataset/{dataset_id}/add_taxonomy", json=taxonomy)
    assert again.status_code == 400 and "already exists" in again.json()["error"]
    taxonomy.update(labels=["day"], update=True)
    assert http.post(f"{emulator.endpoint}/dataset/{dataset_id}/add_taxonomy", json=taxonomy).json()["status"] == \
        "Taxonomy updated"
    assert emulator.taxonomies(dataset_id) == {"t": ["night", "day"]}
    assert annotate(emulator, http, dataset_id, annotations=[category]).json()["annotations_processed"] == 1


def test_update_false_ignores_update_true_replaces_per_key(emulator, http, dataset_id):
    annotate(emulator, http, dataset_id, annotations=[BOX])
    moved = {**BOX, "geometry": {"x": 9, "y": 9, "width": 1, "height": 1}}
    assert annotate(emulator, http, dataset_id, annotations=[moved]).json()["annotations_ignored"] == 1
    assert emulator.annotations(dataset_id, "r1")["box"][0]["geometry"]["x"] == 1
    assert annotate(emulator, http, dataset_id, update=True, annotations=[moved]).json()["annotations_processed"] == 1
    assert [b["geometry"]["x"] for b in emulator.annotations(dataset_id, "r1")["box"]] == [9]
    # Without an annotation_id nothing is a key: every send adds one.
    line = {**BOX, "type": "line", "annotation_id": None,
            "geometry": {"vertices": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}}
    annotate(emulator, http, dataset_id, update=True, annotations=[line])
    annotate(emulator, http, dataset_id, update=True, annotations=[line])
    assert len(emulator.annotations(dataset_id, "r1")["line"]) == 2


def test_one_mask_per_item_replaced_only_with_update(emulator, http, dataset_id):
    first = png(np.ones((24, 32), dtype=np.uint8))
    second = png(np.full((24, 32), 2, dtype=np.uint8))
    assert mask_request(emulator, http, dataset_id, first).json()["annotations_processed"] == 1
    assert mask_request(emulator, http, dataset_id, second, update=False).json()["annotations_ignored"] == 1
    assert emulator.mask(dataset_id, "r1") == first
    mask_request(emulator, http, dataset_id, second, name="other.png")
    assert emulator.mask(dataset_id, "r1") == second
    assert len(emulator.annotations(dataset_id, "r1")["segmentation"]) == 1
    stored = emulator.annotations(dataset_id, "r1")["segmentation"][0]
    assert http.get(stored["mask_url"]).content == second  # the server's copy, served like item images


def test_mask_checks(emulator, http, dataset_id):
    wrong_size = mask_request(emulator, http, dataset_id, png(np.ones((10, 10), dtype=np.uint8))).json()
    assert "does not match the image size" in wrong_size["errors"][0]
    rgb = mask_request(emulator, http, dataset_id, png(np.ones((24, 32, 3), dtype=np.uint8))).json()
    assert "8-bit single-channel" in rgb["errors"][0]
    mismatch = mask_request(emulator, http, dataset_id, png(np.ones((24, 32), dtype=np.uint8)), url="elsewhere.png")
    assert mismatch.status_code == 400 and "do not match" in mismatch.json()["error"]
    jpeg = mask_request(emulator, http, dataset_id, b"\xff\xd8", name="m.jpg")
    assert jpeg.status_code == 400 and ".png" in jpeg.json()["error"]
    assert emulator.mask(dataset_id, "r1") is None


def test_delete_annotations_is_a_job_and_refloc_shows_what_is_left(emulator, http, dataset_id):
    emulator.job_script = ["Running"]
    annotate(emulator, http, dataset_id, annotations=[BOX])
    mask_request(emulator, http, dataset_id, png(np.ones((24, 32), dtype=np.uint8)))
    refloc = http.get(f"{emulator.endpoint}/dataset/{dataset_id}/refloc/r1").json()
    assert sorted(refloc["annotations"]) == ["box", "segmentation"] and refloc["annotations"]["box"][0] == BOX
    assert http.delete(f"{emulator.endpoint}/annotation/{dataset_id}", json={"reference_ids": []}).status_code == 400
    reply = http.delete(f"{emulator.endpoint}/annotation/{dataset_id}",
                        json={"keep_history": True, "reference_ids": ["r1"]}).json()
    assert reply["job_last_known_status"] == "Running"
    assert emulator.annotations(dataset_id, "r1") != {}  # nothing happens before the job runs
    assert http.get(f"{emulator.endpoint}/job/{reply['job_id']}").json()["status"] == "Running"
    assert http.get(f"{emulator.endpoint}/job/{reply['job_id']}").json()["status"] == "Completed"
    assert http.get(f"{emulator.endpoint}/dataset/{dataset_id}/refloc/r1").json()["annotations"] == {}


def test_deleting_the_item_deletes_its_annotations(emulator, http, dataset_id):
    annotate(emulator, http, dataset_id, annotations=[BOX])
    assert http.delete(f"{emulator.endpoint}/dataset/{dataset_id}/refloc/r1").status_code == 200
    assert emulator.annotations(dataset_id, "r1") == {}
