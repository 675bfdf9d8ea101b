"""Pure converters from an item to Scale Nucleus payloads, no I/O (docs/platforms/nucleus.md):
the append's item JSON and the image part's file name (``item_payload``, ``image_url``,
``part_filename``), and the annotation payloads of its labels and mask.

``to_nucleus(upload)`` returns what ``POST dataset/{id}/annotate`` and
``POST dataset/{id}/add_taxonomy`` need, in the shapes scale-nucleus' ``to_payload()``
builds (tests/platforms/nucleus/test_payload.py compares them):

- box -> ``box``; polygon -> ``polygon``; polyline -> ``line``; keypoints -> ``keypoints``
  (unnamed keypoints are named by position, ``"0"``, ``"1"``...); point -> ``keypoints``
  with one keypoint named after the label (Nucleus has no point type);
- classification -> ``category`` in the taxonomy ``taxonomy_name`` (one per item: extra
  classifications are reported in ``unsupported``, the first is sent), and an
  ``add_taxonomy`` body with ``update: true`` (which only appends labels) so the taxonomy
  is created as needed;
- attributes -> the annotation's ``metadata``;
- mask -> one segmentation: ``mask_png`` (8-bit class indices) to upload under ``mask_name``
  plus ``[{"label", "index"}]`` for the classes present.

Annotation ids are deterministic: ``syncd:<reference_id>:<position>:<type>`` (position in
the sidecar's ``labels``), so re-sending with ``update: true`` overwrites instead of adding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncd.labels.masks import index_png, mask_of, segments
from syncd.labels.support import labels_of, unsupported_labels
from syncd.targets.base import Upload

#: What Nucleus can represent (NucleusTarget.label_types): point -> a keypoints annotation
#: with one keypoint; polyline -> "line". One category per item (SINGLE_CLASSIFICATION).
LABEL_TYPES = frozenset({"classification", "box", "point", "polygon", "polyline", "keypoints", "mask", "attributes"})
SINGLE_CLASSIFICATION = True


def image_url(upload: Upload) -> str:
    """The ``image_url`` of the item and the file name of its image part: the item key
    with the image's suffix, a relative path as the SDK sends for local files (the
    machine's own directories are not sent to the platform)."""
    return upload.key + upload.image_suffix


def part_filename(name: str) -> str:
    """The file name as aiohttp (the SDK's multipart client) puts it on the wire:
    percent-encoded with no safe characters (``cam1/a.png`` -> ``cam1%2Fa.png``)."""
    return quote(name, safe="")


def item_payload(upload: Upload) -> dict[str, Any]:
    """The item JSON of the append's ``items`` part (the SDK's ``DatasetItem.to_payload``
    plus ``update``)."""
    payload: dict[str, Any] = {
        "metadata": upload.metadata,
        "reference_id": upload.key,
        "image_url": image_url(upload),
        "update": True,
    }
    # Privacy-mode datasets require the size; the SDK sends it only when truthy.
    if upload.width and upload.height:
        payload["width"], payload["height"] = upload.width, upload.height
    return payload


@dataclass(frozen=True)
class NucleusAnnotations:
    """``annotations``: the list for ``{"annotations": [...], "update": true}``;
    ``taxonomies``: ``add_taxonomy`` bodies; ``segmentation``: the segmentation payload
    whose ``mask_url`` is ``mask_name`` (the multipart file name of ``mask_png``)."""

    annotations: list[dict[str, Any]]
    taxonomies: list[dict[str, Any]]
    segmentation: dict[str, Any] | None
    mask_png: bytes | None
    unsupported: list[str]


def annotation_id(reference_id: str, position: int | str, kind: str) -> str:
    return f"syncd:{reference_id}:{position}:{kind}"


def _common(label: dict, kind: str, reference_id: str, position: int) -> dict[str, Any]:
    return {"label": label["label"], "type": kind, "geometry": {}, "reference_id": reference_id,
            "annotation_id": annotation_id(reference_id, position, kind), "metadata": dict(label["attributes"])}


def _vertices(points: list) -> list[dict[str, float]]:
    return [{"x": x, "y": y} for x, y in points]


def keypoint_names(points: list[dict[str, Any]]) -> list[str]:
    """The keypoints' names; an unnamed one is named by its position ("2"), made unique
    (Nucleus refuses repeated names) should the user have used that name elsewhere."""
    taken = {p["name"] for p in points if p["name"] is not None}
    names = []
    for i, point in enumerate(points):
        name = point["name"]
        if name is None:
            name = str(i)
            while name in taken:
                name += "'"
            taken.add(name)
        names.append(name)
    return names


def convert_label(label: dict[str, Any], *, reference_id: str, position: int, taxonomy_name: str) -> dict[str, Any]:
    """One label (syncd's schema) -> one Nucleus annotation payload."""
    kind = label["type"]
    if kind == "classification":
        return {"label": label["label"], "type": "category", "geometry": {}, "reference_id": reference_id,
                "metadata": dict(label["attributes"]), "track_reference_id": None, "task_id": None,
                "taxonomy_name": taxonomy_name}
    if kind == "box":
        out = _common(label, "box", reference_id, position)
        out["geometry"] = {"x": label["x"], "y": label["y"], "width": label["width"], "height": label["height"]}
        out.update(embedding_vector=None, track_reference_id=None, task_id=None)
        return out
    if kind in ("polygon", "polyline"):
        out = _common(label, "polygon" if kind == "polygon" else "line", reference_id, position)
        out["geometry"] = {"vertices": _vertices(label["points"])}
        if kind == "polygon":
            out["embedding_vector"] = None
        out.update(track_reference_id=None, task_id=None)
        return out
    if kind == "point":
        out = _common(label, "keypoints", reference_id, position)
        out["geometry"] = {"keypoints": [{"x": label["x"], "y": label["y"], "visible": True}],
                           "names": [label["label"]], "skeleton": []}
        out.update(track_reference_id=None, task_id=None)
        return out
    if kind == "keypoints":
        out = _common(label, "keypoints", reference_id, position)
        points = label["points"]
        out["geometry"] = {
            "keypoints": [{"x": p["x"], "y": p["y"], "visible": p["visible"]} for p in points],
            "names": keypoint_names(points),
            "skeleton": [list(pair) for pair in label["skeleton"]],
        }
        out.update(track_reference_id=None, task_id=None)
        return out
    raise ValueError(f"unknown label type {kind!r}")  # parse_labels rules this out


def to_nucleus(upload, *, reference_id: str | None = None, taxonomy_name: str = "syncd",
               mask_name: str | None = None) -> NucleusAnnotations:
    """Nucleus payloads for ``upload``'s labels and mask.

    ``reference_id`` defaults to ``upload.key``; ``mask_name`` (the segmentation's
    ``mask_url`` and the multipart file name of ``mask_png``) to ``<reference_id>.mask.png``.
    """
    reference_id = reference_id or upload.key
    labels = labels_of(upload)
    annotations, categories = [], []
    for position, label in enumerate(labels):
        if label["type"] == "classification":
            if categories:
                continue  # one category per item and taxonomy; reported in unsupported
            categories.append(label["label"])
        annotations.append(convert_label(label, reference_id=reference_id, position=position,
                                         taxonomy_name=taxonomy_name))
    taxonomies = []
    all_classes = sorted({label["label"] for label in labels if label["type"] == "classification"})
    if all_classes:
        taxonomies.append({"taxonomy_name": taxonomy_name, "type": "category", "labels": all_classes, "update": True})
    mask = mask_of(upload)
    segmentation = png = None
    if mask is not None:
        png = index_png(mask)
        segmentation = {"type": "mask", "mask_url": mask_name or f"{reference_id}.mask.png",
                        "annotations": segments(mask), "annotation_id": annotation_id(reference_id, "mask", "mask"),
                        "reference_id": reference_id}
    lost = unsupported_labels(labels, label_types=LABEL_TYPES, single_classification=SINGLE_CLASSIFICATION,
                              has_mask=mask is not None)
    return NucleusAnnotations(annotations=annotations, taxonomies=taxonomies, segmentation=segmentation,
                              mask_png=png, unsupported=lost)
