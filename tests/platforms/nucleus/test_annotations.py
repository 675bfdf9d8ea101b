"""The Nucleus target's labels and masks against the emulator: every label type and a mask
round-trip, changes replace (never add), unchanged labels are not re-sent, lost replies and
half-done writes never duplicate or leave anything behind, refusals are reported without
holding the image back, and errors are classified as for the append."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from syncd.errors import FatalTargetError, TransientError
from syncd.targets.base import Receipt
from syncd.targets.nucleus.annotations import plan
from syncd.targets.nucleus.payload import to_nucleus
from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget, fresh_items
from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import make_upload
from tests.platforms.nucleus.harness import make_target
from tests.platforms.nucleus.test_payload import CLASS_MAP, LABELS, mask_png

KEY = "cam1/f1"
ALL = LABELS[:6]  # one of each type (LABELS[6] is a second classification)


@pytest.fixture
def emulator():
    with NucleusEmulator(job_script=("Running",)) as emulator:
        emulator.record = True
        yield emulator



def upload(labels=(), *, mask=None, previous=None, metadata=None, key=KEY):
    return make_upload(key, labels=list(labels), mask=mask, class_map=CLASS_MAP if mask else None,
                       previous=previous, metadata=metadata)


def remote(emulator, dataset_id, key=KEY) -> dict[str, list]:
    """type -> [(annotation_id or label, geometry/label)] as the item holds them."""
    out = {}
    for kind, rows in emulator.annotations(dataset_id, key).items():
        if kind == "segmentation":
            out[kind] = [[(s["label"], s["index"]) for s in row["annotations"]] for row in rows]
        elif kind == "category":
            out[kind] = [(row["label"], row["taxonomy_name"], row["metadata"]) for row in rows]
        else:
            out[kind] = sorted((row["annotation_id"], row["label"]) for row in rows)
    return out


def stored_as_converted(emulator, dataset_id, up) -> None:
    """The item holds exactly the converter's payloads (and mask), once each."""
    converted = to_nucleus(up)
    held = emulator.annotations(dataset_id, up.key)
    flat = [a for kind, rows in held.items() if kind != "segmentation" for a in rows]
    key = lambda a: (a["type"], a.get("annotation_id") or "")  # noqa: E731
    assert sorted(flat, key=key) == sorted(converted.annotations, key=key)
    if converted.segmentation is None:
        assert "segmentation" not in held
    else:
        [segmentation] = held["segmentation"]
        assert {k: v for k, v in segmentation.items() if k != "mask_url"} == {
            k: v for k, v in converted.segmentation.items() if k != "mask_url"}
        assert emulator.mask(dataset_id, up.key) == converted.mask_png


def annotation_requests(emulator) -> list[str]:
    return [f"{m} {p.rsplit('/', 1)[-1]}" for m, p in emulator.requests
            if re.search(r"/(annotate|add_taxonomy)$|/annotation/|/refloc/", p)]


# -- round trip -------------------------------------------------------------------------------
def test_every_label_type_and_the_mask_arrive_as_converted(target, emulator, dataset_id):
    up = upload(ALL, mask=mask_png())
    receipt = target.deliver(up)
    stored_as_converted(emulator, dataset_id, up)
    assert sorted(emulator.annotations(dataset_id, KEY)) == ["box", "category", "keypoints", "line", "polygon",
                                                             "segmentation"]
    assert emulator.taxonomies(dataset_id) == {"syncd": ["daytime"]}
    with Image.open(io.BytesIO(emulator.mask(dataset_id, KEY))) as image:
        index = np.asarray(image)
    assert image.mode == "L" and (index[:8] == 3).all() and (index[16:, :16] == 1).all()  # sky 3, road 1
    assert receipt.extra["annotations_sha256"] and "not_sent" not in receipt.extra
    # The append created the item (its job says new_items: 1): no probe, no deletion; the mask, then the rest.
    assert annotation_requests(emulator) == ["POST add_taxonomy", "POST annotate", "POST annotate"]
    mask_call, json_call = emulator.annotation_journal
    assert mask_call["multipart"] and list(mask_call["masks"]) == ["cam1/f1.mask.png"]
    assert mask_call["body"]["update"] is True and json_call["body"]["update"] is True


def test_an_item_without_labels_costs_no_annotation_request(target, emulator, dataset_id):
    receipt = target.deliver(upload())
    assert annotation_requests(emulator) == [] and receipt.extra["annotations_sha256"] == "empty"
    target.deliver(upload(metadata={"v": 2}, previous=receipt))
    assert annotation_requests(emulator) == []


def test_annotations_made_in_nucleus_on_items_syncd_never_labelled_are_left_alone(target, emulator, dataset_id):
    receipt = target.deliver(upload())
    other = {"label": "tree", "type": "box", "geometry": {"x": 0, "y": 0, "width": 1, "height": 1},
             "reference_id": KEY, "annotation_id": "made-in-nucleus"}
    with emulator.lock:
        emulator.gt.annotate(dataset_id, [other], True)
    target.deliver(upload(metadata={"v": 2}, previous=receipt))
    target.deliver(upload(metadata={"v": 3}, previous=Receipt(KEY, {})))  # a receipt of syncd before labels
    target.deliver(upload(metadata={"v": 4}))  # no receipt (a lost state directory): probed, none of syncd's
    assert remote(emulator, dataset_id) == {"box": [("made-in-nucleus", "tree")]}
    assert annotation_requests(emulator) == ["GET cam1%2Ff1"]


def test_a_first_delivery_without_labels_removes_what_an_unacknowledged_attempt_wrote(target, emulator, dataset_id):
    """Killed after the annotations but before the ack, labels removed while down: the next
    delivery has no previous receipt and nothing to send, yet syncd's annotations go."""
    target.deliver(upload(ALL[:3], mask=mask_png()))  # the receipt is lost with the crash
    assert remote(emulator, dataset_id)
    target.deliver(upload(metadata={"v": 2}))
    assert emulator.annotations(dataset_id, KEY) == {} and emulator.mask(dataset_id, KEY) is None
    # An item created by this append holds nothing: no probe at all.
    before = len(annotation_requests(emulator))
    target.deliver(upload(key="cam1/new"))
    assert len(annotation_requests(emulator)) == before


def test_fresh_items_reads_the_counts():
    assert fresh_items({"new_items": 1, "updated_items": 0, "ignored_items": 0, "upload_errors": 0}, 1)
    assert fresh_items({"new_items": 9, "updated_items": 0, "ignored_items": 0, "upload_errors": 1}, 9)
    assert not fresh_items({"new_items": 0, "updated_items": 1}, 1)
    assert not fresh_items({"new_items": 8, "updated_items": 1}, 9)  # which one was updated is unknown
    assert not fresh_items("Completed", 1) and not fresh_items(None, 1)  # unknown shapes: not known to be new


# -- updates ----------------------------------------------------------------------------------
def test_metadata_only_change_does_not_resend_annotations(target, emulator, dataset_id):
    first = target.deliver(upload(ALL, mask=mask_png()))
    before = len(emulator.annotation_journal)
    second = target.deliver(upload(ALL, mask=mask_png(), metadata={"site": "B"}, previous=first))
    assert len(emulator.annotation_journal) == before
    assert second.extra["annotations_sha256"] == first.extra["annotations_sha256"]
    assert emulator.item(dataset_id, KEY)["metadata"] == {"site": "B"}


def test_edits_overwrite_in_place_without_deleting(target, emulator, dataset_id):
    first = target.deliver(upload(ALL[1:3]))
    moved = [dict(ALL[1], x=5), ALL[2], ALL[3]]  # box moved, a line added
    target.deliver(upload(moved, mask=mask_png(), previous=first))
    stored_as_converted(emulator, dataset_id, upload(moved, mask=mask_png()))
    assert not any("delete" in e for e in emulator.annotation_journal)


def test_a_removed_label_mask_or_category_disappears(target, emulator, dataset_id):
    receipt = target.deliver(upload(ALL, mask=mask_png()))
    steps = [ALL[1:], ALL[2:4], [dict(ALL[0], label="night")] + ALL[2:4], [ALL[0]], []]
    masks = [mask_png(), None, mask_png(), None, None]
    for labels, mask in zip(steps, masks):
        up = upload(labels, mask=mask, previous=receipt)
        receipt = target.deliver(up)
        stored_as_converted(emulator, dataset_id, up)
    assert emulator.annotations(dataset_id, KEY) == {} and emulator.mask(dataset_id, KEY) is None
    assert receipt.extra["annotations_sha256"] == "empty"
    assert emulator.taxonomies(dataset_id) == {"syncd": ["daytime", "night"]}  # taxonomies only grow


def test_labels_moved_down_one_position_leave_nothing_behind(target, emulator, dataset_id):
    first = target.deliver(upload([ALL[1], ALL[2], ALL[3]]))
    up = upload([ALL[2], ALL[3]], previous=first)  # the box at position 0 removed: ids shift
    target.deliver(up)
    assert remote(emulator, dataset_id) == {"polygon": [("syncd:cam1/f1:0:polygon", "roof")],
                                            "line": [("syncd:cam1/f1:1:line", "lane")]}


# -- lost replies, half-done writes -----------------------------------------------------------
@pytest.mark.parametrize("path", [r"/annotate$", r"/add_taxonomy$", r"/annotation/", r"/refloc/"])
def test_lost_reply_then_retry_never_duplicates(emulator, dataset_id, path):
    target = make_target(emulator, dataset_id)
    first = target.deliver(upload(ALL[2:5] + [ALL[0]]))
    changed = [dict(ALL[0], label="night"), ALL[1], ALL[2]]  # category changed: a deletion is needed
    emulator.faults.next("lost_reply", path=path)
    with pytest.raises(TransientError) as caught:
        target.deliver(upload(changed, mask=mask_png(), previous=first))
    assert caught.value.outcome_unknown
    target.deliver(upload(changed, mask=mask_png(), previous=first))  # the daemon's retry: same previous
    stored_as_converted(emulator, dataset_id, upload(changed, mask=mask_png()))
    assert [k for k, _, _ in emulator.faults.injected] == ["lost_reply"]


@pytest.mark.parametrize("fault, path", [("503", r"/annotate$"), ("reset", r"/refloc/"),
                                         ("lost_reply", r"/add_taxonomy$")])
def test_annotations_failing_after_the_append_are_retried_without_appending_again(target, emulator, dataset_id,
                                                                                 fault, path):
    """The job wrote the item, its labels and mask failed transiently: the next attempt at
    that version probes and writes them, without a new append and job (with faults on one
    request in five, labelled items went round append, job, labels three or four times)."""
    first = target.deliver(upload(ALL[2:4]))
    changed = upload(ALL, mask=mask_png(), previous=first, metadata={"v": 2})
    emulator.faults.next(fault, path=path)
    with pytest.raises(TransientError):
        target.deliver(changed)
    assert len(emulator.journal) == 2
    receipt = target.deliver(changed)
    assert len(emulator.journal) == 2  # not appended again
    stored_as_converted(emulator, dataset_id, changed)
    assert receipt.extra["version"] == changed.version and receipt.extra["annotations_sha256"]
    newer = upload(ALL, mask=mask_png(), previous=first, metadata={"v": 3})
    target.deliver(newer)  # another version is appended, as always
    assert len(emulator.journal) == 3 and emulator.item(dataset_id, KEY)["metadata"] == {"v": 3}


def test_an_item_gone_before_its_annotations_are_retried_is_appended_again(target, emulator, dataset_id):
    emulator.faults.next("503", path=r"/annotate$")
    with pytest.raises(TransientError):
        target.deliver(upload(ALL[2:4]))
    with emulator.lock:  # deleted in Nucleus meanwhile
        emulator.state.items[dataset_id].pop(KEY)
    with pytest.raises(TransientError, match="does not have the item"):
        target.deliver(upload(ALL[2:4]))
    target.deliver(upload(ALL[2:4]))
    assert len(emulator.journal) == 2  # appended again after the probe found it missing
    stored_as_converted(emulator, dataset_id, upload(ALL[2:4]))


def test_lost_reply_on_a_first_delivery_then_retry(target, emulator, dataset_id):
    emulator.faults.next("lost_reply", path=r"/annotate$", method="POST")
    with pytest.raises(TransientError):
        target.deliver(upload(ALL))
    target.deliver(upload(ALL))  # previous is still None
    stored_as_converted(emulator, dataset_id, upload(ALL))
    assert len(emulator.annotations(dataset_id, KEY)["category"]) == 1
    # The retry found the category in place and did not send it again (Nucleus gives a
    # category no id, so a second send might add a second one).
    sent = [a["type"] for e in emulator.annotation_journal for a in e.get("body", {}).get("annotations", [])]
    assert sent.count("category") == 1 and sent.count("box") == 2


def test_a_crash_mid_write_then_labels_reverted_is_repaired(emulator, dataset_id):
    """v2's write dies after the deletion; v3 (labels back to v1's, same previous) must not
    be skipped as "unchanged": this process knows the write was left half done."""
    target = make_target(emulator, dataset_id)
    v1 = upload(ALL[1:4])
    first = target.deliver(v1)
    emulator.faults.next("reset", path=r"/annotate$")
    with pytest.raises(TransientError):
        target.deliver(upload(ALL[1:2], previous=first))
    assert remote(emulator, dataset_id) == {}  # deleted, not yet written
    target.deliver(upload(ALL[1:4], previous=first))
    stored_as_converted(emulator, dataset_id, v1)


def test_a_deletion_job_still_pending_is_waited_for_before_the_item_is_touched_again(emulator, dataset_id):
    """A deletion job syncd stopped waiting for could run after the next writes and wipe
    them: the item is not touched again until it has ended."""
    target = make_target(emulator, dataset_id, job_timeout=0.2, job_poll_interval=0.05)
    first = target.deliver(upload(ALL[1:3]))
    with emulator.lock:
        # The append succeeds, the deletion hangs.
        emulator.state.forced[:] = [("Completed", "", True, []), ("Running", "", False, [])]
    with pytest.raises(TransientError, match="deleting old annotations.*still Running"):
        target.deliver(upload(ALL[1:2], previous=first))
    appends = len(emulator.journal)
    with pytest.raises(TransientError, match="earlier upload"):
        target.deliver(upload(ALL[1:2], previous=first))
    assert len(emulator.journal) == appends  # nothing sent while the deletion is pending
    with emulator.lock:
        deletion = emulator.jobs()[-1]
        assert deletion.job_type == "annotationDeletion"  # the SDK's CustomerJobTypes name
        deletion.forced = None  # the server catches up
    target.deliver(upload(ALL[1:2], previous=first))
    assert deletion.status == "Completed"
    assert remote(emulator, dataset_id) == {"box": [("syncd:cam1/f1:0:box", "car")]}


# -- refusals and what cannot be represented ---------------------------------------------------
def test_a_second_classification_is_reported_and_the_item_delivered(target, emulator, dataset_id):
    up = upload(LABELS)
    assert NucleusTarget.unsupported_labels(up.labels) == ["multiple classifications"]
    target.deliver(up)
    assert remote(emulator, dataset_id)["category"] == [("daytime", "syncd", {"source": "cam"})]
    assert emulator.item(dataset_id, KEY) is not None


def test_refused_annotations_go_to_not_sent_and_are_tried_again_with_the_next_change(target, emulator, dataset_id):
    emulator.gt.reject["mask"] = "Mask could not be processed"
    receipt = target.deliver(upload(ALL[1:2], mask=mask_png()))
    assert receipt.extra["annotations_sha256"] is None
    assert receipt.extra["not_sent"] == ["sending the mask: Nucleus refused: Mask could not be processed"]
    assert emulator.item(dataset_id, KEY) is not None and remote(emulator, dataset_id) == {
        "box": [("syncd:cam1/f1:0:box", "car")]}
    del emulator.gt.reject["mask"]
    # The next delivery (even a metadata-only one) tries again, and succeeds.
    receipt = target.deliver(upload(ALL[1:2], mask=mask_png(), metadata={"v": 2}, previous=receipt))
    assert receipt.extra["annotations_sha256"] and "not_sent" not in receipt.extra
    stored_as_converted(emulator, dataset_id, upload(ALL[1:2], mask=mask_png()))


def test_a_refused_taxonomy_drops_only_the_category(target, emulator, dataset_id):
    emulator.faults.next("500", path=r"/add_taxonomy$")
    with pytest.raises(TransientError):
        target.deliver(upload(ALL[:2]))
    emulator.gt.reject["taxonomy"] = "taxonomy syncd is locked"
    receipt = target.deliver(upload(ALL[:2]))
    assert len(receipt.extra["not_sent"]) == 1 and "taxonomy syncd is locked" in receipt.extra["not_sent"][0]
    assert remote(emulator, dataset_id) == {"box": [("syncd:cam1/f1:1:box", "car")]}


def test_a_taxonomy_deleted_in_nucleus_is_added_again(target, emulator, dataset_id):
    receipt = target.deliver(upload([ALL[0]]))
    with emulator.lock:
        emulator.gt.taxonomies[dataset_id].clear()  # deleted in Nucleus (its category with it)
        emulator.gt.rows.clear()
    changed = [dict(ALL[0], attributes={"source": "lamp"})]  # the same class: this process thinks it is there
    receipt = target.deliver(upload(changed, previous=receipt))
    assert "Taxonomy 'syncd' does not exist" in receipt.extra["not_sent"][0]
    target.deliver(upload(changed, previous=receipt))
    assert remote(emulator, dataset_id) == {"category": [("daytime", "syncd", {"source": "lamp"})]}


def test_bad_credentials_while_annotating_are_fatal_and_the_key_stays_secret(target, emulator, dataset_id):
    """The key is revoked between the append and the annotations (driven at the hook, since
    the append would otherwise meet the 401 first)."""
    first = target.deliver(upload(ALL[1:2]))
    up = upload(ALL[1:3], previous=first)
    todo = plan(up, target.settings.taxonomy_name)
    assert todo.converted is not None
    emulator.revoke(emulator.api_key)
    with pytest.raises(FatalTargetError, match="401") as caught:
        target._deliver_annotations(up, todo, "nuc: item 'cam1/f1'")
    assert emulator.api_key not in str(caught.value)


def test_429_and_5xx_on_annotate_are_transient(target, emulator, dataset_id):
    emulator.faults.retry_after = 3
    emulator.faults.next("429", path=r"/annotate$")
    with pytest.raises(TransientError) as caught:
        target.deliver(upload(ALL[1:2]))
    assert caught.value.retry_after == 3
    emulator.faults.next("503", path=r"/annotate$")
    with pytest.raises(TransientError):
        target.deliver(upload(ALL[1:2]))
    target.deliver(upload(ALL[1:2]))
    assert remote(emulator, dataset_id) == {"box": [("syncd:cam1/f1:0:box", "car")]}


def test_taxonomy_name_setting(emulator, dataset_id):
    target = make_target(emulator, dataset_id, taxonomy_name="weather")
    target.deliver(upload([ALL[0]]))
    assert remote(emulator, dataset_id)["category"] == [("daytime", "weather", {"source": "cam"})]
    with pytest.raises(ValueError):
        NucleusSettings(dataset_id="ds_x", taxonomy_name="")
