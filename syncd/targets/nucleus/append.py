"""The append request: up to 10 items and their images in one multipart body, as the official
SDK sends a batch of local files (``DatasetItemUploader._build_form_data_fn`` of scale-nucleus
0.22.3; docs/platforms/nucleus.md).

``POST dataset/{id}/append?async=1``, ``multipart/form-data``:

- one ``items`` part (no file name, ``application/json``): the JSON list of the items'
  payloads (``payload.item_payload``, each with ``"update": true``), as ``json.dumps`` of
  the list writes it;
- one ``image`` part per item, in the same order: file name = the item's ``image_url``
  percent-encoded like aiohttp (``payload.part_filename``), type ``image/<suffix>`` (the
  SDK's ``image/jpg`` for ``.jpg``).

The body is assembled here in one ``bytes.join`` (each image copied once), not through
requests' generic multipart encoder; the wire shape is the SDK's (tests/platforms/nucleus/
test_sdk.py compares them part by part).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from syncd.targets.base import Upload
from syncd.targets.nucleus.payload import image_url, item_payload, part_filename

MAX_FILES = 10  # the SDK refuses local_files_per_upload_request > 10


def item_json(upload: Upload) -> str:
    """The item's payload as JSON; ValueError/TypeError when its metadata cannot be
    (NaN, infinity, a value JSON has no form for)."""
    return json.dumps(item_payload(upload), allow_nan=False)


def _head(boundary: str, name: str, filename: str | None, content_type: str) -> bytes:
    disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
    return (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode("latin-1")


def multipart(uploads: Sequence[Upload], items: Sequence[str]) -> tuple[bytes, str]:
    """The append body for ``uploads`` (``items``: their ``item_json``) and its Content-Type."""
    assert 1 <= len(uploads) <= MAX_FILES and len(items) == len(uploads)
    boundary = os.urandom(16).hex()
    chunks = [_head(boundary, "items", None, "application/json"), ("[" + ", ".join(items) + "]").encode(), b"\r\n"]
    for upload in uploads:
        suffix = upload.image_suffix.lstrip(".") or "octet-stream"
        # The SDK's part type is image/<suffix> (image/jpg for .jpg): what the server sees daily.
        chunks += [_head(boundary, "image", part_filename(image_url(upload)), f"image/{suffix}"), upload.image,
                   b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
