"""RedBrick labels from syncd's labels and masks, checked with RedBrick's own SDK code.

redbrick-sdk pins a different pillow, so it lives in ``.venv-sdk-redbrick`` (see
tests/install.sh); this file, run as a script with that interpreter, feeds our
internal-format labels to the SDK's ``dicom_rb_series`` (which turns internal labels into
the public Series format) and our NIfTI to the SDK's ``convert_nii_to_png`` (its exporter
back to a coloured PNG).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sdk_side(spec: dict, workdir: str) -> dict:
    """The SDK side (runs in the subprocess)."""
    from redbrick.utils.png import convert_nii_to_png
    from redbrick.utils.rb_label_utils import dicom_rb_series

    output = {"series": [{}]}
    task = {"labels": spec["labels"], "labelsMap": [{"labelName": "seg.nii.gz", "seriesIndex": 0}]}
    dicom_rb_series({}, task, output, {"isNew": True})
    nifti = Path(workdir) / "seg.nii.gz"
    nifti.write_bytes(bytes.fromhex(spec["nifti"]))
    labels = [{"dicom": {"instanceid": i}, "classid": i - 1, "category": name} for i, name in spec["instances"]]
    color_map = {i - 1: colour for i, colour in spec["colours"]}
    ok, files = convert_nii_to_png([str(nifti)], color_map, labels, workdir, False, False, True)
    return {"series": output["series"][0], "ok": ok, "files": files}


if __name__ == "__main__":
    print("RESULT " + json.dumps(sdk_side(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])))
    sys.exit(0)


import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from syncd.targets.redbrick.payload import to_redbrick  # noqa: E402
from syncd.targets.redbrick.target import RedBrickTarget  # noqa: E402
from tests.daemon_harness import REPO  # noqa: E402
from tests.helpers import make_upload  # noqa: E402

SDK_PYTHON = REPO / ".venv-sdk-redbrick" / "bin" / "python"
CLASS_MAP = {"void": [1, 1, 1], "road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
LABELS = [
    {"type": "classification", "label": "daytime", "attributes": {"weather": "rain", "cars": 3}},
    {"type": "box", "label": "car", "x": 8, "y": 6, "width": 16, "height": 12, "attributes": {"occluded": True}},
    {"type": "point", "label": "nose", "x": 16, "y": 12},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [32, 0], [16, 24]]},
    {"type": "polyline", "label": "lane", "points": [[0, 24], [32, 12]]},
    {"type": "keypoints", "label": "person", "points": [{"x": 5, "y": 5}]},
]


def mask_pixels() -> np.ndarray:
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[:8] = CLASS_MAP["sky"]
    pixels[16:, :16] = CLASS_MAP["road"]
    pixels[10:14, 20:30] = CLASS_MAP["car"]
    return pixels


def mask_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask_pixels()).save(buffer, format="PNG")
    return buffer.getvalue()


def upload():
    return make_upload("cam1/f1", labels=LABELS, mask=mask_png(), class_map=CLASS_MAP)


def test_internal_labels_are_normalised_and_masks_become_instances():
    result = to_redbrick(upload())
    assert result.labels == [
        {"category": "daytime", "attributes": [{"name": "cars", "value": 3}, {"name": "weather", "value": "rain"}],
         "seriesclassify": True},
        {"category": "car", "attributes": [{"name": "occluded", "value": True}],
         "bbox2d": {"xnorm": 0.25, "ynorm": 0.25, "wnorm": 0.5, "hnorm": 0.5}},
        {"category": "nose", "attributes": [], "point": {"xnorm": 0.5, "ynorm": 0.5}},
        {"category": "roof", "attributes": [], "polygon": [{"xnorm": 0.0, "ynorm": 0.0}, {"xnorm": 1.0, "ynorm": 0.0},
                                                           {"xnorm": 0.5, "ynorm": 1.0}]},
        {"category": "lane", "attributes": [],
         "polyline": [{"xnorm": 0.0, "ynorm": 1.0}, {"xnorm": 1.0, "ynorm": 0.5}]},
        # "void" is in the class map but not in the mask: no instance for it.
        {"category": "road", "attributes": [], "dicom": {"instanceid": 1}, "volumeindex": 0},
        {"category": "car", "attributes": [], "dicom": {"instanceid": 2}, "volumeindex": 0},
        {"category": "sky", "attributes": [], "dicom": {"instanceid": 3}, "volumeindex": 0},
    ]
    assert result.series["segmentMap"] == {"1": {"category": "road"}, "2": {"category": "car"},
                                           "3": {"category": "sky"}}
    assert result.series["boundingBoxes"] == [{"pointTopLeft": {"xNorm": 0.25, "yNorm": 0.25}, "wNorm": 0.5,
                                               "hNorm": 0.5, "category": "car", "attributes": {"occluded": True}}]
    assert result.nifti[:2] == b"\x1f\x8b"
    assert result.unsupported == ["keypoints"]
    assert RedBrickTarget.unsupported_types() == ["keypoints"]


def test_without_a_mask_there_is_no_nifti():
    result = to_redbrick(make_upload(labels=LABELS[:2]))
    assert result.nifti is None and "segmentMap" not in result.series and len(result.labels) == 2


def test_redbricks_sdk_reads_our_labels_and_our_nifti_back(tmp_path):
    assert SDK_PYTHON.exists(), f"the RedBrick SDK venv is missing: see tests/install.sh ({SDK_PYTHON})"
    result = to_redbrick(upload())
    colours = {1: CLASS_MAP["road"], 2: CLASS_MAP["car"], 3: CLASS_MAP["sky"]}
    spec = {"labels": result.labels, "nifti": result.nifti.hex(),
            "instances": [[int(k), v["category"]] for k, v in result.series["segmentMap"].items()],
            "colours": [[k, c] for k, c in colours.items()]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([str(SDK_PYTHON), __file__, str(tmp_path / "spec.json"), str(work)], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    sdk = json.loads([ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")][-1].removeprefix("RESULT "))
    # The SDK's public form of our internal labels is exactly our public form (its export adds
    # the mask file to each segment and the series' mask flags).
    segment_map = {k: {**v, "mask": "seg.nii.gz"} for k, v in result.series["segmentMap"].items()}
    expected = {**result.series, "segmentMap": segment_map, "segmentations": "seg.nii.gz", "binaryMask": False,
                "semanticMask": False, "pngMask": False}
    assert sdk["series"] == expected
    # RedBrick's exporter turns our NIfTI back into the very mask we started from.
    assert sdk["ok"] and sdk["files"] == [str(work / "seg.png")]
    with Image.open(work / "seg.png") as image:
        assert (np.asarray(image.convert("RGB")) == mask_pixels()).all()
