"""The Dataloop emulator itself, spoken to with plain requests: auth, upload modes, PATCH
merge, DQL queries with keyset paging, annotations and ontology labels."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image

from tests.emulators.dataloop import DataloopEmulator, make_jwt
from tests.emulators.dataloop_query import deep_merge, matches
from tests.helpers import image_bytes


@pytest.fixture
def emu():
    with DataloopEmulator() as emulator:
        project = emulator.add_project("P")
        emulator.dataset = emulator.add_dataset(project["id"], "D")
        emulator.session = requests.Session()
        emulator.session.headers["authorization"] = f"Bearer {emulator.make_token()}"
        emulator.api = f"{emulator.url}/api/v1"
        yield emulator
        emulator.session.close()


def upload(emu, path: str, data: bytes, *, mode: str = "skip", user: dict | None = None) -> requests.Response:
    files = [("type", (None, "file")), ("path", (None, path))]
    if user is not None:
        files.append(("metadata", (None, json.dumps({"user": user}))))
    files.append(("file", (path.rsplit("/", 1)[-1], data, "image/png")))
    return emu.session.post(f"{emu.api}/datasets/{emu.dataset['id']}/items", params={"mode": mode}, files=files)


def query(emu, body: dict) -> dict:
    response = emu.session.post(f"{emu.api}/datasets/{emu.dataset['id']}/query", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_bearer_jwt_is_checked(emu):
    url = f"{emu.api}/users/me"
    assert emu.session.get(url).json()["email"] == "dev@example.com"
    assert requests.get(url).status_code == 401
    bad_signature = make_jwt({"email": "x@y", "exp": 2**40}, b"another secret")
    assert requests.get(url, headers={"authorization": f"Bearer {bad_signature}"}).status_code == 401
    expired = emu.make_token(expires_in=-10)
    response = requests.get(url, headers={"authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and "message" in response.json()


def test_upload_modes_and_item_op_header(emu):
    first = upload(emu, "/a/x.png", b"12345", user={"k": 1})
    assert first.headers["x-item-op"] == "created"
    item = first.json()
    assert (item["filename"], item["dir"], item["name"]) == ("/a/x.png", "/a", "x.png")
    assert item["metadata"]["system"]["size"] == 5 and item["metadata"]["user"] == {"k": 1}
    skipped = upload(emu, "/a/x.png", b"999", user={"k": 2})
    assert skipped.headers["x-item-op"] == "skip" and skipped.json() == item
    over = upload(emu, "/a/x.png", b"999", mode="overwrite", user={"k": 3})
    assert over.headers["x-item-op"] == "overwrite" and over.json()["id"] == item["id"]
    assert over.json()["metadata"]["system"]["size"] == 3 and over.json()["metadata"]["user"] == {"k": 3}
    assert emu.binaries[item["id"]] == b"999" and len(emu.items) == 1
    assert upload(emu, "relative.png", b"1").status_code == 400


def test_chunked_multipart_upload_is_parsed(emu):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nfile\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/c/chunked.png\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chunked.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + b"z" * 3000 + b"\r\n--B--\r\n")
    chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))  # a generator: sent chunked
    response = emu.session.post(f"{emu.api}/datasets/{emu.dataset['id']}/items",
                                headers={"Content-Type": "multipart/form-data; boundary=B"}, data=chunks)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["system"]["size"] == 3000


def test_patch_deep_merges_with_null_as_delete(emu):
    item = upload(emu, "/p.png", b"1", user={"a": 1, "b": {"c": 1, "d": 2}, "e": 5}).json()
    url = f"{emu.api}/items/{item['id']}"
    patched = emu.session.patch(url, json={"metadata": {"user": {"a": None, "b": {"d": None, "f": 3}},
                                                        "system": {"size": 1}}, "id": "ignored"}).json()
    assert patched["metadata"]["user"] == {"b": {"c": 1, "f": 3}, "e": 5}
    assert patched["metadata"]["system"]["size"] == 1 and patched["id"] == item["id"]
    emu.session.patch(url, params={"system": "true"}, json={"metadata": {"system": {"tag": "t"}}})
    assert emu.session.get(url).json()["metadata"]["system"]["tag"] == "t"
    assert emu.session.delete(url).status_code == 200
    assert emu.session.get(url).status_code == 404 and emu.session.patch(url, json={}).status_code == 404


def test_queries_filter_and_page_by_id(emu):
    for n in range(7):
        upload(emu, f"/q/{n}.png", b"x", user={"n": n, "cam": "c1" if n % 2 else "c2"})
    upload(emu, "/other/z.png", b"x", user={"n": 99})
    by_path = query(emu, {"filter": {"$and": [{"filename": "/q/3.png"}, {"type": "file"}]}, "resource": "items"})
    assert [i["filename"] for i in by_path["items"]] == ["/q/3.png"]
    cams = query(emu, {"filter": {"$and": [{"metadata.user.cam": "c1"}, {"metadata.user.n": {"$gte": 3}}]}})
    assert sorted(i["metadata"]["user"]["n"] for i in cams["items"]) == [3, 5]
    globbed = query(emu, {"filter": {"filename": "/q/*"}, "pageSize": 1000})
    assert globbed["totalItemsCount"] == 7
    either = query(emu, {"filter": {"$or": [{"metadata.user.n": {"$in": [0, 99]}}, {"dir": "/nothing"}]}})
    assert sorted(i["metadata"]["user"]["n"] for i in either["items"]) == [0, 99]
    # Keyset paging as the SDK iterates: page 0, sort by id, id > last seen.
    seen, last = [], None
    while True:
        clauses = [{"dir": "/q"}] + ([{"id": {"$gt": last}}] if last else [])
        page = query(emu, {"filter": {"$and": clauses}, "sort": {"id": "ascending"}, "page": 0, "pageSize": 3})
        seen += [i["metadata"]["user"]["n"] for i in page["items"]]
        if not page["hasNextPage"]:
            break
        last = page["items"][-1]["id"]
    assert seen == list(range(7))
    assert query(emu, {"filter": {}, "page": 1, "pageSize": 5})["totalPagesCount"] == 2


def test_datasets_query_by_name_in_project_context(emu):
    other = emu.add_project("Q")
    emu.add_dataset(other["id"], "D")
    body = {"filter": {"$and": [{"name": "D"}]}, "resource": "datasets",
            "context": {"projects": [emu.dataset["projects"][0]]}}
    found = emu.session.post(f"{emu.api}/datasets/query", json=body).json()["items"]
    assert [d["id"] for d in found] == [emu.dataset["id"]]
    assert found[0]["metadata"]["system"]["recipes"]
    assert emu.session.get(f"{emu.api}/projects/P/name").json()[0]["name"] == "P"
    assert emu.session.get(f"{emu.api}/projects/none/name").status_code == 404


def test_annotations_and_labels(emu):
    item = upload(emu, "/ann.png", b"x").json()
    created = emu.session.post(f"{emu.api}/items/{item['id']}/annotations",
                               json=[{"type": "box", "label": "car",
                                      "coordinates": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]},
                                     {"type": "class", "label": "day"}]).json()
    assert [a["itemId"] for a in created] == [item["id"]] * 2
    assert emu.session.get(f"{emu.api}/items/{item['id']}").json()["annotationsCount"] == 2
    listed = query(emu, {"filter": {"itemId": item["id"]}, "resource": "annotations"})["items"]
    assert sorted(a["label"] for a in listed) == ["car", "day"]
    assert emu.session.delete(f"{emu.api}/annotations/{created[0]['id']}").status_code == 200
    assert emu.session.get(f"{emu.api}/items/{item['id']}/annotations").json()[0]["label"] == "day"
    recipe = emu.session.get(f"{emu.api}/recipes/{emu.dataset['metadata']['system']['recipes'][0]}").json()
    url = f"{emu.api}/ontologies/{recipe['ontologyIds'][0]}/labels"
    roots = emu.session.patch(url, json={"labelsNode": [{"tag": "car", "color": "#ff0000"}], "upsert": True}).json()
    assert [r["value"]["color"] for r in roots["roots"]] == ["#ff0000"]
    roots = emu.session.patch(url, json={"labelsNode": [{"tag": "bus", "color": "#00ff00"}], "upsert": False}).json()
    assert [r["value"]["tag"] for r in roots["roots"]] == ["car"]  # upsert false only updates


def _png_url(size, mode="RGBA") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("bad, problem", [
    ({"type": "blob", "label": "x"}, "unknown annotation type"),
    ({"type": "box", "label": ""}, "label"),
    ({"type": "box", "label": "car", "coordinates": [{"x": 1, "y": 2}]}, "top-left, bottom-right"),
    ({"type": "box", "label": "car", "coordinates": [{"x": "1", "y": 2}, {"x": 3, "y": 4}]}, "top-left"),
    ({"type": "point", "label": "p", "coordinates": [1, 2]}, "point"),
    ({"type": "segment", "label": "s", "coordinates": [{"x": 0, "y": 0}]}, "rings"),
    ({"type": "segment", "label": "s", "coordinates": [[{"x": 0, "y": 0}, {"x": 1, "y": 1}]]}, "at least 3"),
    ({"type": "polyline", "label": "l", "coordinates": [[{"x": 0, "y": 0}]]}, "at least 2"),
    ({"type": "class", "label": "c", "coordinates": [{"x": 0, "y": 0}]}, "no coordinates"),
    ({"type": "binary", "label": "m", "coordinates": "iVBORw0KGgo="}, "data:image/png"),
    ({"type": "binary", "label": "m", "coordinates": "data:image/png;base64,!!"}, "cannot be decoded"),
    ({"type": "binary", "label": "m", "coordinates": _png_url((32, 24), "RGB")}, "RGBA"),
    ({"type": "binary", "label": "m", "coordinates": _png_url((31, 24))}, "31x24 but the item is 32x24"),
    ({"type": "box", "label": "car", "itemId": "other", "coordinates": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]},
     "itemId"),
    ({"type": "box", "label": "car", "metadata": {"system": {"attributes": 3}},
      "coordinates": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}, "attributes"),
])
def test_annotation_payloads_are_checked_and_a_bad_one_stores_nothing(emu, bad, problem):
    item = upload(emu, "/img.png", image_bytes()).json()
    assert item["metadata"]["system"]["width"] == 32 and item["metadata"]["system"]["height"] == 24
    good = {"type": "binary", "label": "m", "coordinates": _png_url((32, 24)), "itemId": item["id"]}
    response = emu.session.post(f"{emu.api}/items/{item['id']}/annotations", json=[good, bad])
    assert response.status_code == 400 and problem in response.json()["message"], response.text
    assert "annotation 1" in response.json()["message"] and emu.annotations_of(item["id"]) == []
    assert emu.session.post(f"{emu.api}/items/{item['id']}/annotations", json=[good]).status_code == 200
    assert emu.session.post(f"{emu.api}/items/{item['id']}/annotations", json={"type": "box"}).status_code == 400


def test_refusal_and_readonly_ontology_hooks(emu):
    item = upload(emu, "/img.png", image_bytes()).json()
    emu.refuse_annotations = "too many"
    url = f"{emu.api}/items/{item['id']}/annotations"
    assert emu.session.post(url, json=[{"type": "class", "label": "a"}]).json()["message"] == "too many"
    assert emu.session.post(url, json=[{"type": "class", "label": "a"}]).status_code == 200
    recipe = emu.recipes[emu.dataset["metadata"]["system"]["recipes"][0]]
    labels = f"{emu.api}/ontologies/{recipe['ontologyIds'][0]}/labels"
    assert emu.session.patch(labels, json={"labelsNode": [{"tag": "a", "color": "red"}]}).status_code == 400
    emu.ontology_readonly = True
    assert emu.session.patch(labels, json={"labelsNode": [{"tag": "a", "color": "#ff0000"}]}).status_code == 403


def test_dql_helpers():
    doc = {"a": {"b": 2}, "tags": ["x", "y"], "name": "/d/e.png"}
    assert matches(doc, {"a.b": {"$gt": 1, "$lt": 3}}) and not matches(doc, {"a.b": {"$ne": 2}})
    assert matches(doc, {"tags": "x"}) and matches(doc, {"missing": {"$exists": False}})
    assert matches(doc, {"name": "/d/**"}) and not matches(doc, {"name": "/*"})
    assert matches(doc, {"name": {"$match": "e\\.png$"}}) and matches(doc, {"missing": {"$nin": [1]}})
    target = {"a": {"b": 1, "c": 2}}
    deep_merge(target, {"a": {"b": None, "d": {"e": 1}}, "f": [1]})
    assert target == {"a": {"c": 2, "d": {"e": 1}}, "f": [1]}
