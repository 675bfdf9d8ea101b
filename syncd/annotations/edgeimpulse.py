"""Edge Impulse labels (platform reference Part 1 §2.1).

An Edge Impulse image sample has one label and a list of bounding boxes:

- classification -> the sample's ``label`` (the ``x-label`` header); one per sample: extra
  classifications are reported in ``unsupported`` and the first is used;
- box -> a bounding box ``{"label", "x", "y", "width", "height"}`` in whole pixels (rounded
  edges, at least 1 px, inside the image), the ``x-bounding-boxes`` header or a
  ``bounding_boxes.labels`` part (``bounding_boxes_file``);
- mask -> one box per connected region (8-connected) of each class, regions smaller than
  ``min_region_pixels`` left out;
- point, polygon, polyline, keypoints and attributes cannot be represented: reported in
  ``unsupported``, never sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncd.annotations import labels_of, unsupported_labels
from syncd.labels.masks import mask_of
from syncd.labels.regions import region_boxes


@dataclass(frozen=True)
class EdgeImpulseLabels:
    label: str | None
    bounding_boxes: list[dict[str, Any]]
    unsupported: list[str]

    def bounding_boxes_header(self) -> str:
        """The ``x-bounding-boxes`` header value (compact JSON array)."""
        return json.dumps(self.bounding_boxes, separators=(",", ":"), ensure_ascii=True)

    def bounding_boxes_file(self, file_name: str) -> bytes:
        """A ``bounding_boxes.labels`` part for one image file named ``file_name``."""
        body = {"version": 1, "type": "bounding-box-labels", "boundingBoxes": {file_name: self.bounding_boxes}}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pixel_box(label: str, x: float, y: float, width: float, height: float, *, image_width: int,
              image_height: int) -> dict[str, Any]:
    """A box with whole-pixel edges: edges rounded, at least 1 px, clipped to the image."""
    x0 = min(max(round(x), 0), image_width - 1)
    y0 = min(max(round(y), 0), image_height - 1)
    x1 = min(max(round(x + width), x0 + 1), image_width)
    y1 = min(max(round(y + height), y0 + 1), image_height)
    return {"label": label, "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}


def to_edgeimpulse(upload, *, min_region_pixels: int = 1) -> EdgeImpulseLabels:
    """Edge Impulse's sample label and bounding boxes for ``upload``."""
    labels = labels_of(upload)
    sample_label = next((label["label"] for label in labels if label["type"] == "classification"), None)
    boxes = [pixel_box(label["label"], label["x"], label["y"], label["width"], label["height"],
                       image_width=upload.width, image_height=upload.height)
             for label in labels if label["type"] == "box"]
    mask = mask_of(upload)
    if mask is not None:
        boxes += [{"label": r.label, "x": r.x, "y": r.y, "width": r.width, "height": r.height}
                  for r in region_boxes(mask, min_pixels=min_region_pixels)]
    return EdgeImpulseLabels(label=sample_label, bounding_boxes=boxes,
                             unsupported=unsupported_labels("edgeimpulse", labels, has_mask=mask is not None))
