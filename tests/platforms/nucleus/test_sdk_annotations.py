"""Oracle test, on the wire: the official ``scale-nucleus`` SDK and the syncd target annotate
the same item in two datasets of one emulator; requests, stored annotations and masks must
be the same. The SDK also reads the target's annotations back (refloc) and deletes with
``Dataset.delete_annotations``, the route the target uses to remove stale annotations.

As in test_sdk.py, the SDK side runs in ``.venv-sdk-nucleus`` (this file as a
script); it builds the SDK's own annotation objects from syncd's normalised labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_sdk(endpoint: str, key: str, spec_path: str) -> dict:
    """The SDK side (runs in the subprocess)."""
    import nucleus.async_job
    from nucleus import (
        BoxAnnotation,
        CategoryAnnotation,
        Keypoint,
        KeypointsAnnotation,
        LineAnnotation,
        NucleusClient,
        Point,
        PolygonAnnotation,
        Segment,
        SegmentationAnnotation,
    )

    nucleus.async_job.JOB_POLLING_INTERVAL = 0.01
    spec = json.loads(Path(spec_path).read_text())
    ref, objects = spec["reference_id"], []
    for item in spec["labels"]:
        label, kind, aid, meta = item["label"], item["type"], item["annotation_id"], item["attributes"]
        if kind == "classification":
            objects.append(CategoryAnnotation(label=label, reference_id=ref, taxonomy_name="syncd", metadata=meta))
        elif kind == "box":
            objects.append(BoxAnnotation(label=label, x=item["x"], y=item["y"], width=item["width"],
                                         height=item["height"], reference_id=ref, annotation_id=aid, metadata=meta))
        elif kind in ("polygon", "polyline"):
            cls = PolygonAnnotation if kind == "polygon" else LineAnnotation
            objects.append(cls(label=label, vertices=[Point(x, y) for x, y in item["points"]], reference_id=ref,
                               annotation_id=aid, metadata=meta))
        elif kind == "point":
            objects.append(KeypointsAnnotation(label=label, keypoints=[Keypoint(item["x"], item["y"])], names=[label],
                                               skeleton=[], reference_id=ref, annotation_id=aid, metadata=meta))
        elif kind == "keypoints":
            points = item["points"]
            objects.append(KeypointsAnnotation(
                label=label, keypoints=[Keypoint(p["x"], p["y"], p["visible"]) for p in points],
                names=[p["name"] if p["name"] is not None else str(i) for i, p in enumerate(points)],
                skeleton=[list(pair) for pair in item["skeleton"]], reference_id=ref, annotation_id=aid,
                metadata=meta))
    seg = spec["segmentation"]
    objects.append(SegmentationAnnotation(mask_url=spec["mask_path"], reference_id=ref,
                                          annotation_id=seg["annotation_id"],
                                          annotations=[Segment(label=s["label"], index=s["index"])
                                                       for s in seg["annotations"]]))
    client = NucleusClient(api_key=key, endpoint=endpoint)
    ours, theirs = client.get_dataset(spec["ours"]), client.get_dataset(spec["theirs"])
    theirs.add_taxonomy("syncd", "category", spec["classes"], update=True)
    reply = theirs.annotate(objects, update=True)

    def read(dataset):
        found = dataset.refloc(ref)["annotations"]
        return {kind: sorted((a.to_payload() for a in rows), key=json.dumps) for kind, rows in found.items()}

    read_ours, read_theirs = read(ours), read(theirs)
    theirs.delete_annotations([ref]).sleep_until_complete(verbose_std_out=False)
    return {"reply": reply, "ours": read_ours, "theirs": read_theirs, "after_delete": read(theirs)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_sdk(*sys.argv[1:4])))
    sys.exit(0)


import subprocess  # noqa: E402

from syncd.labels.support import labels_of  # noqa: E402
from syncd.targets.nucleus.payload import to_nucleus  # noqa: E402
from syncd.targets.nucleus.target import NucleusSettings, NucleusTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.emulators.nucleus import NucleusEmulator  # noqa: E402
from tests.helpers import make_upload  # noqa: E402
from tests.platforms.nucleus.test_payload import CLASS_MAP, LABELS, mask_png  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-nucleus" / "bin" / "python"
KEY = "cam 1/f#1"  # a reference_id that needs quoting in URLs and file names


def without_mask_url(value):
    """Annotation payloads with the mask's URL left out (the SDK names its local file)."""
    if isinstance(value, dict):
        return {k: without_mask_url(v) for k, v in value.items() if k != "mask_url"}
    if isinstance(value, list):
        return [without_mask_url(v) for v in value]
    return value


def test_sdk_and_target_send_and_store_the_same_annotations(tmp_path):
    assert SDK_PYTHON.exists(), (f"{SDK_PYTHON} is missing: python3 -m venv .venv-sdk-nucleus && "
                                 ".venv-sdk-nucleus/bin/pip install scale-nucleus==0.22.3 (tests/install.sh does it)")
    with NucleusEmulator(job_script=("Running",)) as emulator:
        emulator.record = True
        ours, theirs = emulator.add_dataset("ours"), emulator.add_dataset("theirs")
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        targets = {ds: NucleusTarget("n", NucleusSettings(dataset_id=ds, base_url=emulator.endpoint, timeout=5,
                                                          job_poll_interval=0.01), env=env) for ds in (ours, theirs)}
        upload = make_upload(KEY, labels=LABELS[:6], mask=mask_png(), class_map=CLASS_MAP)
        receipt = targets[ours].deliver(upload)
        targets[theirs].deliver(make_upload(KEY))  # the same item, no labels: the SDK annotates it
        converted = to_nucleus(upload)
        mask_path = tmp_path / "cam1-f1.mask.png"
        mask_path.write_bytes(converted.mask_png)
        kinds = ["category", "box", "polygon", "line", "keypoints", "keypoints"]
        labels = [dict(label, annotation_id=f"syncd:{KEY}:{i}:{kind}")
                  for i, (label, kind) in enumerate(zip(labels_of(upload), kinds))]
        spec = {"reference_id": KEY, "labels": labels, "segmentation": converted.segmentation,
                "mask_path": str(mask_path), "classes": ["daytime"], "ours": ours, "theirs": theirs}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        result = subprocess.run([str(SDK_PYTHON), __file__, emulator.endpoint, emulator.api_key,
                                 str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        sdk = json.loads([ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])

        # The requests: the mask as multipart first, then one JSON request with the rest.
        journal = {ds: [e for e in emulator.annotation_journal if e["dataset_id"] == ds] for ds in (ours, theirs)}
        (our_mask, our_json), (their_mask, their_json) = journal[ours], journal[theirs][:2]
        assert our_json["body"] == their_json["body"] and not our_json["multipart"]
        assert our_mask["multipart"] and their_mask["multipart"]
        assert without_mask_url(our_mask["body"]) == without_mask_url(their_mask["body"])
        assert [(n, t) for n, _, t in our_mask["parts"]] == [(n, t) for n, _, t in their_mask["parts"]] == [
            ("serialized_request", "application/json"), ("mask", "image/png")]
        # Each mask part is named after its segmentation's mask_url (percent-decoded).
        assert our_mask["parts"][1][1] == our_mask["body"]["segmentations"][0]["mask_url"] == f"{KEY}.mask.png"
        assert their_mask["parts"][1][1] == str(mask_path)
        assert list(our_mask["masks"].values()) == list(their_mask["masks"].values()) == [converted.mask_png]
        assert sdk["reply"]["annotations_processed"] == 7 and not sdk["reply"].get("errors")

        # What the server held, as the SDK reads it back (refloc, before its deletion): the same.
        assert without_mask_url(sdk["ours"]) == without_mask_url(sdk["theirs"])
        assert emulator.mask(ours, KEY) == converted.mask_png
        assert emulator.taxonomies(ours) == emulator.taxonomies(theirs) == {"syncd": ["daytime"]}
        assert sorted(sdk["ours"]) == ["box", "category", "keypoints", "line", "polygon", "segmentation"]

        # Deleting: Dataset.delete_annotations emptied the SDK's item; the target's deletion
        # (a label removed) sends the same request.
        assert sdk["after_delete"] == {} and emulator.annotations(theirs, KEY) == {}
        targets[ours].deliver(make_upload(KEY, labels=LABELS[1:2], previous=receipt))
        deletes = [e["body"] for e in emulator.annotation_journal if "delete" in e]
        assert len(deletes) == 2 and deletes[0] == deletes[1] == {"keep_history": True, "reference_ids": [KEY]}
        assert [a["annotation_id"] for a in emulator.annotations(ours, KEY)["box"]] == [f"syncd:{KEY}:0:box"]
        assert list(emulator.annotations(ours, KEY)) == ["box"]
        for target in targets.values():
            target.close()
