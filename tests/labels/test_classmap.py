"""class_map.json: both forms, every rule, and where it is found."""

from __future__ import annotations

import json

import pytest

from syncd.errors import ItemError
from syncd.labels.classmap import ClassMap, find_class_map, load_class_map, parse_class_map


def parse(data) -> ClassMap:
    return parse_class_map(json.dumps(data).encode() if not isinstance(data, bytes) else data,
                           source="cam1/class_map.json")


def test_rgb_form_keeps_the_file_order_and_numbers_classes_from_one():
    cm = parse({"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]})
    assert cm.kind == "rgb"
    assert cm.names == ["road", "car", "sky"]
    assert cm.index_names() == {1: "road", 2: "car", 3: "sky"}
    assert cm.index_colours()[2] == (0, 0, 142)
    assert cm.to_json() == {"road": [128, 64, 128], "car": [0, 0, 142], "sky": [70, 130, 180]}
    assert ClassMap.from_json(cm.to_json()) == cm


def test_index_form_uses_the_maps_own_indices():
    cm = parse({"background": 0, "road": 7, "car": 255})
    assert cm.kind == "index"
    assert cm.index_names() == {0: "background", 7: "road", 255: "car"}
    assert cm.index_colours() == {}
    assert cm.to_json() == {"background": 0, "road": 7, "car": 255}


def test_a_utf8_bom_is_accepted():
    assert parse(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode()).names == ["a"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "cam1/class_map.json: not valid JSON at line 1 column 2"),
        (b"\xff\xfe", "not UTF-8"),
        ([["car", [1, 2, 3]]], "a class map is a JSON object"),
        ({}, "the class map is empty"),
        ({"car": [1, 2]}, "class 'car': [1, 2] is not an RGB colour"),
        ({"car": [1, 2, 256]}, "class 'car': [1, 2, 256] is not an RGB colour"),
        ({"car": [1, 2, 3.0]}, "is not an RGB colour"),
        ({"car": [1, 2, True]}, "is not an RGB colour"),
        ({"car": [1, 2, 3], "bus": 4}, "class 'bus': 4 is not an RGB colour: write [r, g, b] with integers 0..255 "
                                       "(one form per file"),
        ({"car": 256}, "class 'car': 256 is not a class index: write an integer 0..255 (masks are 8-bit)"),
        ({"car": -1}, "is not a class index"),
        ({"car": "1"}, "class 'car': \"1\" is not a class index"),
        ({"car": True}, "is not a class index"),
        ({"car": [1, 2, 3], "bus": [1, 2, 3]}, "classes 'car' and 'bus' share [1, 2, 3]: give each class its own"),
        ({"car": 3, "bus": 3}, "classes 'car' and 'bus' share 3"),
        ({" ": 3}, "a class name is empty"),
    ],
)
def test_every_broken_rule_is_an_item_error_naming_the_file(data, expected):
    with pytest.raises(ItemError) as info:
        parse(data)
    assert str(info.value).startswith("cam1/class_map.json: ")
    assert expected in str(info.value)


def test_too_many_rgb_classes():
    many = {f"c{i}": [i % 256, i // 256, 1] for i in range(255)}
    with pytest.raises(ItemError, match="255 classes; at most 254"):
        parse(many)
    del many["c254"]
    assert len(parse(many).names) == 254


def test_load_names_the_path(tmp_path):
    path = tmp_path / "class_map.json"
    with pytest.raises(ItemError, match="vanished"):
        load_class_map(path)
    path.write_text('{"car": [1, 2, 3]}')
    assert load_class_map(path).names == ["car"]
    path.write_text('{"car": [1, 2]}')
    with pytest.raises(ItemError, match=f"^{path}: class 'car'"):
        load_class_map(path)


def test_find_class_map_takes_the_nearest_one_up_to_the_root(tmp_path):
    root = tmp_path / "watched"
    deep = root / "site" / "cam1" / "day"
    deep.mkdir(parents=True)
    assert find_class_map(deep, root) is None
    (root / "class_map.json").write_text("{}")
    assert find_class_map(deep, root) == root / "class_map.json"
    (root / "site" / "class_map.json").write_text("{}")
    assert find_class_map(deep, root) == root / "site" / "class_map.json"
    (deep / "class_map.json").write_text("{}")
    assert find_class_map(deep, root) == deep / "class_map.json"
    assert find_class_map(root, root) == root / "class_map.json"


def test_find_class_map_never_looks_above_the_root(tmp_path):
    (tmp_path / "class_map.json").write_text("{}")
    root = tmp_path / "watched"
    (root / "cam1").mkdir(parents=True)
    assert find_class_map(root / "cam1", root) is None
    assert find_class_map(tmp_path / "elsewhere", root) is None
    (root / "cam1" / "class_map.json").mkdir()  # a directory of that name is not a class map
    assert find_class_map(root / "cam1", root) is None
