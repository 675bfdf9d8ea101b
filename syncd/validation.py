"""How items are validated when read: image limits, label and mask checks.

``read_options`` builds the keyword arguments ``items.read_item`` takes, so the coordinator
(at settle time) and the upload workers (at send time) validate the same way:

- labels: ``syncd.labels.validate_labels`` (our schema, or RedBrick's label objects,
  normalised to our schema in pixel coordinates);
- masks: ``syncd.masks.check_mask`` (size, 8-bit, every colour/index in the class map);
  the class map travels with the upload as a plain dict.
"""

from __future__ import annotations

from typing import Any

from syncd.labels import validate_labels
from syncd.masks import check_mask


def read_options(max_pixels: int) -> dict[str, Any]:
    return {"max_pixels": max_pixels, "validate_labels": validate_labels, "validate_mask": check_mask}
