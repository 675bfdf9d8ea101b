"""RedBrick's label objects in a sidecar: converted to pixels, errors at RedBrick's keys."""

from __future__ import annotations

import pytest

from syncd.errors import ItemError
from syncd.labels.validate import parse_labels

W, H = 640, 480


def parse(labels, width=W, height=H):
    return parse_labels(labels, width=width, height=height, source="cam1/a.json")


def error(labels, width=W, height=H) -> str:
    with pytest.raises(ItemError) as info:
        parse(labels, width, height)
    return str(info.value)


def test_redbrick_objects_are_converted_to_pixels():
    out = parse([
        {"category": "car", "attributes": [{"name": "occluded", "value": True}, {"name": "make", "value": "vw"}],
         "labelid": "l1", "classid": 3, "bbox2d": {"xnorm": 0.1, "ynorm": 0.25, "wnorm": 0.5, "hnorm": 0.5}},
        {"category": [["object", "person"]], "point": {"xnorm": 0.5, "ynorm": 1}},
        {"category": [["object", "vehicle", "truck"]], "polygon": [{"xnorm": 0, "ynorm": 0}, {"xnorm": 1, "ynorm": 0},
                                                                     {"xnorm": 1, "ynorm": 1}]},
        {"category": ["road", "lane"], "polyline": [{"xnorm": 0, "ynorm": 0.5}, {"xnorm": 1, "ynorm": 0.5}],
         "volumeindex": 0},
        {"category": "daytime", "seriesclassify": True, "attributes": {"weather": "rain"}},
        {"category": "night"},
    ])
    assert out == [
        {"type": "box", "label": "car", "x": 64.0, "y": 120.0, "width": 320.0, "height": 240.0,
         "attributes": {"occluded": True, "make": "vw"}},
        {"type": "point", "label": "person", "x": 320.0, "y": 480.0, "attributes": {}},
        {"type": "polygon", "label": "vehicle::truck", "points": [[0.0, 0.0], [640.0, 0.0], [640.0, 480.0]],
         "attributes": {}},
        {"type": "polyline", "label": "road::lane", "points": [[0.0, 240.0], [640.0, 240.0]], "attributes": {}},
        {"type": "classification", "label": "daytime", "attributes": {"weather": "rain"}},
        {"type": "classification", "label": "night", "attributes": {}},
    ]


def test_redbrick_float_noise_at_the_edge_is_clamped():
    out = parse([{"category": "c", "bbox2d": {"xnorm": 0.7, "ynorm": -1e-12, "wnorm": 0.3000000000001, "hnorm": 1}}])
    box = out[0]
    assert box["y"] == 0.0 and box["x"] + box["width"] <= W and box["height"] == H


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"category": "c", "bbox2d": {"xnorm": 2, "ynorm": 0, "wnorm": 0.1, "hnorm": 0.1}},
         "labels[0].bbox2d.xnorm: 2 is not a normalised coordinate: RedBrick coordinates are 0..1"),
        ({"category": "c", "bbox2d": {"xnorm": 0.5, "ynorm": 0, "wnorm": 0.6, "hnorm": 0.1}},
         "labels[0].bbox2d: xnorm + wnorm = 1.1 is past the image's right edge (1)"),
        ({"category": "c", "bbox2d": {"xnorm": 0.5, "ynorm": 0, "wnorm": 0, "hnorm": 0.1}},
         "labels[0].bbox2d.wnorm: 0 is not a normalised size"),
        ({"category": "c", "bbox2d": {"xnorm": 0.5, "ynorm": 0, "hnorm": 0.1}},
         "labels[0].bbox2d.wnorm: field required"),
        ({"category": "c", "point": {"xnorm": 0.5, "ynorm": -0.1}}, "labels[0].point.ynorm: -0.1 is not a normalised"),
        ({"category": "c", "polygon": [{"xnorm": 0, "ynorm": 0}]},
         "labels[0].polygon: polygon needs at least 3 points"),
        ({"category": "c", "polygon": [{"xnorm": 0, "ynorm": 0}, {"xnorm": 0.5, "ynorm": 7}]},
         "labels[0].polygon[1].ynorm: 7 is not a normalised coordinate"),
        ({"category": "c", "ellipse": {}}, "labels[0].ellipse: RedBrick 'ellipse' labels are not supported"),
        ({"category": "c", "dicom": {"instanceid": 1}}, "labels[0].dicom: RedBrick 'dicom' labels are not supported"),
        ({"category": "c", "trackid": "x"}, "labels[0].trackid: unknown key"),
        ({"category": "c", "volumeindex": 1}, "labels[0].volumeindex"),
        ({"category": 3, "point": {"xnorm": 0, "ynorm": 0}}, "labels[0].category"),
        ({"category": "c", "point": {"xnorm": 0, "ynorm": 0}, "polygon": []},
         "labels[0]: one geometry per label, this one has point and polygon"),
        ({"category": "c", "attributes": [{"name": "a", "value": 1}, {"name": "a", "value": 2}]},
         "labels[0].attributes[1].name: attribute 'a' is given twice"),
        ({"bbox2d": {"xnorm": 0, "ynorm": 0, "wnorm": 1, "hnorm": 1}}, "labels[0].category: field required"),
    ],
)
def test_redbrick_errors_are_located_at_redbricks_keys(label, expected):
    message = error([label])
    assert message.startswith("cam1/a.json: ")
    assert expected in message
