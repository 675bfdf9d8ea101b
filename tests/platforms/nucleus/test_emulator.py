"""The Nucleus emulator on its own, spoken to with plain requests: auth, strict request
validation, update semantics, job progression, the signed-URL flow, reads."""

from __future__ import annotations

import json

import pytest
import requests

from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import image_bytes


@pytest.fixture
def emulator():
    with NucleusEmulator() as emulator:
        yield emulator


@pytest.fixture
def dataset_id(emulator):
    return emulator.add_dataset("d")


@pytest.fixture
def http(emulator):
    session = requests.Session()
    session.auth = (emulator.api_key, "")
    yield session
    session.close()


def url(emulator, route: str) -> str:
    return f"{emulator.endpoint}/{route}"


def multipart(items, images) -> list:
    files = [("items", (None, json.dumps(items) if not isinstance(items, str) else items, "application/json"))]
    files += [("image", (name, data, "image/png")) for name, data in images]
    return files


def poll(http, emulator, job_id: str) -> str:
    return http.get(url(emulator, f"job/{job_id}")).json()["status"]


def test_basic_auth_is_required(emulator, dataset_id, http):
    assert http.get(url(emulator, f"dataset/{dataset_id}/is_scene")).json() == {"is_scene": False}
    for auth in [None, ("wrong", ""), (emulator.api_key + "x", "")]:
        reply = requests.get(url(emulator, f"dataset/{dataset_id}/is_scene"), auth=auth)
        assert reply.status_code == 401 and "error" in reply.json()
    limited = requests.get(url(emulator, f"dataset/{dataset_id}/use_privacy_mode"),
                           headers={"x-limited-access-key": emulator.api_key})
    assert limited.json() == {"use_privacy_mode": False}
    emulator.revoke(emulator.api_key)
    assert http.get(url(emulator, f"dataset/{dataset_id}/is_scene")).status_code == 401


def test_unknown_dataset_is_404(emulator, http):
    reply = http.get(url(emulator, "dataset/ds_nope/is_scene"))
    assert reply.status_code == 404 and "ds_nope" in reply.json()["error"]


@pytest.mark.parametrize("items, images, expected", [
    ([{"image_url": "a.png", "metadata": {}}], [("a.png", image_bytes())], "reference_id is required"),
    ("[{not json", [("a.png", image_bytes())], "not valid JSON"),
    ([{"reference_id": "r", "image_url": "a.png"}], [("b.png", image_bytes())], "do not match"),
    ([{"reference_id": "r", "image_url": "a.png"}], [], "do not match"),
    ([{"reference_id": "r", "image_url": "a.png"}, {"reference_id": "r", "image_url": "b.png"}],
     [("a.png", image_bytes()), ("b.png", image_bytes())], "duplicate reference_id"),
    ([{"reference_id": "r", "image_url": "a.png", "update": "yes"}], [("a.png", image_bytes())], "update must be"),
    ([{"reference_id": "r", "image_url": "a.png", "metadata": []}], [("a.png", image_bytes())], "metadata must be"),
    ({"reference_id": "r"}, [("a.png", image_bytes())], "non-empty JSON list"),
])
def test_malformed_multipart_append_is_400_with_a_message(emulator, dataset_id, http, items, images, expected):
    reply = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), files=multipart(items, images))
    assert reply.status_code == 400
    assert expected in reply.json()["error"]
    assert emulator.items(dataset_id) == [] and emulator.jobs() == []


def test_image_parts_pair_by_percent_decoded_file_name(emulator, dataset_id, http):
    items = [{"reference_id": "p/1", "image_url": "/tmp/x y/1.png", "metadata": {"k": "v"}}]
    reply = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"),
                      files=multipart(items, [("%2Ftmp%2Fx%20y%2F1.png", image_bytes(seed=3))]))
    assert reply.status_code == 200, reply.text
    emulator.run_jobs()
    assert emulator.image(dataset_id, "p/1") == image_bytes(seed=3)


def test_job_progresses_over_polls_and_applies_only_when_completed(emulator, dataset_id, http):
    items = [{"reference_id": "j/1", "image_url": "1.png", "metadata": {}, "update": False}]
    job = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"),
                    files=multipart(items, [("1.png", image_bytes())])).json()
    assert job["job_last_known_status"] == "Queued" and job["job_type"] == "uploadDatasetItems"
    assert poll(http, emulator, job["job_id"]) == "Queued"
    assert poll(http, emulator, job["job_id"]) == "Running"
    assert emulator.item(dataset_id, "j/1") is None
    status = http.get(url(emulator, f"job/{job['job_id']}")).json()
    assert status["status"] == "Completed" and status["job_progress"] == "1.00"
    assert status["message"]["new_items"] == 1
    assert http.get(url(emulator, f"job/{job['job_id']}/errors")).json() == []
    assert emulator.item(dataset_id, "j/1")["width"] == 32
    assert http.get(url(emulator, "job/job_nope")).status_code == 404


def test_jobs_of_a_dataset_run_in_order(emulator, dataset_id, http):
    ids = []
    for n in (1, 2):
        items = [{"reference_id": "fifo", "image_url": "1.png", "metadata": {"n": n}, "update": True}]
        ids.append(http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"),
                             files=multipart(items, [("1.png", image_bytes())])).json()["job_id"])
    while poll(http, emulator, ids[1]) != "Completed":
        pass
    assert [j.status for j in emulator.jobs()] == ["Completed", "Completed"]
    assert emulator.item(dataset_id, "fifo")["metadata"] == {"n": 2}


def test_legacy_sync_append_update_semantics(emulator, dataset_id, http):
    def append(items, update):
        return http.post(url(emulator, f"dataset/{dataset_id}/append"), json={"items": items, "update": update}).json()

    first = {"reference_id": "r/1", "image_url": "https://x/1.jpg", "metadata": {"a": 1, "b": "x"}}
    assert append([first], False)["new_items"] == 1
    again = {**first, "metadata": {"a": 2}}
    counts = append([again], False)
    assert counts["ignored_items"] == 1 and emulator.item(dataset_id, "r/1")["metadata"] == {"a": 1, "b": "x"}
    counts = append([again], True)
    assert counts["updated_items"] == 1 and emulator.item(dataset_id, "r/1")["metadata"] == {"a": 2}
    local = {"reference_id": "r/2", "image_url": "/not/remote.jpg"}
    counts = append([local], False)
    assert counts["upload_errors"] == 1 and "remote URL" in counts["error_payload"][0]["error"]


def test_signed_url_ndjson_flow(emulator, dataset_id, http):
    signed = http.get(url(emulator, f"dataset/{dataset_id}/signedUrl/req1")).json()["signed_url"]
    lines = [{"reference_id": f"s/{n}", "image_url": f"s3://bucket/{n}.jpg", "metadata": {"n": n}} for n in (1, 2)]
    assert requests.put(signed, data="".join(json.dumps(x) + "\n" for x in lines)).status_code == 200  # no auth
    job = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), json={"requestId": "req1", "update": False})
    assert job.status_code == 200
    emulator.run_jobs()
    assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == ["s/1", "s/2"]
    # The upload is consumed; an unknown request id is refused.
    reply = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), json={"requestId": "req1"})
    assert reply.status_code == 400 and "req1" in reply.json()["error"]
    assert requests.put(signed.split("?")[0], data=b"x").status_code == 403


def test_row_errors_complete_the_job_with_errors(emulator, dataset_id, http):
    private = emulator.add_dataset("private", use_privacy_mode=True)
    cases = [
        (dataset_id, {"reference_id": "e/1", "image_url": "1.png"}, b"not an image", "Could not decode"),
        (dataset_id, {"reference_id": "e/2", "image_url": "1.png", "width": 10, "height": 10}, image_bytes(),
         "do not match the image size"),
        (private, {"reference_id": "e/3", "image_url": "1.png"}, image_bytes(), "need width and height"),
    ]
    for ds, item, data, expected in cases:
        job = http.post(url(emulator, f"dataset/{ds}/append?async=1"), files=multipart([item], [("1.png", data)]))
        emulator.run_jobs()
        errors = http.get(url(emulator, f"job/{job.json()['job_id']}/errors")).json()
        assert len(errors) == 1 and expected in json.loads(errors[0])["error"]
        assert emulator.jobs()[-1].status == "Completed" and emulator.item(ds, item["reference_id"]) is None


def test_reads_refloc_items_page_dataset_items_and_merge(emulator, dataset_id, http):
    items = [{"reference_id": f"a/{n}", "image_url": f"https://x/{n}.jpg", "metadata": {"n": n}} for n in range(5)]
    http.post(url(emulator, f"dataset/{dataset_id}/append"), json={"items": items, "update": False})
    got = http.get(url(emulator, f"dataset/{dataset_id}/refloc/a%2F3")).json()
    assert got["item"]["reference_id"] == "a/3" and got["annotations"] == {}
    assert http.get(url(emulator, f"dataset/{dataset_id}/refloc/a%2F9")).status_code == 404
    pages, token = [], None
    while True:
        page = http.post(url(emulator, f"dataset/{dataset_id}/itemsPage"),
                         json={"pageToken": token, "pageSize": 2}).json()
        pages.append([i["reference_id"] for i in page["items"]])
        token = page["nextPageToken"]
        if not token:
            break
    assert pages == [["a/0", "a/1"], ["a/2", "a/3"], ["a/4"]]
    listed = http.get(url(emulator, f"dataset/{dataset_id}/datasetItems")).json()["dataset_items"]
    assert [i["ref_id"] for i in listed] == [f"a/{n}" for n in range(5)] and "reference_id" not in listed[0]
    merged = http.post(url(emulator, f"dataset/{dataset_id}/metadata?async=0"),
                       json={"metadata": [{"reference_id": "a/1", "metadata": {"extra": "y"}}], "level": "item"})
    assert merged.json()["updated_items"] == 1
    assert emulator.item(dataset_id, "a/1")["metadata"] == {"n": 1, "extra": "y"}
    assert http.delete(url(emulator, f"dataset/{dataset_id}/refloc/a%2F1")).status_code == 200
    assert emulator.item(dataset_id, "a/1") is None


def test_create_list_and_delete_datasets(emulator, http):
    created = http.post(url(emulator, "dataset/create"), json={"name": "new", "is_scene": False,
                                                               "use_privacy_mode": True}).json()
    details = http.get(url(emulator, "dataset/details")).json()
    assert [(d["id"], d["name"], d["is_public"]) for d in details] == [(created["dataset_id"], "new", False)]
    assert http.get(url(emulator, f"dataset/{created['dataset_id']}/use_privacy_mode")).json()["use_privacy_mode"]
    assert http.post(url(emulator, "dataset/create"), json={}).status_code == 400
    assert http.delete(url(emulator, f"dataset/{created['dataset_id']}"), json={}).status_code == 200
    assert http.get(url(emulator, "dataset/details")).json() == []


# -- batches ----------------------------------------------------------------------------------------
def batch_request(n: int, bad: int | None = None):
    items = [{"reference_id": f"b/{i}", "image_url": f"b/{i}.png", "metadata": {"i": i}, "update": True}
             for i in range(n)]
    images = [(f"b%2F{i}.png", b"broken" if i == bad else image_bytes(seed=i)) for i in range(n)]
    return multipart(items, images)


def test_a_batch_is_one_job_and_a_bad_item_fails_alone_with_its_row(emulator, dataset_id, http):
    reply = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), files=batch_request(10, bad=4))
    job_id = reply.json()["job_id"]
    assert len(emulator.jobs()) == 1 and emulator.items(dataset_id) == []
    while poll(http, emulator, job_id) in ("Queued", "Running"):
        pass
    status = http.get(url(emulator, f"job/{job_id}")).json()
    assert status["status"] == "Completed"  # a refused row does not fail the job
    assert status["message"] == {"new_items": 9, "updated_items": 0, "ignored_items": 0, "upload_errors": 1}
    [row] = http.get(url(emulator, f"job/{job_id}/errors")).json()
    # The SDK's documented record shape: the payload under its kind, camelCase keys, and "error".
    record = json.loads(row)
    assert record["item"]["referenceId"] == "b/4" and record["item"]["imageUrl"] == "b/4.png"
    assert "Could not decode" in record["error"]
    assert sorted(i["reference_id"] for i in emulator.items(dataset_id)) == [f"b/{i}" for i in range(10) if i != 4]


def test_a_lost_reply_on_a_batch_still_commits_its_job(emulator, dataset_id, http):
    emulator.faults.next("lost_reply", path=r"/append$")
    with pytest.raises(requests.ConnectionError):
        http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), files=batch_request(3))
    emulator.run_jobs()
    assert len(emulator.jobs()) == 1 and len(emulator.items(dataset_id)) == 3


def test_jobs_list_shows_unfinished_jobs_by_dataset_and_type(emulator, dataset_id, http):
    other = emulator.add_dataset("other")
    emulator.job_script = ["Running"] * 10
    mine = http.post(url(emulator, f"dataset/{dataset_id}/append?async=1"), files=batch_request(2)).json()
    http.post(url(emulator, f"dataset/{other}/append?async=1"), files=batch_request(2))
    body = {"dataset_id": dataset_id, "job_types": ["uploadDatasetItems", "annotationDeletion"],
            "from_date": None, "to_date": None, "limit": 1000, "show_completed": False}
    listed = http.post(url(emulator, "jobs/"), json=body).json()
    assert [(j["job_id"], j["job_last_known_status"], j["job_type"]) for j in listed] == [
        (mine["job_id"], "Running", "uploadDatasetItems")]
    emulator.run_jobs()
    assert http.post(url(emulator, "jobs/"), json=body).json() == []
    assert len(http.post(url(emulator, "jobs/"), json=dict(body, show_completed=True)).json()) == 1
