"""A sidecar's labels validated against the image: normalised output, precise errors."""

from __future__ import annotations

import json

import pytest

from syncd.errors import ItemError
from syncd.labels.model import LABEL_TYPES
from syncd.labels.validate import parse_labels, validate_labels

W, H = 640, 480


def parse(labels, width=W, height=H):
    return parse_labels(labels, width=width, height=height, source="cam1/a.json")


def error(labels, width=W, height=H) -> str:
    with pytest.raises(ItemError) as info:
        parse(labels, width, height)
    return str(info.value)


def test_every_type_is_normalised_to_plain_dicts_with_defaults():
    labels = [
        {"type": "classification", "label": "daytime"},
        {"type": "box", "label": "car", "x": 10, "y": 20, "width": 100, "height": 50.5,
         "attributes": {"occluded": True, "n": 2, "score": 0.5, "tags": ["a", "b"], "colour": "red"}},
        {"type": "point", "label": "nose", "x": 640, "y": 480},
        {"type": "polygon", "label": "roof", "points": [[0, 0], [40, 0], [20, 30]]},
        {"type": "polyline", "label": "lane", "points": [[0, 100], [200, 90.25]]},
        {"type": "keypoints", "label": "person", "points": [{"name": "head", "x": 5, "y": 5},
                                                             {"name": "hand", "visible": False}, {"x": 1, "y": 2}],
         "skeleton": [[0, 1], [1, 2]]},
    ]
    out = parse(labels)
    assert out == [
        {"type": "classification", "label": "daytime", "attributes": {}},
        {"type": "box", "label": "car", "x": 10.0, "y": 20.0, "width": 100.0, "height": 50.5,
         "attributes": {"occluded": True, "n": 2, "score": 0.5, "tags": ["a", "b"], "colour": "red"}},
        {"type": "point", "label": "nose", "x": 640.0, "y": 480.0, "attributes": {}},
        {"type": "polygon", "label": "roof", "points": [[0.0, 0.0], [40.0, 0.0], [20.0, 30.0]], "attributes": {}},
        {"type": "polyline", "label": "lane", "points": [[0.0, 100.0], [200.0, 90.25]], "attributes": {}},
        {"type": "keypoints", "label": "person", "skeleton": [[0, 1], [1, 2]], "attributes": {},
         "points": [{"x": 5.0, "y": 5.0, "name": "head", "visible": True},
                    {"x": None, "y": None, "name": "hand", "visible": False},
                    {"x": 1.0, "y": 2.0, "name": None, "visible": True}]},
    ]
    assert [label["type"] for label in out] == list(LABEL_TYPES)
    # Attribute types survive exactly (a bool stays a bool, an int an int).
    assert out[1]["attributes"]["occluded"] is True and type(out[1]["attributes"]["n"]) is int
    # Normalised labels are a fixed point: validating them again changes nothing.
    assert parse(out) == out
    json.dumps(out)  # plain JSON


def test_no_labels_is_fine_and_the_hook_has_the_item_signature():
    assert parse([]) == []
    assert validate_labels([{"type": "point", "label": "p", "x": 1, "y": 1}], 2, 2, "x.json")[0]["x"] == 1.0


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"type": "polygon", "label": "r", "points": [[0, 0], [1, 1]]},
         "cam1/a.json: labels[0].points: polygon needs at least 3 points, it has 2"),
        ({"type": "polygon", "label": "r", "points": []},
         "labels[0].points: polygon needs at least 3 points, it has 0"),
        ({"type": "polygon", "label": "r", "points": [[0, 0], [1, 1], [2, 2]]},
         "labels[0].points: polygon has no area: its points lie on one line"),
        ({"type": "polygon", "label": "r", "points": [[0, 0], [1, 1, 1], [2, 0]]},
         "labels[0].points[1]: Tuple should have at most 2 items"),
        ({"type": "polyline", "label": "l", "points": [[0, 0]]}, "labels[0].points: polyline needs at least 2 points"),
        ({"type": "circle", "label": "c"},
         "labels[0].type: unknown label type 'circle': "
         "use one of classification, box, point, polygon, polyline, keypoints"),
        ({"label": "c", "x": 1}, "labels[0]: a label needs a \"type\""),
        ("car", "labels[0]: must be a JSON object"),
        ({"type": "box", "label": "c", "x": 1, "y": 1, "height": 10}, "labels[0].width: field required"),
        ({"type": "box", "x": 1, "y": 1, "width": 1, "height": 10}, "labels[0].label: field required"),
        ({"type": "box", "label": "c", "x": 1, "y": 1, "width": 0, "height": 10},
         "labels[0].width: Input should be greater than 0"),
        ({"type": "box", "label": "c", "x": 1, "y": 1, "width": "5", "height": 10},
         "labels[0].width: Input should be a valid number"),
        ({"type": "point", "label": "c", "x": True, "y": 1}, "labels[0].x: Input should be a valid number"),
        ({"type": "point", "label": "c", "x": 1, "y": 1, "z": 0}, "labels[0].z: unknown key"),
        ({"type": "point", "label": "", "x": 1, "y": 1}, "labels[0].label: String should have at least 1 character"),
        ({"type": "point", "label": "  ", "x": 1, "y": 1}, "labels[0].label: the class name is empty"),
        ({"type": "point", "label": 7, "x": 1, "y": 1}, "labels[0].label: Input should be a valid string"),
        ({"type": "point", "label": "c", "x": 1, "y": 1, "attributes": {"a": {"b": 1}}}, "labels[0].attributes.a"),
        ({"type": "point", "label": "c", "x": 1, "y": 1, "attributes": []},
         "labels[0].attributes: Input should be a valid dictionary"),
        ({"type": "keypoints", "label": "k", "points": [{"name": "a"}]},
         "labels[0].points[0]: a visible keypoint needs x and y (or set \"visible\": false)"),
        ({"type": "keypoints", "label": "k", "points": []}, "labels[0].points: List should have at least 1 item"),
        ({"type": "keypoints", "label": "k",
          "points": [{"name": "a", "x": 1, "y": 1}, {"name": "a", "visible": False}]},
         "labels[0].points: keypoint names must be unique; repeated: a"),
        ({"type": "keypoints", "label": "k", "points": [{"x": 1, "y": 1}], "skeleton": [[0, 3]]},
         "labels[0].skeleton: pair [0, 3] refers to a keypoint that does not exist (there are 1)"),
    ],
)
def test_schema_errors_name_the_file_the_position_and_the_field(label, expected):
    message = error([label])
    assert message.startswith("cam1/a.json: labels[0]")
    assert expected in message


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"type": "point", "label": "c", "x": -1, "y": 1}, "labels[0].x: x=-1 is outside the image (0..640)"),
        ({"type": "point", "label": "c", "x": 1, "y": 480.5}, "labels[0].y: y=480.5 is outside the image (0..480)"),
        ({"type": "box", "label": "c", "x": 600, "y": 0, "width": 41, "height": 10},
         "labels[0].width: the box ends at x=641, past the image's width 640"),
        ({"type": "box", "label": "c", "x": 0, "y": 400, "width": 10, "height": 81},
         "labels[0].height: the box ends at y=481, past the image's height 480"),
        ({"type": "polygon", "label": "r", "points": [[0, 0], [10, 0], [650, 10]]},
         "labels[0].points[2]: x=650 is outside the image (0..640)"),
        ({"type": "polyline", "label": "l", "points": [[0, 0], [10, -0.5]]},
         "labels[0].points[1]: y=-0.5 is outside the image (0..480)"),
        ({"type": "keypoints", "label": "k", "points": [{"x": 1, "y": 1}, {"x": 700, "y": 1}]},
         "labels[0].points[1]: x=700 is outside the image (0..640)"),
    ],
)
def test_coordinates_outside_the_image_are_errors(label, expected):
    assert expected in error([label])


def test_a_box_filling_the_image_exactly_is_inside():
    assert parse([{"type": "box", "label": "c", "x": 0, "y": 0, "width": 640, "height": 480}])[0]["width"] == 640.0


def test_invisible_keypoints_outside_nothing_are_fine():
    out = parse([{"type": "keypoints", "label": "k", "points": [{"visible": False}, {"x": 0, "y": 0}]}])
    assert out[0]["points"][0] == {"x": None, "y": None, "name": None, "visible": False}


def test_several_problems_are_reported_together_and_counted():
    bad = [{"type": "point", "label": "ok", "x": 1, "y": 1}] + [{"type": "point", "label": "c", "x": -i, "y": 0}
                                                                for i in range(1, 6)]
    message = error(bad)
    assert message == ("cam1/a.json: labels[1].x: x=-1 is outside the image (0..640); "
                       "labels[2].x: x=-2 is outside the image (0..640); "
                       "labels[3].x: x=-3 is outside the image (0..640) (and 2 more)")


def test_labels_must_be_a_list():
    with pytest.raises(ItemError, match=r"^cam1/a.json: labels: must be a list of label objects, not dict$"):
        parse({"type": "point"})
