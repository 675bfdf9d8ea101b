"""The sidecar's JSON Schema (``syncd schema``): metadata, both label forms, extra keys."""

from __future__ import annotations

import json

from pydantic import Field

from syncd.labels.model import LABEL_TYPES
from syncd.labels.sidecar import sidecar_json_schema


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
