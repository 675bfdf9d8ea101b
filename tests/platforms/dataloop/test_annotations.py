"""The Dataloop target's labels and masks against the emulator: every label type and a mask
arrive as annotations, edits replace them (never duplicate), lost replies and crashes are
recovered the daemon's way (syncd.delivery), refusals are reported without holding the image
back, and unchanged labels cost no request."""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from syncd import delivery
from syncd.errors import FatalTargetError, TransientError
from syncd.journal.store import DueDelivery
from syncd.targets.dataloop import annotations as dataloop_annotations
from syncd.targets.dataloop.annotations import EMPTY, annotations_digest, signature
from syncd.targets.dataloop.payload import to_dataloop
from syncd.targets.dataloop.target import DataloopSettings, DataloopTarget
from syncd.targets.dataloop.wire import MARKER
from tests.emulators.dataloop import DataloopEmulator
from tests.helpers import make_upload

CLASS_MAP = {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
LABELS = [
    {"type": "classification", "label": "daytime", "attributes": {"source": "cam"}},
    {"type": "box", "label": "car", "x": 1.5, "y": 2, "width": 10, "height": 5, "attributes": {"occluded": True}},
    {"type": "point", "label": "nose", "x": 3, "y": 4},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [20, 0], [10, 12.5]]},
    {"type": "polyline", "label": "lane", "points": [[0, 23], [31, 20]]},
]


def mask_png(sky_rows: int = 8) -> bytes:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:sky_rows] = CLASS_MAP["sky"]
    pixels[16:, :16] = CLASS_MAP["road"]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled(key="cam1/f1", labels=LABELS, mask=True, **kwargs):
    return make_upload(key, labels=labels, mask=mask_png(**kwargs.pop("mask_args", {})) if mask else None,
                       class_map=CLASS_MAP if mask else None, **kwargs)


def pixels(data_url: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data_url.removeprefix("data:image/png;base64,")))) as image:
        return np.asarray(image.convert("RGBA"))


class World:
    def __init__(self, emulator: DataloopEmulator):
        self.emulator = emulator
        project = emulator.add_project("Proj")
        self.dataset = emulator.add_dataset(project["id"], "ds")
        self.token = emulator.make_token()
        settings = DataloopSettings(project="Proj", dataset="ds", base_url=f"{emulator.url}/api/v1", timeout=5)
        self.target = DataloopTarget("dl", settings, env={"DATALOOP_API_KEY": self.token})
        self.ontology = emulator.ontologies[emulator.recipes[self.dataset["metadata"]["system"]["recipes"][0]]
                                            ["ontologyIds"][0]]

    def item(self, path="/cam1/f1.png") -> dict:
        return {i["filename"]: i for i in self.emulator.items_in(self.dataset["id"])}[path]

    def ours(self, path="/cam1/f1.png") -> list[dict]:
        annotations = self.emulator.annotations_of(self.item(path)["id"])
        return [a for a in annotations if MARKER in a["metadata"].get("user", {})]

    def colours(self) -> dict[str, str]:
        return {r["value"]["tag"]: r["value"]["color"] for r in self.ontology["roots"]}

    def send(self, upload, *, unknown=False) -> delivery.Outcome:
        """One attempt the daemon's way (syncd.delivery): after an unknown outcome the
        item is looked up first and adopted when it already holds this version."""
        due = DueDelivery(item_id=1, target="dl", folder="f", key=upload.key, version=upload.version,
                          outcome_unknown=unknown, receipt=None, attempts=0)
        return delivery._send(due, upload, self.target)

    def annotation_requests(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.emulator.requests
                if "/annotations" in p or p.endswith("/query") and "/datasets/" in p or "/ontologies" in p]


@pytest.fixture
def world():
    with DataloopEmulator() as emulator:
        made = World(emulator)
        made.target.check()
        yield made
        made.target.close()


def same_as_converter(world, upload, path="/cam1/f1.png") -> None:
    """The item's syncd annotations are exactly what the converter makes (no more, no less)."""
    wanted = to_dataloop(upload, label_colors=world.colours()).annotations
    assert sorted(map(signature, world.ours(path))) == sorted(map(signature, wanted))


# -- round trip ------------------------------------------------------------------------------------
def test_every_label_type_and_the_mask_arrive_as_annotations(world):
    upload = labelled()
    receipt = world.target.deliver(upload)
    ours = world.ours()
    assert sorted((a["type"], a["label"]) for a in ours) == sorted([
        ("class", "daytime"), ("box", "car"), ("point", "nose"), ("segment", "roof"), ("polyline", "lane"),
        ("binary", "road"), ("binary", "sky")])
    by_label = {a["label"]: a for a in ours}
    assert by_label["car"]["coordinates"] == [{"x": 1.5, "y": 2.0, "z": 0}, {"x": 11.5, "y": 7.0, "z": 0}]
    assert by_label["car"]["metadata"]["system"]["attributes"] == {"occluded": True}
    assert by_label["nose"]["coordinates"] == {"x": 3.0, "y": 4.0, "z": 0.0}
    assert by_label["roof"]["coordinates"] == [[{"x": 0.0, "y": 0.0}, {"x": 20.0, "y": 0.0}, {"x": 10.0, "y": 12.5}]]
    assert "coordinates" not in by_label["daytime"]
    sky, road = pixels(by_label["sky"]["coordinates"]), pixels(by_label["road"]["coordinates"])
    assert (sky[:8] == (70, 130, 180, 255)).all() and sky[8:].sum() == 0
    assert (road[16:, :16] == (128, 64, 128, 255)).all() and road[:16].sum() == 0 and road[16:, 16:].sum() == 0
    tags = [a["metadata"]["user"][MARKER] for a in ours]
    assert {t["key"] for t in tags} == {"cam1/f1"} and {t["version"] for t in tags} == {upload.version}
    same_as_converter(world, upload)
    # Every label is in the ontology; the mask classes with their class-map colours.
    colours = world.colours()
    assert {"daytime", "car", "nose", "roof", "lane", "road", "sky"} <= set(colours)
    assert colours["sky"] == "#4682b4" and colours["road"] == "#804080"
    # The marker and the receipt record what the annotations were made from.
    digest = annotations_digest(upload)
    assert world.item()["metadata"]["user"][MARKER]["annotations_sha256"] == digest
    assert receipt.extra["annotations_sha256"] == digest and "not_sent" not in receipt.extra
    assert world.item()["annotationsCount"] == 7
    assert world.target.lookup(upload).extra["version"] == upload.version


def test_labels_the_ontology_has_keep_their_colour_and_colour_the_mask(world):
    world.ontology["roots"].append({"value": {"tag": "sky", "color": "#0a0b0c"}, "children": []})
    world.target.check()  # re-reads the ontology
    world.target.deliver(labelled())
    sky = next(a for a in world.ours() if a["label"] == "sky")
    assert (pixels(sky["coordinates"])[:8] == (10, 11, 12, 255)).all()
    assert world.colours()["sky"] == "#0a0b0c"
    assert len([p for m, p in world.emulator.requests if m == "PATCH" and "/ontologies/" in p]) == 1
    # The next item with the same labels needs no ontology request at all.
    before = len(world.emulator.requests)
    world.target.deliver(labelled("cam1/f2"))
    assert not [p for _, p in world.emulator.requests[before:] if "/ontologies/" in p or "/recipes/" in p]


# -- updates ---------------------------------------------------------------------------------------
def test_label_edits_replace_only_what_changed_and_keep_people_s_annotations(world):
    first = world.target.deliver(labelled())
    item_id = world.item()["id"]
    world.emulator.annotations["human1"] = {"id": "human1", "itemId": item_id, "datasetId": world.dataset["id"],
                                           "type": "box", "label": "car", "metadata": {"system": {}},
                                           "coordinates": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}
    kept = {a["id"] for a in world.ours() if a["type"] in ("binary", "class")}
    edited = [dict(LABELS[0]), {**LABELS[1], "x": 4}, LABELS[2]]  # box moved, polygon and polyline removed
    world.emulator.record = True
    second = labelled(labels=edited, previous=first, mask_args={"sky_rows": 8})
    receipt = world.target.deliver(second)
    same_as_converter(world, second)
    assert kept <= {a["id"] for a in world.ours()}  # unchanged labels and masks were not re-sent
    posted = [a for e in world.emulator.recorded("POST", r"/annotations$") for a in e["json"]]
    assert [(a["type"], a["label"]) for a in posted] == [("box", "car")]
    assert len(world.emulator.recorded("DELETE", r"/annotations/")) == 3  # old box, polygon, polyline
    assert "human1" in world.emulator.annotations
    # The mask changes and then goes away; then every label goes: nothing of ours remains.
    third = labelled(labels=edited, previous=receipt, mask_args={"sky_rows": 4})
    receipt = world.target.deliver(third)
    same_as_converter(world, third)
    sky = next(a for a in world.ours() if a["label"] == "sky")
    assert pixels(sky["coordinates"])[:, :, 3].sum() == 4 * 32 * 255
    fourth = labelled(labels=edited, mask=False, previous=receipt)
    receipt = world.target.deliver(fourth)
    assert not [a for a in world.ours() if a["type"] == "binary"]
    fifth = make_upload("cam1/f1", previous=receipt)
    receipt = world.target.deliver(fifth)
    assert world.ours() == [] and "human1" in world.emulator.annotations
    marker = world.item()["metadata"]["user"][MARKER]
    assert receipt.extra["annotations_sha256"] == EMPTY == marker["annotations_sha256"]


def test_metadata_only_changes_send_no_annotation_request(world):
    first = world.target.deliver(labelled(metadata={"site": "A"}))
    before = len(world.annotation_requests())
    second = world.target.deliver(labelled(metadata={"site": "B"}, previous=first))
    assert len(world.annotation_requests()) == before
    assert second.extra["annotations_sha256"] == first.extra["annotations_sha256"]
    assert world.item()["metadata"]["user"]["site"] == "B" and len(world.ours()) == 7
    # Without labels ever: not even a listing.
    plain = world.target.deliver(make_upload("cam1/plain", metadata={"a": 1}))
    world.target.deliver(make_upload("cam1/plain", metadata={"a": 2}, previous=plain))
    assert len(world.annotation_requests()) == before


def test_image_change_keeps_annotations_once_even_when_the_item_gets_a_new_id(world):
    world.emulator.overwrite_new_id = True
    first = world.target.deliver(labelled())
    second = labelled(seed=5, previous=first)
    receipt = world.target.deliver(second)
    assert receipt.remote_id != first.remote_id and len(world.emulator.items_in(world.dataset["id"])) == 1
    same_as_converter(world, second)
    # And in place (the same id): nothing posted twice.
    world.emulator.overwrite_new_id = False
    third = labelled(seed=6, previous=receipt)
    world.target.deliver(third)
    same_as_converter(world, third)


def test_format_change_moves_the_annotations_with_the_item(world):
    first = world.target.deliver(labelled())
    second = labelled(fmt="JPEG", previous=first)
    world.target.deliver(second)
    assert [i["filename"] for i in world.emulator.items_in(world.dataset["id"])] == ["/cam1/f1.jpg"]
    same_as_converter(world, second, "/cam1/f1.jpg")
    assert len(world.emulator.annotations) == 7  # the old item's went with it


# -- lost replies and crashes ----------------------------------------------------------------------
@pytest.mark.parametrize("where", [
    ("POST", r"/annotations$"),  # the annotations were created, the reply lost
    ("DELETE", r"/annotations/"),  # an old annotation was deleted, the reply lost
    ("PATCH", r"/items/"),  # annotations written, the marker's PATCH lost
])
def test_lost_reply_then_recovery_the_daemon_s_way_never_duplicates(world, where):
    method, path = where
    first = world.send(labelled(labels=[LABELS[0], {**LABELS[1], "x": 7}]))  # the box moves next
    assert first.kind == delivery.ACKED
    second = labelled(previous=first.receipt)
    world.emulator.faults.next("lost_reply", path=path, method=method)
    outcome = world.send(second)
    assert outcome.kind == delivery.TRANSIENT and outcome.outcome_unknown
    world.emulator.record = True
    again = world.send(second, unknown=True)
    assert again.kind == delivery.ACKED
    same_as_converter(world, second)
    assert len(world.ours()) == 7
    if method == "POST":  # the lost POST had created them all: nothing is posted again
        assert world.emulator.recorded("POST", r"/annotations$") == []


def test_a_crash_between_annotations_and_marker_is_not_adopted_as_complete(world):
    upload = labelled()
    world.emulator.faults.next("503", path=r"/items/", method="PATCH")
    with pytest.raises(TransientError):
        world.target.deliver(upload)
    # The item carries this version but its marker says the annotations were not confirmed.
    assert world.item()["metadata"]["user"][MARKER]["annotations_sha256"] == "pending"
    found = world.target.lookup(upload)
    assert found is not None and found.extra["version"] is None
    outcome = world.send(upload, unknown=True)
    assert outcome.kind == delivery.ACKED and not outcome.adopted
    same_as_converter(world, upload)


def test_first_delivery_lost_upload_reply_then_blind_resend(world):
    upload = labelled()
    world.emulator.faults.next("lost_reply", path=r"/items$")
    with pytest.raises(TransientError):
        world.target.deliver(upload)
    world.target.deliver(upload)  # mode=skip gets the item back; its marker is pending
    same_as_converter(world, upload)


# -- what cannot be sent ---------------------------------------------------------------------------
def test_keypoints_are_not_sent_and_nothing_fails(world):
    upload = labelled(labels=[*LABELS, {"type": "keypoints", "label": "person", "points": [{"x": 5, "y": 5}]}])
    receipt = world.target.deliver(upload)
    assert "person" not in {a["label"] for a in world.ours()} and len(world.ours()) == 7
    assert receipt.extra["version"] == upload.version and "not_sent" not in receipt.extra  # core reports keypoints


def test_refused_annotations_are_reported_and_sent_with_the_next_attempt(world):
    world.emulator.refuse_annotations = "annotation limit reached for this item"
    upload = labelled()
    receipt = world.target.deliver(upload)
    assert receipt.extra["version"] == upload.version  # the image and metadata went
    assert "annotation limit reached" in "; ".join(receipt.extra["not_sent"])
    assert receipt.extra["annotations_sha256"] == "incomplete" and world.ours() == []
    assert world.target.lookup(upload).extra["version"] is None  # a recovery would try again
    # syncd retry --incomplete (or the next change) delivers the same version again.
    receipt = world.target.deliver(replace(upload, previous=receipt))
    assert "not_sent" not in receipt.extra
    same_as_converter(world, upload)


def test_a_key_that_may_not_edit_the_ontology_still_sends_annotations(world):
    world.emulator.ontology_readonly = True
    receipt = world.target.deliver(labelled())
    assert any("ontology" in n and "403" in n for n in receipt.extra["not_sent"])
    assert len(world.ours()) == 7 and world.colours() == {}
    assert world.token not in json.dumps(receipt.extra)


def test_transient_and_auth_errors_on_annotations(world):
    world.emulator.faults.next("503", path=r"/annotations$")
    with pytest.raises(TransientError):
        world.target.deliver(labelled())
    world.emulator.faults.retry_after = 9
    world.emulator.faults.next("429", path=r"/query$")
    with pytest.raises(TransientError) as caught:
        world.target.deliver(labelled())
    assert caught.value.retry_after == 9
    world.target.deliver(labelled())
    first = world.target.deliver(labelled())
    world.emulator.revoke(world.token)
    with pytest.raises(FatalTargetError) as caught:
        world.target.deliver(labelled(labels=LABELS[:1], previous=first))
    assert world.token not in str(caught.value)


# -- volume ----------------------------------------------------------------------------------------
def test_many_annotations_go_in_batches_and_are_listed_page_by_page(world, monkeypatch):
    monkeypatch.setattr(dataloop_annotations, "PAGE", 40)
    points = [{"type": "point", "label": "p", "x": i % 32, "y": i % 24} for i in range(150)]
    world.emulator.record = True
    first = world.target.deliver(make_upload("cam1/f1", labels=points))
    assert [len(e["json"]) for e in world.emulator.recorded("POST", r"/annotations$")] == [100, 50]
    world.emulator.journal.clear()
    second = make_upload("cam1/f1", labels=points[:-1], previous=first)
    world.target.deliver(second)
    assert len(world.ours()) == 149
    queries = [e["json"] for e in world.emulator.recorded("POST", r"/query$") if e["json"]["resource"] == "annotations"]
    assert len(queries) == 4  # 150 over pages of 40, keyset paging on the id
    assert {"id": {"$gt": world.ours()[39]["id"]}} in queries[1]["filter"]["$and"]
    assert world.emulator.recorded("POST", r"/annotations$") == []  # the removed point was only deleted
    assert len(world.emulator.recorded("DELETE", r"/annotations/")) == 1


def test_concurrent_deliveries_share_the_ontology_and_keep_their_own_annotations(world):
    uploads = [labelled(f"cam{i % 2}/f{i}", labels=LABELS[: 1 + i % len(LABELS)], mask=i % 2 == 0) for i in range(8)]
    errors: list[BaseException] = []

    def work(chunk):
        try:
            for upload in chunk:
                world.target.deliver(upload)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(uploads[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for upload in uploads:
        same_as_converter(world, upload, f"/{upload.key}.png")
    tags = [r["value"]["tag"] for r in world.ontology["roots"]]
    assert sorted(tags) == sorted(set(tags)) == sorted({"daytime", "car", "nose", "roof", "lane", "road", "sky"})
