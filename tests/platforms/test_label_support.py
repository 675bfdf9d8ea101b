"""What each platform can represent, and what one item would lose there."""

from __future__ import annotations

import pytest

from syncd.annotations import FEATURES, SUPPORTED, unsupported_labels, unsupported_types
from syncd.targets import REGISTRY

LABELS = [
    {"type": "classification", "label": "day", "attributes": {}},
    {"type": "classification", "label": "night", "attributes": {}},
    {"type": "keypoints", "label": "person", "points": [], "skeleton": [], "attributes": {"pose": "sitting"}},
]


def test_every_registered_platform_has_a_row():
    assert set(SUPPORTED) == set(REGISTRY)
    assert unsupported_types("local") == []
    assert set(FEATURES) == {"classification", "box", "point", "polygon", "polyline", "keypoints", "mask", "attributes"}


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("local", []),
     ("nucleus", ["multiple classifications"]),
     ("dataloop", ["keypoints"]),
     ("redbrick", ["keypoints"]),
     ("edgeimpulse", ["keypoints", "attributes", "multiple classifications"]),
     ("edgeimpulse-org", ["classification", "keypoints", "mask", "attributes"])],
)
def test_what_an_item_would_lose(platform, expected):
    assert unsupported_labels(platform, LABELS, has_mask=True) == expected


def test_nothing_to_lose_without_labels_and_one_classification_is_fine():
    for platform in SUPPORTED:
        assert unsupported_labels(platform, []) == []
    assert unsupported_labels("edgeimpulse", LABELS[:1] * 2) == []  # the same class twice is one label


def test_unknown_platform():
    with pytest.raises(ValueError, match="unknown platform 'scale'; known: dataloop, edgeimpulse"):
        unsupported_types("scale")
