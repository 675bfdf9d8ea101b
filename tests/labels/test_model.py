"""The label schema's pydantic types, usable on their own."""

from __future__ import annotations

from pydantic import TypeAdapter

from syncd.labels.model import Label, LabelList


def test_label_and_label_list_are_usable_pydantic_types():
    adapter = TypeAdapter(LabelList)
    parsed = adapter.validate_python([{"type": "point", "label": "p", "x": 1, "y": 2}])
    assert parsed[0].type == "point" and parsed[0].x == 1.0
    assert TypeAdapter(Label).validate_python({"type": "classification", "label": "c"}).attributes == {}
