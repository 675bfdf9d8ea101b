"""RedBrick AI labels (docs/platforms/redbrick.md), normalised to 0..1.

``to_redbrick(upload)`` gives both forms RedBrick reads, built from the same labels:

- ``labels``: the internal import format (``createDatapoint``'s ``labelsData`` /
  ``putLabels``): ``{"category", "attributes": [{"name", "value"}], "bbox2d" | "point" |
  "polygon" | "polyline": ...}``, classifications with ``"seriesclassify": true``, and one
  ``{"category", "attributes": [], "dicom": {"instanceid": k}, "volumeindex": 0}`` per mask
  class;
- ``series``: the public ``Series`` fields (``boundingBoxes``, ``landmarks``, ``polygons``,
  ``polylines``, ``classifications``, ``segmentMap``), which RedBrick's SDK produces from
  the internal form (tests compare with its ``dicom_rb_series`` when available);
- ``nifti``: the mask as a gzipped NIfTI instance map, one instance id per class present
  (1..N, docs/platforms/redbrick.md); the target uploads it and points ``labelsMap`` /
  ``segmentations`` at it. Needs the optional ``nibabel`` (``pip install 'syncd[redbrick]'``).

Keypoints are not represented (reported in ``unsupported``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncd.labels.masks import mask_of, nifti_instances
from syncd.labels.support import attribute_list, labels_of, unsupported_labels

SUPPORTED_TYPES = frozenset({"classification", "box", "point", "polygon", "polyline"})

#: What RedBrick can represent (RedBrickTarget.label_types): keypoints are not.
LABEL_TYPES = frozenset({"classification", "box", "point", "polygon", "polyline", "mask", "attributes"})
SINGLE_CLASSIFICATION = False


@dataclass(frozen=True)
class RedBrickLabels:
    labels: list[dict[str, Any]]
    series: dict[str, Any]
    nifti: bytes | None
    unsupported: list[str]


def _norm(x: float, y: float, width: int, height: int, *, upper: bool = False) -> dict[str, float]:
    key_x, key_y = ("xNorm", "yNorm") if upper else ("xnorm", "ynorm")
    return {key_x: x / width, key_y: y / height}


def internal_label(label: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """One label (syncd's schema) -> RedBrick's internal label object."""
    out: dict[str, Any] = {"category": label["label"], "attributes": attribute_list(label["attributes"])}
    kind = label["type"]
    if kind == "classification":
        out["seriesclassify"] = True
    elif kind == "box":
        out["bbox2d"] = {**_norm(label["x"], label["y"], width, height),
                         "wnorm": label["width"] / width, "hnorm": label["height"] / height}
    elif kind == "point":
        out["point"] = _norm(label["x"], label["y"], width, height)
    elif kind in ("polygon", "polyline"):
        out[kind] = [_norm(x, y, width, height) for x, y in label["points"]]
    else:
        raise ValueError(f"RedBrick has no label type for {kind!r}")
    return out


def _public(label: dict[str, Any], width: int, height: int) -> tuple[str, dict[str, Any]]:
    """``(series key, public object)`` for one label."""
    common: dict[str, Any] = {"category": label["label"]}
    if label["attributes"]:
        common["attributes"] = dict(label["attributes"])
    kind = label["type"]
    if kind == "classification":
        return "classifications", common
    if kind == "box":
        return "boundingBoxes", {"pointTopLeft": _norm(label["x"], label["y"], width, height, upper=True),
                                 "wNorm": label["width"] / width, "hNorm": label["height"] / height, **common}
    if kind == "point":
        return "landmarks", {"point": _norm(label["x"], label["y"], width, height, upper=True), **common}
    points = [_norm(x, y, width, height, upper=True) for x, y in label["points"]]
    return ("polygons" if kind == "polygon" else "polylines"), {"points": points, **common}


def to_redbrick(upload) -> RedBrickLabels:
    """RedBrick labels (both forms) and the NIfTI segmentation for ``upload``."""
    labels = labels_of(upload)
    width, height = upload.width, upload.height
    internal, series = [], {}
    for label in labels:
        if label["type"] not in SUPPORTED_TYPES:
            continue  # reported in unsupported
        internal.append(internal_label(label, width, height))
        key, obj = _public(label, width, height)
        series.setdefault(key, []).append(obj)
    mask = mask_of(upload)
    nifti = None
    if mask is not None:
        nifti, instances = nifti_instances(mask)
        for instance, name in instances:
            internal.append({"category": name, "attributes": [], "dicom": {"instanceid": instance}, "volumeindex": 0})
        series["segmentMap"] = {str(instance): {"category": name} for instance, name in instances}
    lost = unsupported_labels(labels, label_types=LABEL_TYPES, single_classification=SINGLE_CLASSIFICATION,
                              has_mask=mask is not None)
    return RedBrickLabels(labels=internal, series=series, nifti=nifti, unsupported=lost)
