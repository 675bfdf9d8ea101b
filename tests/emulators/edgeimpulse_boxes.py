"""Bounding boxes in the Edge Impulse emulator (a mixin of EdgeImpulseEmulator).

Platform reference Part 1 §2.1 and §2.3:

- Ingestion: ``x-bounding-boxes`` (a JSON array ``[{label, x, y, width, height}]``; the
  header applies to the whole request, so it is refused when the request holds more than
  one image) or a ``bounding_boxes.labels`` part
  ``{"version": 1, "type": "bounding-box-labels", "boundingBoxes": {<file name>: [...]}}``
  (per file; it wins over the header). Coordinates are numbers, width and height > 0; they
  are stored as whole pixels, because Studio's ``BoundingBox`` model has ints. A project
  whose labeling method is not ``object_detection`` drops ingested boxes silently, as
  the platform's documentation says.
- Studio: ``POST /v1/api/{pid}/raw-data/{sid}/bounding-boxes`` with
  ``{"boundingBoxes": [...]}``: strict ints (the generated client's ``StrictInt``), a
  non-empty label, width and height > 0, x and y >= 0. It REPLACES the sample's list, so
  sending the same list again changes nothing.

Any violation is a 400 ``{"success": false, "error": ...}``, as Studio's request validation.
"""

from __future__ import annotations

import json
import time

from tests.emulators.base import Part, Request, Response, json_response, route
from tests.emulators.edgeimpulse_org import fail

BOX_FIELDS = ("label", "x", "y", "width", "height")
LABELS_FILE = "bounding_boxes.labels"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_boxes(boxes, *, integers: bool, where: str) -> list[dict]:
    """The boxes as stored (five fields, whole pixels); ValueError naming the problem."""
    if not isinstance(boxes, list):
        raise ValueError(f"{where}: expected a list of boxes, got {type(boxes).__name__}")
    stored = []
    for n, box in enumerate(boxes):
        if not isinstance(box, dict):
            raise ValueError(f"{where}[{n}]: expected an object {{label, x, y, width, height}}")
        if not isinstance(box.get("label"), str) or not box["label"]:
            raise ValueError(f"{where}[{n}].label: a non-empty string is required")
        for key in BOX_FIELDS[1:]:
            value = box.get(key)
            if not _number(value) or (integers and not isinstance(value, int)):
                raise ValueError(f"{where}[{n}].{key}: {'an integer' if integers else 'a number'} is required")
        if box["width"] <= 0 or box["height"] <= 0 or (integers and (box["x"] < 0 or box["y"] < 0)):
            raise ValueError(f"{where}[{n}]: width and height must be > 0 and x, y >= 0")
        stored.append({"label": box["label"], **{k: int(round(box[k])) for k in BOX_FIELDS[1:]}})
    return stored


def ingested_boxes(request: Request, files: list[Part]) -> dict[str, list[dict]]:
    """Boxes per image file name of an ingestion request (ValueError when malformed)."""
    images = [p.filename for p in files if not p.filename.endswith(".labels")]
    per_file: dict[str, list[dict]] = {}
    header = request.header("x-bounding-boxes")
    if header is not None:
        try:
            boxes = check_boxes(json.loads(header), integers=False, where="x-bounding-boxes")
        except json.JSONDecodeError as exc:
            raise ValueError(f"x-bounding-boxes is not valid JSON: {exc}") from None
        if len(images) > 1 and boxes:
            raise ValueError("x-bounding-boxes applies to one image per request; send one request per image")
        per_file.update({name: boxes for name in images})
    for part in files:
        if part.filename != LABELS_FILE:
            continue
        try:
            body = json.loads(part.data)
        except ValueError as exc:
            raise ValueError(f"{LABELS_FILE} is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("version") != 1 or body.get("type") != "bounding-box-labels" \
                or not isinstance(body.get("boundingBoxes"), dict):
            raise ValueError(f"{LABELS_FILE} must be {{\"version\": 1, \"type\": \"bounding-box-labels\", "
                             "\"boundingBoxes\": {file name: [...]}}")
        for name, boxes in body["boundingBoxes"].items():
            per_file[name] = check_boxes(boxes, integers=False, where=f"{LABELS_FILE}[{name!r}]")
    return per_file


class BoxRoutes:
    """Mixin: the host provides lock, ``_sample``, ``_no_sample`` and ``_json_body``."""

    @staticmethod
    def boxes_kept(project: dict, boxes: list[dict]) -> list[dict]:
        """What ingestion keeps: nothing unless the project labels bounding boxes."""
        return boxes if project.get("labelingMethod") == "object_detection" else []

    @route("POST", r"/v1/api/(?P<pid>\d+)/raw-data/(?P<sid>\d+)/bounding-boxes")
    def set_bounding_boxes(self, request: Request) -> Response:
        body, error = self._json_body(request)
        if error:
            return error
        if not isinstance(body, dict) or "boundingBoxes" not in body:
            return fail("Body must be {\"boundingBoxes\": [{label, x, y, width, height}]}", 400)
        try:
            boxes = check_boxes(body["boundingBoxes"], integers=True, where="boundingBoxes")
        except ValueError as exc:
            return fail(str(exc), 400)
        with self.lock:
            sample = self._sample(request)
            if sample is None:
                return self._no_sample(request)
            sample["boundingBoxes"] = boxes
            sample["lastModified"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return json_response({"success": True})
