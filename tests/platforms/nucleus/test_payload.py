"""Nucleus payloads from labels and masks, compared with scale-nucleus' own ``to_payload()``.

The SDK lives in its own venv (``.venv-sdk-nucleus``, made by tests/install.sh); this file,
run as a script with that interpreter, builds the SDK's annotation objects from syncd's
normalised labels and prints their payloads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sdk_payloads(spec: dict) -> dict:
    """The SDK side (runs in the subprocess)."""
    from nucleus import (
        BoxAnnotation,
        CategoryAnnotation,
        Keypoint,
        KeypointsAnnotation,
        LineAnnotation,
        Point,
        PolygonAnnotation,
        Segment,
        SegmentationAnnotation,
    )
    from nucleus.payload_constructor import construct_taxonomy_payload

    ref, out = spec["reference_id"], []
    for item in spec["labels"]:
        label, kind, aid, meta = item["label"], item["type"], item["annotation_id"], item["attributes"]
        if kind == "classification":
            out.append(CategoryAnnotation(label=label, reference_id=ref, taxonomy_name=spec["taxonomy"],
                                          metadata=meta).to_payload())
        elif kind == "box":
            out.append(BoxAnnotation(label=label, x=item["x"], y=item["y"], width=item["width"], height=item["height"],
                                     reference_id=ref, annotation_id=aid, metadata=meta).to_payload())
        elif kind in ("polygon", "polyline"):
            cls = PolygonAnnotation if kind == "polygon" else LineAnnotation
            out.append(cls(label=label, vertices=[Point(x, y) for x, y in item["points"]], reference_id=ref,
                           annotation_id=aid, metadata=meta).to_payload())
        elif kind == "point":
            out.append(KeypointsAnnotation(label=label, keypoints=[Keypoint(item["x"], item["y"])], names=[label],
                                           skeleton=[], reference_id=ref, annotation_id=aid,
                                           metadata=meta).to_payload())
        elif kind == "keypoints":
            points = item["points"]
            out.append(KeypointsAnnotation(
                label=label, keypoints=[Keypoint(p["x"], p["y"], p["visible"]) for p in points],
                names=[p["name"] if p["name"] is not None else str(i) for i, p in enumerate(points)],
                skeleton=[list(pair) for pair in item["skeleton"]], reference_id=ref, annotation_id=aid,
                metadata=meta).to_payload())
    seg = spec["segmentation"]
    segmentation = SegmentationAnnotation(
        mask_url=seg["mask_url"], annotations=[Segment(label=s["label"], index=s["index"]) for s in seg["segments"]],
        reference_id=ref, annotation_id=seg["annotation_id"]).to_payload()
    taxonomy = construct_taxonomy_payload(spec["taxonomy"], "category", spec["classes"], True)
    return {"annotations": out, "segmentation": segmentation, "taxonomy": taxonomy}


if __name__ == "__main__":
    print("RESULT " + json.dumps(sdk_payloads(json.loads(Path(sys.argv[1]).read_text()))))
    sys.exit(0)


import io  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from syncd.errors import ItemError  # noqa: E402
from syncd.targets.nucleus.payload import to_nucleus  # noqa: E402
from syncd.targets.nucleus.target import NucleusTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.helpers import make_upload  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-nucleus" / "bin" / "python"
CLASS_MAP = {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
LABELS = [
    {"type": "classification", "label": "daytime", "attributes": {"source": "cam"}},
    {"type": "box", "label": "car", "x": 1.5, "y": 2, "width": 10, "height": 5, "attributes": {"occluded": True}},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [20, 0], [10, 12.5]]},
    {"type": "polyline", "label": "lane", "points": [[0, 23], [31, 20]]},
    {"type": "point", "label": "nose", "x": 3, "y": 4},
    {"type": "keypoints", "label": "person", "points": [{"name": "head", "x": 5, "y": 5},
                                                         {"name": "hand", "visible": False}, {"x": 7, "y": 8}],
     "skeleton": [[0, 1], [1, 2]]},
    {"type": "classification", "label": "night"},
]


def mask_png() -> bytes:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:8] = CLASS_MAP["sky"]
    pixels[16:, :16] = CLASS_MAP["road"]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_payloads_for_every_label_type_and_the_mask():
    result = to_nucleus(make_upload("cam1/f1", labels=LABELS, mask=mask_png(), class_map=CLASS_MAP))
    kinds = [(a["type"], a["label"]) for a in result.annotations]
    assert kinds == [("category", "daytime"), ("box", "car"), ("polygon", "roof"), ("line", "lane"),
                     ("keypoints", "nose"), ("keypoints", "person")]
    box = result.annotations[1]
    assert box["geometry"] == {"x": 1.5, "y": 2.0, "width": 10.0, "height": 5.0}
    assert box["annotation_id"] == "syncd:cam1/f1:1:box" and box["metadata"] == {"occluded": True}
    assert result.annotations[0]["taxonomy_name"] == "syncd" and "annotation_id" not in result.annotations[0]
    person = result.annotations[5]["geometry"]
    assert person["names"] == ["head", "hand", "2"]
    assert person["keypoints"][1] == {"x": None, "y": None, "visible": False}
    assert result.taxonomies == [{"taxonomy_name": "syncd", "type": "category", "labels": ["daytime", "night"],
                                  "update": True}]
    # One category per item: the second classification is reported, not sent.
    assert result.unsupported == ["multiple classifications"]
    assert result.segmentation == {"type": "mask", "mask_url": "cam1/f1.mask.png", "reference_id": "cam1/f1",
                                   "annotation_id": "syncd:cam1/f1:mask:mask",
                                   "annotations": [{"label": "road", "index": 1}, {"label": "sky", "index": 3}]}
    with Image.open(io.BytesIO(result.mask_png)) as image:
        index = np.asarray(image)
    assert image.mode == "L" and index.shape == (24, 32)
    assert set(np.unique(index)) == {0, 1, 3} and (index[:8] == 3).all() and (index[16:, :16] == 1).all()


def test_ids_are_deterministic_and_options_are_honoured():
    upload = make_upload("cam1/f1", labels=LABELS, mask=mask_png(), class_map=CLASS_MAP)
    assert to_nucleus(upload) == to_nucleus(upload)
    other = to_nucleus(upload, reference_id="prefix/cam1/f1", taxonomy_name="weather", mask_name="/tmp/m.png")
    assert other.annotations[1]["annotation_id"] == "syncd:prefix/cam1/f1:1:box"
    assert other.annotations[0]["taxonomy_name"] == "weather" and other.taxonomies[0]["taxonomy_name"] == "weather"
    assert other.segmentation["mask_url"] == "/tmp/m.png"
    ids = [a.get("annotation_id") for a in other.annotations if a["type"] != "category"]
    assert len(ids) == len(set(ids))  # the SDK refuses duplicate (reference_id, annotation_id) pairs


def test_unnamed_keypoints_get_unique_names():
    points = [{"x": 1, "y": 1, "name": "1"}, {"x": 2, "y": 2}, {"x": 3, "y": 3, "name": "0"}]
    result = to_nucleus(make_upload(labels=[{"type": "keypoints", "label": "k", "points": points}]))
    assert result.annotations[0]["geometry"]["names"] == ["1", "1'", "0"]


def test_no_labels_no_mask_nothing_to_send():
    result = to_nucleus(make_upload())
    assert (result.annotations, result.taxonomies, result.segmentation, result.mask_png, result.unsupported) == (
        [], [], None, None, [])


def test_labels_are_validated_again():
    with pytest.raises(ItemError, match=r"cam1/frame_0001.json: labels\[0\].x: x=99 is outside the image \(0..32\)"):
        to_nucleus(make_upload(labels=[{"type": "point", "label": "p", "x": 99, "y": 1}]))


def test_nucleus_represents_every_label_type():
    assert NucleusTarget.unsupported_types() == []
    assert NucleusTarget.unsupported_labels(LABELS[:6], has_mask=True) == []


def test_payloads_equal_the_sdks(tmp_path):
    assert SDK_PYTHON.exists(), (f"{SDK_PYTHON} is missing: python3 -m venv .venv-sdk-nucleus && "
                                 ".venv-sdk-nucleus/bin/pip install scale-nucleus==0.22.3 (tests/install.sh does it)")
    upload = make_upload("cam1/f1", labels=LABELS[:6], mask=mask_png(), class_map=CLASS_MAP)
    ours = to_nucleus(upload)
    labels = [dict(label, annotation_id=f"syncd:cam1/f1:{i}:{kind}") for i, (label, kind) in enumerate(
        zip(ours_labels(upload), ["category", "box", "polygon", "line", "keypoints", "keypoints"]))]
    spec = {"reference_id": "cam1/f1", "taxonomy": "syncd", "labels": labels, "classes": ["daytime"],
            "segmentation": {"mask_url": ours.segmentation["mask_url"],
                             "annotation_id": ours.segmentation["annotation_id"],
                             "segments": ours.segmentation["annotations"]}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run([str(SDK_PYTHON), __file__, str(tmp_path / "spec.json")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sdk = json.loads([ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1].removeprefix("RESULT "))
    assert ours.annotations == sdk["annotations"]
    assert ours.segmentation == sdk["segmentation"]
    assert ours.taxonomies == [sdk["taxonomy"]]


def ours_labels(upload):
    from syncd.labels.support import labels_of

    return labels_of(upload)
