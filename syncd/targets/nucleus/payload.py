"""Pure converters from an item to Nucleus payloads (no I/O): the append's item JSON and
the image part's file name (docs/platforms/nucleus.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from syncd.targets.base import Upload


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
