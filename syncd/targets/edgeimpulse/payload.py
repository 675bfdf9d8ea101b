"""Pure converters for both Edge Impulse targets (no I/O): labels and masks as a sample's
label and bounding boxes, names, metadata markers, the image as Edge Impulse takes it, and
which listed sample is ours (docs/platforms/edgeimpulse.md).

Labels (``to_edgeimpulse``). An Edge Impulse image sample has one label and a list of
bounding boxes:

- classification -> the sample's ``label`` (the ``x-label`` header); one per sample: extra
  classifications are reported in ``unsupported`` and the first is used;
- box -> a bounding box ``{"label", "x", "y", "width", "height"}`` in whole pixels (rounded
  edges, at least 1 px, inside the image), the ``x-bounding-boxes`` header or a
  ``bounding_boxes.labels`` part (``bounding_boxes_file``);
- mask -> one box per connected region (8-connected) of each class, regions smaller than
  ``min_region_pixels`` left out;
- point, polygon, polyline, keypoints and attributes cannot be represented: reported in
  ``unsupported``, never sent.

Names. Edge Impulse names a sample after its file name without the extension, and names
need not be unique, so the name is derived from the item key alone (``sample_name``):
``cam1/frame_0001`` -> ``cam1__frame_0001``. Keys made of plain words keep this readable
form; any other key gets a sanitised form plus ``___`` and a hash of the key, so two keys
never share a name (see ``sample_name``).

Markers. Studio stores metadata as string -> string. Every sample / data item gets two
extra keys that tell a later lookup what it holds: ``syncd_version`` (the item version)
and ``syncd_image_sha256`` (the local image's SHA-256). They are reserved in sidecars.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from syncd.errors import PermanentError
from syncd.labels.support import labels_of, unsupported_labels
from syncd.targets.base import Upload

VERSION_KEY = "syncd_version"
IMAGE_KEY = "syncd_image_sha256"
RESERVED_KEYS = (VERSION_KEY, IMAGE_KEY)

MAX_NAME = 120  # longer readable names are shortened and hashed (the platform limit is unknown)
# A plain key part: words of letters, digits and '-' joined by single '.' or '_'. A key made
# only of such parts maps to its parts joined by '__', which is reversible (no part
# contains '__' or starts/ends with '_'), so plain keys never collide with each other.
_PLAIN_PART = re.compile(r"[A-Za-z0-9-]+(?:[._][A-Za-z0-9-]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")



def sample_name(key: str) -> str:
    """The Edge Impulse name of item ``key``: deterministic and different for every key.

    ``cam1/frame_0001`` -> ``cam1__frame_0001`` when every part of the key is plain (letters,
    digits, ``-``, and single ``.``/``_`` between them) and the result is short. Otherwise
    ``<sanitised>___<12 hex of sha256(key)>``: plain names never contain ``___``, and the
    hash separates the rest.
    """
    parts = key.split("/")
    readable = "__".join(parts)
    if all(_PLAIN_PART.fullmatch(p) for p in parts) and len(readable) <= MAX_NAME:
        return readable
    slug = _UNSAFE.sub("-", readable).strip("-._") or "item"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return f"{slug[:MAX_NAME - 15]}___{digest}"


def string_value(value: Any) -> str:
    """Studio metadata values are strings: strings stay, anything else is its JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def desired_metadata(upload: Upload, *, with_version: bool = True) -> dict[str, str]:
    """The complete string -> string metadata the remote item must hold for ``upload``."""
    clash = [k for k in RESERVED_KEYS if k in upload.metadata]
    if clash:
        raise PermanentError(
            f"item {upload.key!r}: the sidecar metadata key {clash[0]!r} is reserved by syncd on Edge Impulse; "
            "rename it"
        )
    metadata = {str(k): string_value(v) for k, v in upload.metadata.items()}
    metadata[IMAGE_KEY] = upload.image_sha256
    if with_version:
        metadata[VERSION_KEY] = upload.version
    return metadata


def user_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """``metadata`` without syncd's markers (what the user wrote, as strings)."""
    return {k: v for k, v in (metadata or {}).items() if k not in RESERVED_KEYS}


def image_for_upload(upload: Upload) -> tuple[str, bytes, str]:
    """``(suffix, bytes, mime type)`` of the image as Edge Impulse takes it: JPEG and PNG as
    they are, anything else (TIFF, BMP, WebP) converted to PNG losslessly."""
    if upload.image_format == "JPEG":
        return ".jpg", upload.image, "image/jpeg"
    if upload.image_format == "PNG":
        return ".png", upload.image, "image/png"
    from PIL import Image  # only needed for the rarer formats

    with Image.open(io.BytesIO(upload.image)) as img:
        if img.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "P"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
    return ".png", buffer.getvalue(), "image/png"


def holds_image(candidate: dict[str, Any], upload: Upload) -> bool:
    """Whether a listed sample / data item holds ``upload``'s image: by syncd's marker, or
    (for samples uploaded by other tools) by the platform's own ``sha256Hash``."""
    marker = (candidate.get("metadata") or {}).get(IMAGE_KEY)
    if marker is not None:
        return marker == upload.image_sha256
    return candidate.get("sha256Hash") == upload.image_sha256


def choose(candidates: list[dict[str, Any]], upload: Upload) -> tuple[dict[str, Any], list[int]]:
    """Of the remote items carrying this item's name, the one to keep and the ids of the rest.

    Prefer those holding this upload's image (``holds_image``), then the newest (highest
    id). The rest are left-overs of an interrupted image replacement and are deleted by
    ``deliver``. ``candidates`` are dicts with ``id`` and ``metadata``.
    """
    holding = [c for c in candidates if holds_image(c, upload)]
    keep = max(holding or candidates, key=lambda c: int(c["id"]))
    return keep, sorted(int(c["id"]) for c in candidates if c is not keep)


#: What an Edge Impulse project can represent (EdgeImpulseTarget.label_types): the
#: classification is the sample's label (one per sample: SINGLE_CLASSIFICATION), a mask
#: becomes boxes of its connected regions.
LABEL_TYPES = frozenset({"classification", "box", "mask"})
SINGLE_CLASSIFICATION = True


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
    mask = None
    if upload.mask is not None:
        # Only items with a mask need numpy (masks, regions): imported then, not at start-up.
        from syncd.labels.masks import mask_of
        from syncd.labels.regions import region_boxes

        mask = mask_of(upload)
        boxes += [{"label": r.label, "x": r.x, "y": r.y, "width": r.width, "height": r.height}
                  for r in region_boxes(mask, min_pixels=min_region_pixels)]
    lost = unsupported_labels(labels, label_types=LABEL_TYPES, single_classification=SINGLE_CLASSIFICATION,
                              has_mask=mask is not None)
    return EdgeImpulseLabels(label=sample_label, bounding_boxes=boxes, unsupported=lost)
