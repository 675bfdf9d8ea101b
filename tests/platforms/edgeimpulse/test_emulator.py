"""The Edge Impulse emulator itself: auth, strict validation, per-file results, listing,
organization data, and reply shapes checked against the official generated models."""

from __future__ import annotations

import json

import edgeimpulse_api as api
import pytest
import requests

from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import image_bytes


@pytest.fixture
def emu():
    with EdgeImpulseEmulator() as emulator:
        project = emulator.add_project("Emulator tests")
        key = emulator.make_key(project["id"])
        with requests.Session() as session:
            session.headers["x-api-key"] = key
            yield emulator, project, key, session


def ingest(emulator, session, files, category="training", **headers):
    parts = [("data", (name, data, "image/png")) for name, data in files]
    return session.post(f"{emulator.url}/api/{category}/files", files=parts, headers=headers, timeout=5)


def test_keys_are_checked_everywhere(emu):
    emulator, project, key, session = emu
    for method, path in (("POST", "/api/training/files"), ("GET", f"/v1/api/{project['id']}/raw-data?category=all"),
                         ("GET", "/v1/api/projects")):
        bare = requests.request(method, emulator.url + path, timeout=5)
        assert bare.status_code == 401 and bare.json()["success"] is False and "x-api-key" in bare.json()["error"]
        wrong = requests.request(method, emulator.url + path, headers={"x-api-key": "ei_nope"}, timeout=5)
        assert wrong.status_code == 401 and wrong.json() == {"success": False, "error": "Invalid API key"}
    other = emulator.add_project("Other")
    assert session.get(f"{emulator.url}/v1/api/{other['id']}", timeout=5).status_code == 403
    org = emulator.add_org()
    assert session.get(f"{emulator.url}/v1/api/organizations/{org['id']}/data", timeout=5).status_code == 403
    emulator.revoke(key)
    assert ingest(emulator, session, [("a.png", image_bytes())]).status_code == 401


def test_ingestion_validates_requests_strictly(emu):
    emulator, _, _, session = emu
    png = image_bytes()
    assert ingest(emulator, session, [("a.png", png)], category="bogus").status_code == 400
    no_data = session.post(f"{emulator.url}/api/training/files", files=[("file", ("a.png", png))], timeout=5)
    assert no_data.status_code == 400 and no_data.json()["success"] is False
    assert session.post(f"{emulator.url}/api/training/files", data=png, timeout=5).status_code == 400
    for bad in ("not json", json.dumps({"n": 1}), json.dumps(["a"])):
        assert ingest(emulator, session, [("a.png", png)], **{"x-metadata": bad}).status_code == 400
    assert emulator.samples == {}


def test_per_file_results_duplicates_and_split(emu):
    emulator, project, _, session = emu
    first = ingest(emulator, session, [("one.png", image_bytes(seed=1))], **{"x-disallow-duplicates": "1"})
    assert first.json()["files"][0]["success"] is True
    reply = ingest(emulator, session, [("again.png", image_bytes(seed=1)), ("junk.png", b"nope"),
                                       ("two.png", image_bytes(seed=2)), ("x.exe", b"MZ")],
                   category="split", **{"x-disallow-duplicates": "1", "x-label": "a%20b"})
    files = reply.json()["files"]
    assert reply.status_code == 200 and reply.json()["success"] is True
    assert [f["success"] for f in files] == [False, False, True, False]
    assert "already exists" in files[0]["error"] and "not a valid image" in files[1]["error"]
    assert "unsupported" in files[3]["error"]
    two = emulator.samples[files[2]["sampleId"]]
    assert two["label"] == "a b" and two["category"] in ("training", "testing") and two["filename"] == "two"
    # Without x-disallow-duplicates the same bytes are a second sample.
    assert ingest(emulator, session, [("one.png", image_bytes(seed=1))]).json()["files"][0]["success"] is True
    assert len(emulator.samples_in(project["id"])) == 3


def test_one_request_with_several_files_applies_its_headers_to_each(emu):
    """Several data parts in one request (reference §2.1): x-label and x-metadata apply to
    every file, one bounding_boxes.labels part gives each file its own boxes, results come
    per file in the order of the parts, and a refused file fails alone."""
    emulator, _, _, session = emu
    project = emulator.add_project("Shared", labeling_method="object_detection")
    session.headers["x-api-key"] = emulator.make_key(project["id"])
    box = {"label": "car", "x": 1, "y": 2, "width": 3, "height": 4}
    ingest(emulator, session, [("old.png", image_bytes(seed=9))])
    labels = json.dumps({"version": 1, "type": "bounding-box-labels",
                         "boundingBoxes": {"a.png": [box], "c.png": [box, {**box, "label": "bus"}]}})
    reply = session.post(f"{emulator.url}/api/training/files", timeout=5, headers={
        "x-label": "cat", "x-metadata": json.dumps({"site": "A"}), "x-disallow-duplicates": "1"}, files=[
        ("data", ("a.png", image_bytes(seed=1), "image/png")), ("data", ("b.png", image_bytes(seed=9), "image/png")),
        ("data", ("c.png", image_bytes(seed=3), "image/png")), ("data", ("bounding_boxes.labels", labels))]).json()
    assert reply["success"] is True and [f["success"] for f in reply["files"]] == [True, False, True]
    assert [f.get("fileName") for f in reply["files"]] == ["a", None, "c"]
    a, c = (emulator.samples[reply["files"][i]["sampleId"]] for i in (0, 2))
    assert (a["label"], a["metadata"], a["boundingBoxes"]) == ("cat", {"site": "A"}, [box])
    assert (c["label"], c["metadata"], len(c["boundingBoxes"])) == ("cat", {"site": "A"}, 2)


def test_list_matches_substrings_pages_and_parses_as_studio_models(emu):
    emulator, project, _, session = emu
    for name in ("f1", "f10", "f11", "g1"):
        ingest(emulator, session, [(f"{name}.png", image_bytes(seed=len(emulator.samples) + 7))],
               **{"x-metadata": json.dumps({"k": name})})
    base = f"{emulator.url}/v1/api/{project['id']}/raw-data"
    page = session.get(base, params={"category": "all", "filename": "f1", "limit": 2, "offset": 0}, timeout=5).json()
    rest = session.get(base, params={"category": "all", "filename": "f1", "limit": 2, "offset": 2}, timeout=5).json()
    names = [s["filename"] for s in page["samples"] + rest["samples"]]
    assert page["totalCount"] == 3 and sorted(names) == ["f1", "f10", "f11"]
    parsed = api.ListSamplesResponse.from_dict(page)
    assert parsed.samples[0].metadata == {"k": parsed.samples[0].filename}
    assert session.get(base, params={"category": "nope"}, timeout=5).status_code == 400
    one = session.get(f"{base}/{parsed.samples[0].id}", timeout=5).json()
    assert api.GetSampleResponse.from_dict(one).sample.id == parsed.samples[0].id
    missing = session.get(f"{base}/999999", timeout=5)
    assert missing.status_code == 200
    assert missing.json() == {"success": False, "error": "No sample found with ID 999999"}
    emulator.error_status = 404
    assert session.get(f"{base}/999999", timeout=5).status_code == 404
    info = session.get(f"{emulator.url}/v1/api/projects", timeout=5).json()
    assert api.ListProjectsResponse.from_dict(info).projects[0].id == project["id"]


def test_studio_routes_validate_bodies(emu):
    emulator, project, _, session = emu
    sample_id = ingest(emulator, session, [("s.png", image_bytes())]).json()["files"][0]["sampleId"]
    url = f"{emulator.url}/v1/api/{project['id']}/raw-data/{sample_id}"
    assert session.post(url + "/metadata", json={"metadata": {"n": 1}}, timeout=5).status_code == 400
    assert session.post(url + "/metadata", json={"meta": {}}, timeout=5).status_code == 400
    assert session.post(url + "/edit-label", json={}, timeout=5).status_code == 400
    assert session.post(url + "/metadata", json={"metadata": {"a": "1"}}, timeout=5).json() == {"success": True}
    emulator.metadata_merge = True
    session.post(url + "/metadata", json={"metadata": {"b": "2"}}, timeout=5)
    assert emulator.samples[sample_id]["metadata"] == {"a": "1", "b": "2"}
    assert session.delete(url, timeout=5).json() == {"success": True}
    assert session.delete(url, timeout=5).json()["success"] is False


def test_org_data_items_filters_and_shared_files(emu):
    emulator, _, _, _ = emu
    org = emulator.add_org()
    emulator.add_org_dataset(org["id"], "frames")
    base = f"{emulator.url}/v1/api/organizations/{org['id']}"
    with requests.Session() as session:
        session.headers["x-api-key"] = emulator.make_org_key(org["id"])

        def add(name, data, metadata=None):
            fields = [("name", (None, name)), ("dataset", (None, "frames")),
                      ("metadata", (None, json.dumps(metadata or {}))), ("files[]", ("img.png", data, "image/png"))]
            return session.post(f"{base}/data/add", files=fields, timeout=5).json()

        assert session.post(f"{base}/data/add", files=[("name", (None, "x"))], timeout=5).status_code == 400
        first, twin = add("a", b"one", {"k": "v"}), add("a", b"two")
        assert api.EntityCreatedResponse.from_dict(first).id == first["id"]
        listed = session.get(f"{base}/data", params={"dataset": "frames", "filter": "name = 'a'"}, timeout=5).json()
        assert [d.id for d in api.ListOrganizationDataResponse.from_dict(listed).data] == [first["id"], twin["id"]]
        by_meta = session.get(f"{base}/data", params={"filter": "metadata->k = 'v' AND name != 'b'"}, timeout=5).json()
        assert [d["id"] for d in by_meta["data"]] == [first["id"]]
        bad = session.get(f"{base}/data", params={"filter": "name LIKE 'a%'"}, timeout=5).json()
        assert bad["filterParseError"] and bad["data"] == []
        # Same name, same bucket path: the twin overwrote the file, and deleting one item
        # takes the shared files with it.
        item = session.get(f"{base}/data/{first['id']}", timeout=5).json()
        assert api.GetOrganizationDataItemResponse.from_dict(item).data.files[0].size == 3
        assert emulator.files_of(first["id"]) == {"img.png": b"two"}
        session.delete(f"{base}/data/{twin['id']}", timeout=5)
        assert emulator.files_of(first["id"]) == {}
        dataset = session.get(f"{base}/dataset/frames", timeout=5).json()
        assert api.GetOrganizationDatasetResponse.from_dict(dataset).dataset.dataset == "frames"
        missing = session.get(f"{base}/dataset/nope", timeout=5).json()
        assert missing["success"] is False and "does not exist" in missing["error"]


def test_bounding_boxes_from_header_labels_file_and_studio(emu):
    emulator, _, _, session = emu
    project = emulator.add_project("Boxes", labeling_method="object_detection")
    session.headers["x-api-key"] = emulator.make_key(project["id"])
    box = {"label": "car", "x": 1, "y": 2, "width": 3, "height": 4}
    by_header = ingest(emulator, session, [("h.png", image_bytes(seed=1))],
                       **{"x-bounding-boxes": json.dumps([{**box, "x": 0.6, "width": 3.2}])})
    labels = json.dumps({"version": 1, "type": "bounding-box-labels", "boundingBoxes": {"f.png": [box, box]}})
    by_file = session.post(f"{emulator.url}/api/training/files", timeout=5, files=[
        ("data", ("f.png", image_bytes(seed=2), "image/png")), ("data", ("bounding_boxes.labels", labels))]).json()
    assert len(by_file["files"]) == 1  # the labels file is not a sample
    # Numbers are stored as whole pixels: Studio's BoundingBox model has ints.
    assert emulator.samples[by_header.json()["files"][0]["sampleId"]]["boundingBoxes"] == [box]
    sample_id = by_file["files"][0]["sampleId"]
    assert emulator.samples[sample_id]["boundingBoxes"] == [box, box]
    api.Sample.from_dict(emulator.samples[sample_id])
    url = f"{emulator.url}/v1/api/{project['id']}/raw-data/{sample_id}/bounding-boxes"
    for wrong in ({**box, "width": 0}, {**box, "x": 1.5}, {**box, "label": ""}, {**box, "y": True}, {**box, "x": -1}):
        refused = session.post(url, json={"boundingBoxes": [wrong]}, timeout=5)
        assert refused.status_code == 400 and refused.json()["success"] is False
    assert session.post(url, json={"boxes": []}, timeout=5).status_code == 400
    assert emulator.samples[sample_id]["boundingBoxes"] == [box, box]
    assert session.post(url, json={"boundingBoxes": [box]}, timeout=5).json() == {"success": True}
    assert session.post(url, json={"boundingBoxes": [box]}, timeout=5).json() == {"success": True}
    assert emulator.samples[sample_id]["boundingBoxes"] == [box]  # replaced, never appended
    assert session.post(url, json={"boundingBoxes": []}, timeout=5).json() == {"success": True}
    assert emulator.samples[sample_id]["boundingBoxes"] == []
    bad = ingest(emulator, session, [("b.png", image_bytes(seed=3))], **{"x-bounding-boxes": "[{"})
    assert bad.status_code == 400
    two = ingest(emulator, session, [("c.png", image_bytes(seed=4)), ("d.png", image_bytes(seed=5))],
                 **{"x-bounding-boxes": json.dumps([box])})
    assert two.status_code == 400 and "one image per request" in two.json()["error"]
    wrong_file = json.dumps({"version": 2, "boundingBoxes": {}})
    assert session.post(f"{emulator.url}/api/training/files", timeout=5, files=[
        ("data", ("g.png", image_bytes(seed=6), "image/png")),
        ("data", ("bounding_boxes.labels", wrong_file))]).status_code == 400


def test_projects_labeling_single_labels_drop_ingested_boxes(emu):
    emulator, project, _, session = emu  # the default project labels whole samples
    box = {"label": "car", "x": 1, "y": 2, "width": 3, "height": 4}
    reply = ingest(emulator, session, [("h.png", image_bytes(seed=1))], **{"x-bounding-boxes": json.dumps([box])})
    assert reply.json()["files"][0]["success"] is True
    assert emulator.samples[reply.json()["files"][0]["sampleId"]]["boundingBoxes"] == []
