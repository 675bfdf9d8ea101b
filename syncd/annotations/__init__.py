"""Pure converters from an Upload's labels and mask to each platform's annotation payloads.

One module per platform, each with one entry point taking a ``syncd.targets.base.Upload``
and returning a small frozen dataclass of plain JSON-ready data and bytes; no I/O besides
decoding the given mask bytes:

=================  =========================================  ==================================
platform           entry point                                returns
=================  =========================================  ==================================
nucleus            ``annotations.nucleus.to_nucleus``         ``NucleusAnnotations``
edgeimpulse        ``annotations.edgeimpulse.to_edgeimpulse`` ``EdgeImpulseLabels``
dataloop           ``annotations.dataloop.to_dataloop``       ``DataloopAnnotations``
redbrick           ``annotations.redbrick.to_redbrick``       ``RedBrickLabels``
=================  =========================================  ==================================

Nothing is dropped silently: what a platform cannot represent is listed by
``unsupported_types(platform)`` (the platform's fixed limits, for ``syncd check``) and
``unsupported_labels(platform, labels, has_mask=...)`` (what one item would lose, for
``syncd status``); every converter result carries the latter as ``.unsupported``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from syncd.labels.model import LABEL_TYPES
from syncd.labels.validate import parse_labels

#: What can be represented: label types, plus "mask" and "attributes" (per-label attributes).
FEATURES = (*LABEL_TYPES, "mask", "attributes")

SUPPORTED: dict[str, frozenset[str]] = {
    "local": frozenset(FEATURES),
    # point -> a keypoints annotation with one keypoint; polyline -> "line".
    "nucleus": frozenset({"classification", "box", "point", "polygon", "polyline", "keypoints", "mask", "attributes"}),
    # classification -> the sample's label; mask -> boxes of its connected regions.
    "edgeimpulse": frozenset({"classification", "box", "mask"}),
    # organisation datasets hold files and metadata, no annotations.
    "edgeimpulse-org": frozenset(),
    "dataloop": frozenset({"classification", "box", "point", "polygon", "polyline", "mask", "attributes"}),
    "redbrick": frozenset({"classification", "box", "point", "polygon", "polyline", "mask", "attributes"}),
}

#: Platforms that keep one classification per item (extra ones are reported, the first is sent).
SINGLE_CLASSIFICATION = frozenset({"nucleus", "edgeimpulse"})
MULTIPLE_CLASSIFICATIONS = "multiple classifications"


def _support(platform: str) -> frozenset[str]:
    try:
        return SUPPORTED[platform]
    except KeyError:
        raise ValueError(f"unknown platform {platform!r}; known: {', '.join(sorted(SUPPORTED))}") from None


def unsupported_types(platform: str) -> list[str]:
    """What ``platform`` can never represent, in FEATURES order (for ``syncd check``)."""
    support = _support(platform)
    return [feature for feature in FEATURES if feature not in support]


def unsupported_labels(platform: str, labels: Iterable[Mapping[str, Any]], *, has_mask: bool = False) -> list[str]:
    """What one item would lose on ``platform``: label types (and "mask", "attributes",
    "multiple classifications") present in ``labels``/the mask that the platform cannot hold."""
    support = _support(platform)
    labels = list(labels)
    present = {label.get("type") for label in labels}
    if has_mask:
        present.add("mask")
    if any(label.get("attributes") for label in labels):
        present.add("attributes")
    out = [feature for feature in FEATURES if feature in present and feature not in support]
    classes = {label.get("label") for label in labels if label.get("type") == "classification"}
    if platform in SINGLE_CLASSIFICATION and len(classes) > 1:
        out.append(MULTIPLE_CLASSIFICATIONS)
    return out


def labels_of(upload) -> list[dict[str, Any]]:
    """The upload's labels in syncd's schema, validated again (cheap, and it makes every
    converter safe on labels that did not come through item validation)."""
    return parse_labels(list(upload.labels or []), width=upload.width, height=upload.height,
                        source=f"{upload.key}.json")


def attribute_list(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``{name: value}`` -> ``[{"name", "value"}]`` (RedBrick's internal form), sorted by name."""
    return [{"name": name, "value": attributes[name]} for name in sorted(attributes)]


__all__ = ["FEATURES", "SUPPORTED", "attribute_list", "labels_of", "unsupported_labels", "unsupported_types"]
