"""Dataloop annotations from labels and masks, compared with what dtlpy builds.

dtlpy (tests/requirements-sdk.txt) writes state at import time, so it runs in a subprocess:
this file, run as a script, builds dtlpy annotation definitions from syncd's normalised
labels and from the mask's per-class pixels, and prints their JSON.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path


def sdk_annotations(spec: dict) -> list[dict]:
    """The SDK side (runs in the subprocess)."""
    import dtlpy as dl
    import numpy as np

    out = []
    for item in spec["labels"]:
        kind, label, attrs = item["type"], item["label"], item["attributes"]
        if kind == "classification":
            definition = dl.Classification(label=label, attributes=attrs)
        elif kind == "point":
            definition = dl.Point(x=item["x"], y=item["y"], label=label, attributes=attrs)
        elif kind == "box":
            definition = dl.Box(left=item["x"], top=item["y"], right=item["x"] + item["width"],
                                bottom=item["y"] + item["height"], label=label, attributes=attrs)
        elif kind == "polygon":
            definition = dl.Polygon(geo=np.array(item["points"]), label=label, attributes=attrs)
        else:
            definition = dl.Polyline(geo=np.array(item["points"]), label=label, attributes=attrs)
        out.append(dl.Annotation.new(annotation_definition=definition).to_json())
    for seg in spec["masks"]:
        definition = dl.Segmentation(geo=np.array(seg["inside"], dtype=bool), label=seg["label"],
                                     color=tuple(seg["colour"]))
        out.append(dl.Annotation.new(annotation_definition=definition).to_json())
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(sdk_annotations(json.loads(Path(sys.argv[1]).read_text())), default=str))
    sys.exit(0)


import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from syncd.labels.masks import mask_of, name_colour  # noqa: E402
from syncd.labels.support import labels_of  # noqa: E402
from syncd.targets.dataloop.payload import to_dataloop  # noqa: E402
from syncd.targets.dataloop.target import DataloopTarget  # noqa: E402
from tests.helpers import make_upload  # noqa: E402

CLASS_MAP = {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
LABELS = [
    {"type": "classification", "label": "daytime", "attributes": {"source": "cam"}},
    {"type": "box", "label": "car", "x": 1.5, "y": 2, "width": 10, "height": 5, "attributes": {"occluded": True}},
    {"type": "point", "label": "nose", "x": 3, "y": 4},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [20, 0], [10, 12.5]]},
    {"type": "polyline", "label": "lane", "points": [[0, 23], [31, 20]]},
    {"type": "keypoints", "label": "person", "points": [{"x": 5, "y": 5}]},
]


def mask_png() -> bytes:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:8] = CLASS_MAP["sky"]
    pixels[16:, :16] = CLASS_MAP["road"]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url[22:]))) as image:
        return np.asarray(image.convert("RGBA"))


def upload():
    return make_upload("cam1/f1", labels=LABELS, mask=mask_png(), class_map=CLASS_MAP)


def test_annotations_for_labels_and_one_binary_per_mask_class():
    result = to_dataloop(upload(), label_colors={"sky": "#0a0b0c"})
    assert [(a["type"], a["label"]) for a in result.annotations] == [
        ("class", "daytime"), ("box", "car"), ("point", "nose"), ("segment", "roof"), ("polyline", "lane"),
        ("binary", "road"), ("binary", "sky")]
    box = result.annotations[1]
    assert box["coordinates"] == [{"x": 1.5, "y": 2.0, "z": 0}, {"x": 11.5, "y": 7.0, "z": 0}]
    assert box["metadata"]["system"]["attributes"] == {"occluded": True}
    assert box["metadata"]["user"]["syncd"] == {"key": "cam1/f1", "version": upload().version, "source": "labels[1]"}
    assert "coordinates" not in result.annotations[0]
    road, sky = decode(result.annotations[5]["coordinates"]), decode(result.annotations[6]["coordinates"])
    assert road.shape == (24, 32, 4)
    assert (road[16:, :16] == (128, 64, 128, 255)).all() and road[:16].sum() == 0 and road[16:, 16:].sum() == 0
    assert (sky[:8] == (10, 11, 12, 255)).all() and sky[8:].sum() == 0  # the ontology's colour wins
    assert result.annotations[6]["metadata"]["user"]["syncd"]["source"] == "mask"
    named = {name: "#%02x%02x%02x" % name_colour(name) for name in ("daytime", "car", "nose", "roof", "lane")}
    assert result.labels == {**named, "road": "#804080", "sky": "#0a0b0c"}
    assert result.unsupported == ["keypoints"]
    assert DataloopTarget.unsupported_types() == ["keypoints"]


def test_same_input_same_annotations():
    assert to_dataloop(upload()) == to_dataloop(upload())
    empty = to_dataloop(make_upload())
    assert (empty.annotations, empty.labels, empty.unsupported) == ([], {}, [])


def test_annotations_equal_dtlpys(tmp_path):
    up = upload()
    ours = to_dataloop(up).annotations
    mask = mask_of(up)
    spec = {"labels": [label for label in labels_of(up) if label["type"] != "keypoints"],
            "masks": [{"label": mask.names[k], "colour": list(mask.colours[k]), "inside": (mask.index == k).tolist()}
                      for k in mask.present]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "DATALOOP_PATH": str(tmp_path / "dataloop")}
    result = subprocess.run([sys.executable, __file__, str(tmp_path / "spec.json")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sdk = json.loads([ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1].removeprefix("RESULT "))
    assert len(sdk) == len(ours) == 7
    for mine, theirs in zip(ours, sdk):
        assert (mine["type"], mine["label"]) == (theirs["type"], theirs["label"])
        assert mine["metadata"]["system"]["attributes"] == theirs["metadata"]["system"]["attributes"]
        if mine["type"] == "binary":  # PNG bytes differ by encoder; the pixels must not
            assert (decode(mine["coordinates"]) == decode(theirs["coordinates"])).all()
        else:
            assert mine.get("coordinates") == theirs.get("coordinates")
