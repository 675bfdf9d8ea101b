"""The Edge Impulse project target's ``deliver_batch`` against the emulator: items whose
request headers would be identical share one ingestion request; everything else goes alone;
results stay per item (a refused file, a lost reply, a refused request, a throttle)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from syncd.errors import FatalTargetError, PermanentError, SendAlone, TransientError
from syncd.targets.base import Receipt
from syncd.targets.edgeimpulse.payload import (
    IMAGE_KEY,
    VERSION_KEY,
    sample_name,
    user_metadata,
)
from syncd.targets.edgeimpulse.target import EdgeImpulseSettings, EdgeImpulseTarget
from tests.emulators.edgeimpulse import EdgeImpulseEmulator
from tests.helpers import make_upload

INGEST = r"^/api/[^/]+/files$"
BOX = {"type": "box", "label": "car", "x": 1, "y": 2, "width": 5, "height": 4}


@pytest.fixture
def world():
    with EdgeImpulseEmulator() as emulator:
        emulator.record = True
        project = emulator.add_project("Batches", labeling_method="object_detection")
        key = emulator.make_key(project["id"])
        targets = []

        def target(**overrides) -> EdgeImpulseTarget:
            fields = {"project_id": project["id"], "ingestion_url": emulator.url, "api_url": f"{emulator.url}/v1",
                      "timeout": 5, "label_source": "folder"}
            made = EdgeImpulseTarget("ei", EdgeImpulseSettings(**{**fields, **overrides}), env={"EI_API_KEY": key})
            targets.append(made)
            return made

        def samples(key: str) -> list[dict]:
            return [s for s in emulator.samples_in(project["id"]) if s["filename"] == sample_name(key)]

        yield emulator, target, samples
        for made in targets:
            made.close()


def uploads_posted(emulator) -> list[dict]:
    return emulator.recorded("POST", INGEST)


def test_items_with_the_same_headers_share_one_request(world):
    emulator, target, samples = world
    batch = [make_upload(f"cats/{i}", seed=i, labels=[BOX] if i % 2 else []) for i in range(4)]
    results = target().deliver_batch(batch)
    (request,) = uploads_posted(emulator)
    assert [p["filename"] for p in request["parts"]] == [f"cats__{i}.png" for i in range(4)] + ["bounding_boxes.labels"]
    assert request["headers"]["x-label"] == "cats" and json.loads(request["headers"]["x-metadata"]) == {}
    assert "x-bounding-boxes" not in request["headers"]  # per-file boxes travel in the .labels part
    for i, (upload, receipt) in enumerate(zip(batch, results)):
        (sample,) = samples(upload.key)
        assert isinstance(receipt, Receipt) and receipt.remote_id == str(sample["id"])
        assert receipt.extra["version"] == upload.version and receipt.extra["image_sha256"] == upload.image_sha256
        assert emulator.sample_data[sample["id"]] == upload.image and sample["label"] == "cats"
        assert sample["boundingBoxes"] == ([{k: BOX[k] for k in ("label", "x", "y", "width", "height")}]
                                           if i % 2 else [])
        assert sample["metadata"] == {}  # the per-item markers cannot share a header
    # Once per process, one sample was read back to see that Edge Impulse's hash is the file's.
    assert len(emulator.recorded("GET", r"/raw-data/\d+$")) == 1
    target_again = target()
    target_again.deliver_batch([make_upload(f"cats/{i}", seed=i) for i in range(10, 12)])
    assert len(emulator.recorded("GET", r"/raw-data/\d+$")) == 2  # a new process checks again


def test_items_that_differ_go_in_separate_requests_of_the_same_call(world):
    emulator, target, samples = world
    ei = target()
    first = ei.deliver(make_upload("dogs/old", seed=50))
    batch = [make_upload("cats/a", seed=1), make_upload("dogs/b", seed=2), make_upload("cats/c", seed=3),
             make_upload("cats/d", seed=4, metadata={"site": "B"}),  # other metadata: alone
             make_upload("dogs/old", seed=50, metadata={"n": "2"}, previous=first)]  # an update: alone
    emulator.journal.clear()
    results = ei.deliver_batch(batch)
    assert all(isinstance(r, Receipt) for r in results), results
    requests = uploads_posted(emulator)
    assert sorted(len([p for p in r["parts"] if p["filename"].endswith(".png")]) for r in requests) == [1, 1, 2]
    assert results[4].remote_id == first.remote_id  # updated in place through Studio
    assert user_metadata(samples("dogs/old")[0]["metadata"]) == {"n": "2"}
    for upload in batch[:4]:
        (sample,) = samples(upload.key)
        assert emulator.sample_data[sample["id"]] == upload.image
    # Alone, an item carries its markers as before.
    assert samples("dogs/b")[0]["metadata"][VERSION_KEY] == batch[1].version


def test_one_refused_file_fails_alone_and_a_resent_one_is_adopted(world):
    emulator, target, samples = world
    ei = target()
    earlier = make_upload("cats/again", seed=7)
    ei.deliver(earlier)  # then its receipt was lost: the re-send is refused as a duplicate
    broken = replace(make_upload("cats/broken", seed=8), image=b"\x89PNX not a png")
    batch = [make_upload("cats/ok", seed=9), broken, earlier]
    emulator.journal.clear()
    results = ei.deliver_batch(batch)
    assert isinstance(results[0], Receipt)
    assert isinstance(results[1], PermanentError) and "not a valid image" in str(results[1])
    assert isinstance(results[2], Receipt) and results[2].remote_id == str(samples("cats/again")[0]["id"])
    assert len(uploads_posted(emulator)) == 1 and samples("cats/broken") == []
    assert samples("cats/again")[0]["metadata"][IMAGE_KEY] == earlier.image_sha256  # adopted and updated


def test_a_lost_reply_makes_each_outcome_unknown_and_lookups_settle_each(world):
    emulator, target, samples = world
    ei = target()
    batch = [make_upload(f"cats/{i}", seed=i, metadata={"site": "A"}) for i in range(3)]
    emulator.faults.next("lost_reply", path=INGEST)
    results = ei.deliver_batch(batch)
    assert all(isinstance(r, TransientError) and r.outcome_unknown for r in results), results
    for upload in batch:  # what the daemon does for each: look up, then deliver with what it found
        found = ei.lookup(upload)
        assert found is not None and found.extra["image_sha256"] == upload.image_sha256
        assert found.extra["version"] is None  # no markers yet: not known complete
        receipt = ei.deliver(replace(upload, previous=found))
        (sample,) = samples(upload.key)
        assert receipt.remote_id == str(sample["id"]) and sample["metadata"][VERSION_KEY] == upload.version
        assert ei.lookup(upload).extra["version"] == upload.version
    assert len(uploads_posted(emulator)) == 1  # nothing was uploaded twice


def test_a_request_refused_as_a_whole_sends_each_alone(world):
    emulator, target, samples = world
    emulator.reply_next(INGEST, 400, {"success": False, "error": "Invalid request"})
    results = target().deliver_batch([make_upload(f"cats/{i}", seed=i) for i in range(3)])
    assert all(isinstance(r, SendAlone) and "Invalid request" in str(r) for r in results)
    assert samples("cats/0") == []


def test_a_throttle_or_a_pause_stops_the_rest_of_the_call(world):
    emulator, target, _ = world
    ei = target(workers=1)  # one request at a time: the others of the call have not started
    batch = [make_upload("cats/a", seed=1), make_upload("dogs/b", seed=2), make_upload("cows/c", seed=3)]
    emulator.faults.retry_after = 3
    emulator.faults.next("429", path=INGEST)
    results = ei.deliver_batch(batch)
    assert all(isinstance(r, TransientError) and r.retry_after == 3 and not r.outcome_unknown for r in results[1:])
    sent = [path for method, path in emulator.requests if method == "POST" and re.match(INGEST, path)]
    assert isinstance(results[0], TransientError) and results[0].throttled and len(sent) == 1
    (key,) = emulator.keys
    emulator.revoke(key)
    results = ei.deliver_batch(batch)
    assert all(isinstance(r, FatalTargetError) for r in results) and len(uploads_posted(emulator)) == 1


def test_a_platform_hash_that_is_not_the_files_turns_sharing_off(world):
    """If Edge Impulse's sha256Hash is not the SHA-256 of the file sent, a later lookup
    could not tell which image a marker-less sample holds: the shared samples get their
    markers through Studio at once, and later calls send each item alone."""
    emulator, target, samples = world
    emulator.hash_envelope = True
    ei = target()
    batch = [make_upload(f"cats/{i}", seed=i) for i in range(3)]
    results = ei.deliver_batch(batch)
    assert all(isinstance(r, Receipt) for r in results)
    for upload in batch:
        assert samples(upload.key)[0]["metadata"][VERSION_KEY] == upload.version
        assert ei.lookup(upload).extra["version"] == upload.version
    emulator.journal.clear()
    ei.deliver_batch([make_upload(f"cats/{i}", seed=i) for i in range(10, 13)])
    assert len(uploads_posted(emulator)) == 3


def test_independent_requests_of_a_call_go_side_by_side_within_workers(world):
    """Items that share nothing are separate requests: they go at once, up to ``workers``
    requests of the target at a time over every call together, never more."""
    emulator, target, samples = world
    emulator.ingest_seconds = 0.3
    ei = target(workers=4)
    results = ei.deliver_batch([make_upload(f"cam{i}/f", seed=i) for i in range(4)])  # four labels: four requests
    assert all(isinstance(r, Receipt) for r in results) and emulator.ingest_peak >= 2
    emulator.ingest_peak = 0
    ei = target(workers=2)
    calls = [[make_upload(f"c{n}{i}/f", seed=100 + 10 * n + i) for i in range(3)] for n in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(ei.deliver_batch, calls))
    assert all(isinstance(r, Receipt) for batch in outcomes for r in batch)
    assert emulator.ingest_peak == 2
    assert all(len(samples(upload.key)) == 1 for batch in calls for upload in batch)


def test_an_item_refused_before_sending_fails_alone(world):
    emulator, target, samples = world
    batch = [make_upload("cats/1", seed=1), make_upload("cats/2", seed=2, metadata={VERSION_KEY: "mine"}),
             make_upload("cats/3", seed=3)]
    results = target().deliver_batch(batch)
    assert isinstance(results[1], PermanentError) and VERSION_KEY in str(results[1])
    assert isinstance(results[0], Receipt) and isinstance(results[2], Receipt)
    assert samples("cats/2") == [] and len(uploads_posted(emulator)) == 1
