"""Dataloop annotations (docs/platforms/dataloop.md): the JSON array for
``POST /items/{itemId}/annotations``, in the shapes dtlpy's annotation definitions build
(tests/platforms/dataloop/test_payload.py compares them):

- classification -> ``class`` (no coordinates); point -> ``point`` ``{"x", "y", "z": 0}``;
  box -> ``box`` ``[top-left, bottom-right]``; polygon -> ``segment`` (one ring);
  polyline -> ``polyline``;
- mask -> one ``binary`` annotation per class present: a full-size RGBA PNG data URL, the
  class colour with alpha 255 inside and zeros outside;
- attributes -> ``metadata.system.attributes`` ("attributes 2.0", as dtlpy sends them), next
  to ``metadata.system.automated: true`` (dtlpy's default);
- every annotation carries ``metadata.user.syncd = {"key", "version", "source"}`` (source
  ``labels[i]`` or ``mask``) so the target can find and replace the ones it made;
- keypoints are not represented (reported in ``unsupported``).

``labels`` maps every class name used to a ``#rrggbb`` colour for the dataset's ontology:
``label_colors`` (e.g. what the ontology already has) win, then the class map's colour,
then a stable colour derived from the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syncd.labels.classmap import Colour
from syncd.labels.masks import Mask, binary_rgba_pngs, mask_of, name_colour, png_data_url
from syncd.labels.support import labels_of, unsupported_labels

MARKER = "syncd"  # the key in metadata.user, as the Dataloop target uses for items

#: What Dataloop can represent (DataloopTarget.label_types): keypoints are not.
LABEL_TYPES = frozenset({"classification", "box", "point", "polygon", "polyline", "mask", "attributes"})
SINGLE_CLASSIFICATION = False


@dataclass(frozen=True)
class DataloopAnnotations:
    annotations: list[dict[str, Any]]
    labels: dict[str, str]
    unsupported: list[str]


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def parse_hex(colour: str) -> Colour:
    text = colour.lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def coordinates(label: dict[str, Any]) -> tuple[str, Any]:
    """``(dataloop type, coordinates)`` for one label; coordinates None for ``class``."""
    kind = label["type"]
    if kind == "classification":
        return "class", None
    if kind == "point":
        return "point", {"x": float(label["x"]), "y": float(label["y"]), "z": 0.0}
    if kind == "box":
        right, bottom = label["x"] + label["width"], label["y"] + label["height"]
        return "box", [{"x": float(label["x"]), "y": float(label["y"]), "z": 0},
                       {"x": float(right), "y": float(bottom), "z": 0}]
    if kind in ("polygon", "polyline"):
        ring = [{"x": float(x), "y": float(y)} for x, y in label["points"]]
        return ("segment" if kind == "polygon" else "polyline"), [ring]
    raise ValueError(f"Dataloop has no annotation type for {kind!r}")


def _annotation(kind: str, label: str, coords: Any, attributes: Mapping[str, Any], tag: dict) -> dict[str, Any]:
    # automated: true is what dtlpy's annotation builder sends by default.
    system = {"attributes": dict(attributes), "automated": True}
    out: dict[str, Any] = {"type": kind, "label": label, "metadata": {"system": system, "user": {MARKER: tag}}}
    if coords is not None:
        out["coordinates"] = coords
    return out


def to_dataloop(upload, *, label_colors: Mapping[str, str] | None = None) -> DataloopAnnotations:
    """Dataloop annotations for ``upload``; ``label_colors`` maps class names to ``#rrggbb``."""
    label_colors = dict(label_colors or {})
    labels = labels_of(upload)
    annotations = []
    names: dict[str, Colour | None] = {}
    for position, label in enumerate(labels):
        if label["type"] not in SUPPORTED_TYPES:
            continue  # reported in unsupported
        kind, coords = coordinates(label)
        tag = {"key": upload.key, "version": upload.version, "source": f"labels[{position}]"}
        annotations.append(_annotation(kind, label["label"], coords, label["attributes"], tag))
        names.setdefault(label["label"], None)
    mask: Mask | None = mask_of(upload)
    if mask is not None:
        colours = {mask.names[k]: mask.colours[k] for k in mask.present}
        overrides = {name: parse_hex(label_colors[name]) for name in colours if name in label_colors}
        tag = {"key": upload.key, "version": upload.version, "source": "mask"}
        for name, png in binary_rgba_pngs(mask, overrides):
            annotations.append(_annotation("binary", name, png_data_url(png), {}, tag))
            names[name] = colours[name]
    palette = {name: label_colors.get(name) or hex_colour(colour or name_colour(name))
               for name, colour in names.items()}
    lost = unsupported_labels(labels, label_types=LABEL_TYPES, single_classification=SINGLE_CLASSIFICATION,
                              has_mask=mask is not None)
    return DataloopAnnotations(annotations=annotations, labels=palette, unsupported=lost)


SUPPORTED_TYPES = frozenset({"classification", "point", "box", "polygon", "polyline"})
