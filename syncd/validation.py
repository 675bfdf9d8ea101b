"""How items are validated when read: image limits, label and mask checks.

``read_options`` builds the keyword arguments ``items.read_item`` takes, so the coordinator
(at settle time) and the upload workers (at send time) validate the same way.
"""

from __future__ import annotations

from typing import Any


def read_options(max_pixels: int) -> dict[str, Any]:
    return {"max_pixels": max_pixels, "validate_labels": None, "validate_mask": None}
