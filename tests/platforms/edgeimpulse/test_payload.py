"""Edge Impulse: the sample label and bounding boxes from labels and masks.

The boxes are checked against the official generated client's ``BoundingBox`` model
(``edgeimpulse-api``, strict ints) and the header the official ``edgeimpulse`` SDK would
send for the same list.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from edgeimpulse_api.models.bounding_box import BoundingBox
from edgeimpulse_api.models.sample_bounding_boxes_request import SampleBoundingBoxesRequest
from PIL import Image

from syncd.targets.edgeimpulse.org import EdgeImpulseOrgTarget
from syncd.targets.edgeimpulse.payload import pixel_box, to_edgeimpulse
from syncd.targets.edgeimpulse.target import EdgeImpulseTarget
from tests.helpers import make_upload

CLASS_MAP = {"road": [128, 64, 128], "car": [0, 0, 142]}


def mask_png() -> bytes:
    """Two separate car regions and one road region (32x24)."""
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[2:6, 3:9] = CLASS_MAP["car"]
    pixels[10:12, 20:31] = CLASS_MAP["car"]
    pixels[18:, :] = CLASS_MAP["road"]
    pixels[0, 31] = CLASS_MAP["car"]  # a one-pixel speck
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


LABELS = [
    {"type": "box", "label": "car", "x": 1.4, "y": 2.6, "width": 10.2, "height": 5, "attributes": {"occluded": True}},
    {"type": "classification", "label": "daytime"},
    {"type": "polygon", "label": "roof", "points": [[0, 0], [20, 0], [10, 12]]},
    {"type": "classification", "label": "night"},
    {"type": "box", "label": "sign", "x": 31.6, "y": 23.5, "width": 0.4, "height": 0.5},
]


def test_label_boxes_and_mask_regions():
    result = to_edgeimpulse(make_upload(labels=LABELS, mask=mask_png(), class_map=CLASS_MAP))
    assert result.label == "daytime"
    assert result.bounding_boxes == [
        {"label": "car", "x": 1, "y": 3, "width": 11, "height": 5},  # edges rounded: 1.4..11.6 -> 1..12
        {"label": "sign", "x": 31, "y": 23, "width": 1, "height": 1},  # at least one pixel, inside the image
        {"label": "road", "x": 0, "y": 18, "width": 32, "height": 6},
        {"label": "car", "x": 31, "y": 0, "width": 1, "height": 1},
        {"label": "car", "x": 3, "y": 2, "width": 6, "height": 4},
        {"label": "car", "x": 20, "y": 10, "width": 11, "height": 2},
    ]
    assert result.unsupported == ["polygon", "attributes", "multiple classifications"]
    for box in result.bounding_boxes:
        assert BoundingBox(**box).to_dict() == box  # strict ints, as Studio's model has them
    assert SampleBoundingBoxesRequest.from_dict({"boundingBoxes": result.bounding_boxes}).to_dict() == {
        "boundingBoxes": result.bounding_boxes}


def test_min_region_pixels_drops_specks():
    result = to_edgeimpulse(make_upload(mask=mask_png(), class_map=CLASS_MAP), min_region_pixels=2)
    assert {"label": "car", "x": 31, "y": 0, "width": 1, "height": 1} not in result.bounding_boxes
    assert len(result.bounding_boxes) == 3
    assert result.label is None and result.unsupported == []


def test_header_and_labels_file_forms():
    result = to_edgeimpulse(make_upload(labels=LABELS[:1]))
    # The official SDK sends json.dumps(bounding_boxes) as x-bounding-boxes.
    assert json.loads(result.bounding_boxes_header()) == json.loads(json.dumps(result.bounding_boxes))
    assert result.bounding_boxes_header().isascii()
    body = json.loads(result.bounding_boxes_file("frame_0001.png"))
    assert body == {"version": 1, "type": "bounding-box-labels",
                    "boundingBoxes": {"frame_0001.png": [{"label": "car", "x": 1, "y": 3, "width": 11, "height": 5}]}}


@pytest.mark.parametrize(
    ("box", "expected"),
    [((0, 0, 32, 24), (0, 0, 32, 24)), ((10.5, 3.49, 0.2, 0.2), (10, 3, 1, 1)),
     ((31.9, 23.9, 0.1, 0.1), (31, 23, 1, 1)), ((0.4, 0.6, 31.2, 22.8), (0, 1, 32, 22))],
)
def test_pixel_box_stays_inside_and_non_empty(box, expected):
    out = pixel_box("c", *box, image_width=32, image_height=24)
    assert (out["x"], out["y"], out["width"], out["height"]) == expected


def test_the_platform_limits():
    assert EdgeImpulseTarget.unsupported_types() == ["point", "polygon", "polyline", "keypoints", "attributes"]
    assert EdgeImpulseOrgTarget.unsupported_types() == ["classification", "box", "point", "polygon", "polyline",
                                                    "keypoints", "mask", "attributes"]
