"""The ingestion requests of the Edge Impulse project target: which items may share one
request, the headers and ``data`` parts of a request, and the per-file results of its reply
(docs/platforms/edgeimpulse.md, "Uploads"). Pure: no I/O.

One request ``POST {ingestion_url}/api/{category}/files`` carries one or more ``data`` parts.
Its headers apply to every file in it (``x-label`` / ``x-no-label``, ``x-metadata``,
``x-bounding-boxes``; the category is in the path), so:

- An item alone (``single``): the headers carry its label, its complete metadata with
  syncd's markers (``syncd_version``, ``syncd_image_sha256``) and its boxes
  (``x-bounding-boxes``, as the Python SDK sends them; beyond 4 KiB a
  ``bounding_boxes.labels`` part, as the CLI sends it).
- Several items share a request (``shared``) only when everything the headers say is the
  same for each (``share_key``): the same label and the same user metadata. The metadata
  header then holds the user metadata without the markers (they differ per item), and each
  file's boxes travel in one ``bounding_boxes.labels`` part keyed by file name (the CLI's
  format). Never shared: updates, images converted to PNG (Edge Impulse's own hash of the
  file is then not the local image's), metadata too large for a header.

The reply lists one result per file, in the order of the image parts (the ``.labels`` part
goes last); each result is cross-checked by its ``fileName`` when it has one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncd.targets.base import Upload
from syncd.targets.edgeimpulse.payload import (
    IMAGE_KEY,
    EdgeImpulseLabels,
    desired_metadata,
    image_for_upload,
    sample_name,
    user_metadata,
)

UPLOAD_SOURCE = "SYNCD"
# x-metadata travels in a header; beyond this size it is set through Studio after the upload
# (servers commonly refuse headers over 8 KiB).
METADATA_HEADER_LIMIT = 4096
# Boxes beyond this go in a bounding_boxes.labels part (both headers together stay < 16 KiB).
BOXES_HEADER_LIMIT = 4096
LABELS_FILE = "bounding_boxes.labels"
# A shared request holds at most this many image bytes (files beyond start another request).
SHARED_BYTES = 32 * 1024 * 1024

#: One ``data`` part: (file name, bytes, content type).
Part = tuple[str, bytes, str]


@dataclass(frozen=True)
class Wanted:
    """What the sample must hold for one upload: its complete metadata (with the markers),
    label and annotations (``payload.to_edgeimpulse``)."""

    metadata: dict[str, str]
    label: str | None
    annotations: EdgeImpulseLabels

    @property
    def boxes(self) -> list[dict[str, Any]]:
        return self.annotations.bounding_boxes


@dataclass(frozen=True)
class Form:
    """One ingestion request: its headers (besides the key) and its ``data`` parts, images
    first. ``late_metadata``: the metadata did not fit in the header and is set through
    Studio after the upload."""

    headers: dict[str, str]
    parts: list[Part]
    names: list[str]
    late_metadata: bool = False


def _label_headers(label: str | None, headers: dict[str, str]) -> None:
    if label is None:
        headers["x-no-label"] = "1"
    else:
        headers["x-label"] = quote(label, safe="")  # the server URL-decodes it


def _base_headers(metadata: str, label: str | None, *, allow_duplicates: bool) -> dict[str, str]:
    headers = {"x-metadata": metadata, "x-upload-source": UPLOAD_SOURCE}
    _label_headers(label, headers)
    if not allow_duplicates:
        headers["x-disallow-duplicates"] = "1"
    return headers


def single(upload: Upload, wanted: Wanted, *, allow_duplicates: bool) -> Form:
    """The request for ``upload`` alone (see the module docstring)."""
    name = sample_name(upload.key)
    suffix, data, mime = image_for_upload(upload)
    header_metadata = json.dumps(wanted.metadata, sort_keys=True)
    late = len(header_metadata) > METADATA_HEADER_LIMIT
    if late:  # without the version marker, so a lookup never takes it for complete
        header_metadata = json.dumps(desired_metadata(upload, with_version=False), sort_keys=True)
        if len(header_metadata) > METADATA_HEADER_LIMIT:
            header_metadata = json.dumps({IMAGE_KEY: upload.image_sha256})
    headers = _base_headers(header_metadata, wanted.label, allow_duplicates=allow_duplicates)
    parts: list[Part] = [(name + suffix, data, mime)]
    if wanted.boxes:
        boxes_header = wanted.annotations.bounding_boxes_header()
        if len(boxes_header) <= BOXES_HEADER_LIMIT:
            headers["x-bounding-boxes"] = boxes_header
        else:
            parts.append((LABELS_FILE, wanted.annotations.bounding_boxes_file(name + suffix), "application/json"))
    return Form(headers=headers, parts=parts, names=[name], late_metadata=late)


def share_key(upload: Upload, wanted: Wanted) -> str | None:
    """What ``upload``'s request headers would say, when it may share a request with items
    saying the same; None when it must go alone (see the module docstring)."""
    if upload.previous is not None or upload.image_format not in ("JPEG", "PNG"):
        return None
    metadata = json.dumps(user_metadata(wanted.metadata), sort_keys=True)
    if len(metadata) > METADATA_HEADER_LIMIT:
        return None
    return json.dumps([wanted.label, metadata])


def shared(items: Sequence[tuple[Upload, Wanted]], *, allow_duplicates: bool) -> Form:
    """One request for ``items`` (two or more with the same ``share_key``)."""
    first = items[0][1]
    headers = _base_headers(json.dumps(user_metadata(first.metadata), sort_keys=True), first.label,
                            allow_duplicates=allow_duplicates)
    parts: list[Part] = []
    names: list[str] = []
    boxes: dict[str, list[dict[str, Any]]] = {}
    for upload, wanted in items:
        name = sample_name(upload.key)
        suffix, data, mime = image_for_upload(upload)
        parts.append((name + suffix, data, mime))
        names.append(name)
        if wanted.boxes:
            boxes[name + suffix] = wanted.boxes
    if boxes:
        body = {"version": 1, "type": "bounding-box-labels", "boundingBoxes": boxes}
        parts.append((LABELS_FILE, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
                      "application/json"))
    return Form(headers=headers, parts=parts, names=names)


def groups(keys: Sequence[str | None], sizes: Sequence[int]) -> list[list[int]]:
    """Indexes of uploads grouped into requests: the same key shares (in order, at most
    ``SHARED_BYTES`` of images per request), None goes alone."""
    out: list[list[int]] = []
    open_groups: dict[str, tuple[list[int], int]] = {}
    for index, (key, size) in enumerate(zip(keys, sizes)):
        if key is None:
            out.append([index])
            continue
        group, total = open_groups.get(key, (None, 0))
        if group is None or total + size > SHARED_BYTES:
            group, total = [], 0
            out.append(group)
        group.append(index)
        open_groups[key] = (group, total + size)
    return out


def file_results(body: dict[str, Any], names: Sequence[str]) -> list[dict[str, Any] | None]:
    """The result of each file ``names[i]`` (sample names) in an ingestion reply, or None
    when the reply does not say (that file's outcome is unknown). Positional (the image
    parts come first); a result whose ``fileName`` names another file of the request is
    looked for by name instead (a ``fileName`` naming none of them is taken as positional:
    the server may spell names its own way)."""
    listed = body.get("files")
    listed = [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    known = set(names)

    def named(entry: dict[str, Any]) -> str | None:
        value = entry.get("fileName")
        if not isinstance(value, str):
            return None
        if value in known:
            return value
        stem = value.rsplit(".", 1)[0]  # with the extension
        return stem if stem in known else None

    by_name = {n: r for r in listed if (n := named(r)) is not None}
    out: list[dict[str, Any] | None] = []
    for index, name in enumerate(names):
        entry = listed[index] if index < len(listed) else None
        if entry is None or named(entry) not in (None, name):
            entry = by_name.get(name)
        out.append(entry)
    return out


def encode(parts: Sequence[Part]) -> tuple[bytes, str]:
    """The multipart/form-data body of ``parts`` (every one named ``data``) and its content
    type. File names are syncd's sample names (letters, digits, ``._-``): nothing to escape."""
    boundary = os.urandom(16).hex()
    chunks: list[bytes] = []
    for filename, data, mime in parts:
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="{filename}"\r\n'
                      f"Content-Type: {mime}\r\n\r\n".encode("ascii"))
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
