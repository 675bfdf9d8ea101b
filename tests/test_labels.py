"""The sidecar label schema: normalised output, precise errors, the JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import Field, TypeAdapter

from syncd.errors import ItemError
from syncd.labels import LABEL_TYPES, Label, LabelList, parse_labels, sidecar_json_schema, validate_labels

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
        ({"type": "polygon", "label": "r", "points": []}, "labels[0].points: polygon needs at least 3 points, it has 0"),
        ({"type": "polygon", "label": "r", "points": [[0, 0], [1, 1], [2, 2]]},
         "labels[0].points: polygon has no area: its points lie on one line"),
        ({"type": "polygon", "label": "r", "points": [[0, 0], [1, 1, 1], [2, 0]]},
         "labels[0].points[1]: Tuple should have at most 2 items"),
        ({"type": "polyline", "label": "l", "points": [[0, 0]]}, "labels[0].points: polyline needs at least 2 points"),
        ({"type": "circle", "label": "c"},
         "labels[0].type: unknown label type 'circle': use one of classification, box, point, polygon, polyline, keypoints"),
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
        ({"type": "point", "label": "c", "x": 1, "y": 1, "attributes": []}, "labels[0].attributes: Input should be a valid dictionary"),
        ({"type": "keypoints", "label": "k", "points": [{"name": "a"}]},
         "labels[0].points[0]: a visible keypoint needs x and y (or set \"visible\": false)"),
        ({"type": "keypoints", "label": "k", "points": []}, "labels[0].points: List should have at least 1 item"),
        ({"type": "keypoints", "label": "k", "points": [{"name": "a", "x": 1, "y": 1}, {"name": "a", "visible": False}]},
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


# -- RedBrick's label objects --------------------------------------------------------------

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
        ({"category": "c", "bbox2d": {"xnorm": 0.5, "ynorm": 0, "hnorm": 0.1}}, "labels[0].bbox2d.wnorm: field required"),
        ({"category": "c", "point": {"xnorm": 0.5, "ynorm": -0.1}}, "labels[0].point.ynorm: -0.1 is not a normalised"),
        ({"category": "c", "polygon": [{"xnorm": 0, "ynorm": 0}]}, "labels[0].polygon: polygon needs at least 3 points"),
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


# -- the union type and the JSON Schema ------------------------------------------------------

def test_label_and_label_list_are_usable_pydantic_types():
    adapter = TypeAdapter(LabelList)
    parsed = adapter.validate_python([{"type": "point", "label": "p", "x": 1, "y": 2}])
    assert parsed[0].type == "point" and parsed[0].x == 1.0
    assert TypeAdapter(Label).validate_python({"type": "classification", "label": "c"}).attributes == {}


def test_sidecar_json_schema_documents_metadata_labels_and_extra_keys():
    schema = sidecar_json_schema({"priority": (int, Field(0, description="higher first"))})
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"metadata", "labels", "priority"}
    assert schema["properties"]["priority"]["description"] == "higher first"
    assert schema["properties"]["metadata"]["type"] == "object"
    items = schema["properties"]["labels"]["items"]["anyOf"]
    mapping = items[0]["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(LABEL_TYPES)
    assert items[1] == {"$ref": "#/$defs/RedBrickLabel"}
    defs = schema["$defs"]
    assert defs["Polygon"]["properties"]["points"]["minItems"] == 3
    assert defs["Polyline"]["properties"]["points"]["minItems"] == 2
    assert defs["Box"]["required"] == ["type", "label", "x", "y", "width", "height"]
    assert defs["Box"]["additionalProperties"] is False
    assert "bbox2d" in defs["RedBrickLabel"]["properties"]
    json.dumps(schema)
    assert set(sidecar_json_schema()["properties"]) == {"metadata", "labels"}
