"""What each platform can represent (its Target's ``label_types`` and
``single_classification``), and what one item would lose there."""

from __future__ import annotations

import pytest

from syncd.errors import ConfigError
from syncd.labels.support import FEATURES
from syncd.targets import REGISTRY, target_class
from syncd.targets.base import Target

LABELS = [
    {"type": "classification", "label": "day", "attributes": {}},
    {"type": "classification", "label": "night", "attributes": {}},
    {"type": "keypoints", "label": "person", "points": [], "skeleton": [], "attributes": {"pose": "sitting"}},
]


def test_every_registered_platform_declares_what_it_can_represent():
    for platform in REGISTRY:
        cls = target_class(platform)
        declared = {name for klass in cls.__mro__ if klass is not Target for name in vars(klass)}
        assert {"label_types", "single_classification"} <= declared, platform
        assert cls.label_types <= set(FEATURES), platform
    assert target_class("local").unsupported_types() == []
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
    assert target_class(platform).unsupported_labels(LABELS, has_mask=True) == expected


def test_nothing_to_lose_without_labels_and_one_classification_is_fine():
    for platform in REGISTRY:
        assert target_class(platform).unsupported_labels([]) == []
    assert target_class("edgeimpulse").unsupported_labels(LABELS[:1] * 2) == []  # the same class twice is one label


def test_unknown_platform():
    with pytest.raises(ConfigError, match="unknown platform 'scale'; known platforms: dataloop, edgeimpulse"):
        target_class("scale")
