"""What a platform can represent of an item's labels, and what one item would lose there;
helpers the platforms' converters (``syncd/targets/<platform>/payload.py``) share.

A target declares what its platform can represent as class attributes
(``Target.label_types``, ``Target.single_classification``; see syncd.targets.base), and its
converter honours the same declaration. Nothing is dropped silently: what a platform cannot
represent is listed by ``unsupported_types`` (the platform's fixed limits, for ``syncd
check``) and ``unsupported_labels`` (what one item would lose, for ``syncd status``); every
converter result carries the latter as ``.unsupported``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from syncd.labels.model import LABEL_TYPES
from syncd.labels.validate import parse_labels

#: What can be represented: label types, plus "mask" and "attributes" (per-label attributes).
FEATURES = (*LABEL_TYPES, "mask", "attributes")
MULTIPLE_CLASSIFICATIONS = "multiple classifications"


def unsupported_types(label_types: Iterable[str]) -> list[str]:
    """What a platform representing ``label_types`` can never represent, in FEATURES order."""
    support = frozenset(label_types)
    return [feature for feature in FEATURES if feature not in support]


def unsupported_labels(labels: Iterable[Mapping[str, Any]], *, label_types: Iterable[str],
                       single_classification: bool = False, has_mask: bool = False) -> list[str]:
    """What one item would lose on a platform representing ``label_types`` (and, with
    ``single_classification``, one classification per item): the label types (and "mask",
    "attributes", "multiple classifications") present in ``labels``/the mask that the
    platform cannot hold, in FEATURES order."""
    support = frozenset(label_types)
    labels = list(labels)
    present = {label.get("type") for label in labels}
    if has_mask:
        present.add("mask")
    if any(label.get("attributes") for label in labels):
        present.add("attributes")
    out = [feature for feature in FEATURES if feature in present and feature not in support]
    classes = {label.get("label") for label in labels if label.get("type") == "classification"}
    if single_classification and len(classes) > 1:
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
