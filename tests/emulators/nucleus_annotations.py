"""Ground-truth annotations in the Nucleus emulator (platform reference Part 1 §1.7, §1.8).

``AnnotationRoutes`` is mixed into ``NucleusEmulator``; the rules live in ``AnnotationStore``
(``BadRequest`` is a 400 with its message):

- ``POST dataset/{id}/annotate``, JSON ``{"update", "annotations"?, "segmentations"?}`` or
  multipart (a ``serialized_request`` part ``{"segmentations", "update"}`` plus one ``mask``
  part per segmentation, file name == its ``mask_url``, ``image/png``). A malformed request
  is 400; a well-formed annotation the server cannot apply (unknown ``reference_id``, a
  category outside its taxonomy, a mask of the wrong size) is listed in ``errors`` of a 200
  reply ``{"dataset_id", "annotations_processed", "annotations_ignored", "errors"?}``.
- Keys: ``(reference_id, annotation_id)`` for box/polygon/line/keypoints [SRC]; one mask
  per item [SRC]; one category per item and taxonomy [INF: the SDK has a separate
  MultiCategoryAnnotation]. An existing key is ignored with ``update=false`` and replaced
  with ``update=true``. Annotations without an id are always added.
- ``POST dataset/{id}/add_taxonomy`` ``{"taxonomy_name", "type": "category", "labels",
  "update"}``: an existing name is 400 unless ``update`` (labels are then appended) [INF].
- ``DELETE annotation/{dataset id}`` ``{"reference_ids", "keep_history"}`` (the SDK's
  ``Dataset.delete_annotations``) answers an async job that deletes every annotation of
  those items when it runs [SRC: the route and the job reply; the job's run is INF].
- ``grouped(ds, ref)`` is what ``GET dataset/{id}/refloc/{ref}`` answers under
  ``annotations``: lists keyed by type (``box``, ``polygon``, ``line``, ``keypoints``,
  ``category``, ``segmentation``), each annotation as sent (masks with a server URL).
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

from PIL import Image

from tests.emulators.base import Request, Response, json_response, route
from tests.emulators.nucleus_state import REMOTE_SCHEMES, BadRequest, NucleusState, json_object, new_id, update_flag

API = "/v1/nucleus"
DS = r"(?P<ds>[^/]+)"
TYPES = ("box", "polygon", "line", "keypoints", "category")
FIELDS = {"label", "type", "geometry", "reference_id", "annotation_id", "metadata", "track_reference_id", "task_id",
          "embedding_vector", "taxonomy_name"}
SEGMENTATION_FIELDS = {"type", "mask_url", "annotations", "annotation_id", "reference_id"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_geometry(kind: str, geometry: Any, where: str) -> None:
    if not isinstance(geometry, dict):
        raise BadRequest(f"{where}: geometry must be an object")
    if kind == "box":
        if not all(_number(geometry.get(k)) for k in ("x", "y", "width", "height")):
            raise BadRequest(f"{where}: a box needs numeric geometry x, y, width, height")
        if geometry["width"] < 0 or geometry["height"] < 0:
            raise BadRequest(f"{where}: box width and height must not be negative")
    elif kind in ("polygon", "line"):
        vertices = geometry.get("vertices")
        least = 3 if kind == "polygon" else 2
        if not isinstance(vertices, list) or len(vertices) < least:
            raise BadRequest(f"{where}: a {kind} needs a list of at least {least} vertices")
        if not all(isinstance(v, dict) and _number(v.get("x")) and _number(v.get("y")) for v in vertices):
            raise BadRequest(f"{where}: every vertex must be {{x, y}} numbers")
    elif kind == "keypoints":
        points, names, skeleton = geometry.get("keypoints"), geometry.get("names"), geometry.get("skeleton", [])
        if not isinstance(points, list) or not points or not isinstance(names, list):
            raise BadRequest(f"{where}: keypoints needs keypoints and names lists")
        if len(names) != len(points) or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise BadRequest(f"{where}: names must be unique strings, one per keypoint")
        for point in points:
            if not isinstance(point, dict) or not isinstance(point.get("visible"), bool):
                raise BadRequest(f"{where}: every keypoint needs a boolean visible")
            if point["visible"] and not (_number(point.get("x")) and _number(point.get("y"))):
                raise BadRequest(f"{where}: a visible keypoint needs numeric x and y")
        if not isinstance(skeleton, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(i, int) and 0 <= i < len(points) for i in e)
                for e in skeleton):
            raise BadRequest(f"{where}: skeleton must be [i, j] pairs of keypoint indices")
    elif geometry:
        raise BadRequest(f"{where}: a category has an empty geometry")


def check_annotation(annotation: Any, where: str) -> dict:
    if not isinstance(annotation, dict):
        raise BadRequest(f"{where} must be an object")
    unknown = sorted(set(annotation) - FIELDS)
    if unknown:
        raise BadRequest(f"{where}: unknown fields {unknown}")
    kind = annotation.get("type")
    if kind not in TYPES:
        raise BadRequest(f"{where}: type must be one of {list(TYPES)}, got {kind!r}")
    for name in ("label", "reference_id"):
        if not isinstance(annotation.get(name), str) or not annotation[name]:
            raise BadRequest(f"{where}: {name} must be a non-empty string")
    if annotation.get("annotation_id") is not None and not isinstance(annotation["annotation_id"], str):
        raise BadRequest(f"{where}: annotation_id must be a string")
    if not isinstance(annotation.get("metadata") or {}, dict):
        raise BadRequest(f"{where}: metadata must be an object")
    _check_geometry(kind, annotation.get("geometry", {}), where)
    return annotation


def check_segmentation(segmentation: Any, where: str) -> dict:
    if not isinstance(segmentation, dict):
        raise BadRequest(f"{where} must be an object")
    unknown = sorted(set(segmentation) - SEGMENTATION_FIELDS)
    if unknown:
        raise BadRequest(f"{where}: unknown fields {unknown}")
    if segmentation.get("type", "mask") != "mask" or not isinstance(segmentation.get("mask_url"), str):
        raise BadRequest(f"{where}: a segmentation needs type 'mask' and a mask_url")
    if not isinstance(segmentation.get("reference_id"), str) or not segmentation["reference_id"]:
        raise BadRequest(f"{where}: reference_id must be a non-empty string")
    segments = segmentation.get("annotations")
    if not isinstance(segments, list) or not all(
            isinstance(s, dict) and isinstance(s.get("label"), str) and isinstance(s.get("index"), int)
            and 0 <= s["index"] <= 255 and set(s) <= {"label", "index", "metadata"} for s in segments):
        raise BadRequest(f"{where}: annotations must be [{{label, index 0..255}}]")
    if len({s["index"] for s in segments}) != len(segments):
        raise BadRequest(f"{where}: two segments share an index")
    return segmentation


class AnnotationStore:
    """Annotations, masks and taxonomies of the emulator; called under its lock."""

    def __init__(self, state: NucleusState):
        self.state = state
        self.rows: dict[tuple[str, str], dict[tuple, dict]] = {}  # (dataset, ref) -> key -> stored payload
        self.taxonomies: dict[str, dict[str, list[str]]] = {}  # dataset -> taxonomy -> labels
        # Test hook: type ("box", "mask", "category"...) -> row error for every such annotation;
        # "taxonomy" -> add_taxonomy answers 400 with the message.
        self.reject: dict[str, str] = {}

    def _key(self, payload: dict) -> tuple:
        if payload.get("type") == "category":
            return ("category", payload.get("taxonomy_name"))
        if payload.get("type", "mask") == "mask" and "mask_url" in payload:
            return ("mask",)
        if payload.get("annotation_id") is None:
            return ("anonymous", new_id("ann"))
        return ("id", payload["annotation_id"])

    def _row_error(self, dataset_id: str, payload: dict, mask: bytes | None) -> str | None:
        ref = payload["reference_id"]
        item = self.state.items[dataset_id].get(ref)
        if item is None:
            return f"Item with id {ref} does not exist."
        kind = "mask" if "mask_url" in payload else payload["type"]
        if kind in self.reject:
            return self.reject[kind]
        if payload.get("type") == "category":
            taxonomies = self.taxonomies.get(dataset_id, {})
            name = payload.get("taxonomy_name")
            if name is None and len(taxonomies) == 1:
                name = payload["taxonomy_name"] = next(iter(taxonomies))
            if name not in taxonomies:
                return f"Taxonomy {name!r} does not exist in dataset {dataset_id}; add it with add_taxonomy"
            if payload["label"] not in taxonomies[name]:
                return f"Label {payload['label']!r} is not in taxonomy {name!r}"
        if "mask_url" in payload:
            if mask is None:
                if not payload["mask_url"].startswith(REMOTE_SCHEMES):
                    return f"Could not fetch mask {payload['mask_url']!r}: not a remote URL and no file uploaded"
                return None
            try:
                with Image.open(io.BytesIO(mask)) as image:
                    image.load()
                    fmt, mode, size = image.format, image.mode, image.size
            except Exception as exc:  # pillow raises many types for bad data
                return f"Could not decode mask {payload['mask_url']!r}: {exc}"
            if fmt != "PNG" or mode not in ("L", "P"):
                return f"Mask {payload['mask_url']!r} must be an 8-bit single-channel PNG, got {fmt} {mode}"
            if size != (item["width"], item["height"]):
                return f"Mask size {size} does not match the image size {(item['width'], item['height'])}"
        return None

    def annotate(self, dataset_id: str, payloads: list[dict], update: bool,
                 masks: dict[str, bytes] | None = None) -> dict:
        ids = [(p["reference_id"], p["annotation_id"]) for p in payloads if p.get("annotation_id") is not None]
        if len(set(ids)) != len(ids):
            raise BadRequest("duplicate (reference_id, annotation_id) pairs in one request")
        processed, ignored, errors = 0, 0, []
        for payload in payloads:
            payload = copy.deepcopy(payload)
            mask = None if masks is None else masks.get(payload.get("mask_url"))
            error = self._row_error(dataset_id, payload, mask)
            if error:
                errors.append(error)
                continue
            rows = self.rows.setdefault((dataset_id, payload["reference_id"]), {})
            key = self._key(payload)
            if key in rows and not update:
                ignored += 1
                continue
            if mask is not None:
                mask_id = new_id("mask")
                self.state.images[mask_id] = mask  # served by GET /images/{id}, like item images
                payload["mask_url"] = f"{self.state.base_url}/images/{mask_id}"
                old = rows.get(key)
                if old is not None:
                    self.state.images.pop(old["mask_url"].rsplit("/", 1)[-1], None)
            rows.pop(key, None)  # a replaced annotation moves to the end, as a new row would
            rows[key] = payload
            processed += 1
        reply = {"dataset_id": dataset_id, "annotations_processed": processed, "annotations_ignored": ignored}
        if errors:
            reply["errors"] = errors
        return reply

    def delete(self, dataset_id: str, refs: list[str]) -> list[str]:
        for ref in refs:
            for payload in self.rows.pop((dataset_id, ref), {}).values():
                if "mask_url" in payload:
                    self.state.images.pop(payload["mask_url"].rsplit("/", 1)[-1], None)
        return []

    def add_taxonomy(self, dataset_id: str, body: dict) -> dict:
        if "taxonomy" in self.reject:
            raise BadRequest(self.reject["taxonomy"])
        name, kind, labels, update = (body.get(k) for k in ("taxonomy_name", "type", "labels", "update"))
        if not isinstance(name, str) or not name or kind != "category" or not isinstance(update, bool):
            raise BadRequest("expected {taxonomy_name, type: 'category', labels, update}")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels) \
                or len(set(labels)) != len(labels):
            raise BadRequest("labels must be a non-empty list of distinct strings")
        taxonomies = self.taxonomies.setdefault(dataset_id, {})
        if name in taxonomies and not update:
            raise BadRequest(f"Taxonomy {name!r} already exists; pass update=true to add labels")
        status = "Taxonomy updated" if name in taxonomies else "Taxonomy created"
        known = taxonomies.setdefault(name, [])
        known.extend(label for label in labels if label not in known)
        return {"dataset_id": dataset_id, "taxonomy_name": name, "status": status}

    def grouped(self, dataset_id: str, ref: str) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        for payload in self.rows.get((dataset_id, ref), {}).values():
            kind = "segmentation" if "mask_url" in payload else payload["type"]
            groups.setdefault(kind, []).append(copy.deepcopy(payload))
        return groups

    def mask(self, dataset_id: str, ref: str) -> bytes | None:
        for payload in self.rows.get((dataset_id, ref), {}).values():
            if "mask_url" in payload:
                return self.state.images.get(payload["mask_url"].rsplit("/", 1)[-1])
        return None

    def drop_dataset(self, dataset_id: str) -> None:
        for key in [k for k in self.rows if k[0] == dataset_id]:
            self.delete(dataset_id, [key[1]])
        self.taxonomies.pop(dataset_id, None)


class AnnotationRoutes:
    """The annotation routes of ``NucleusEmulator`` (which provides ``state``, ``lock``,
    ``gt`` (an AnnotationStore), ``record``, ``_dataset`` and ``_call``)."""

    @route("POST", f"{API}/dataset/{DS}/annotate")
    def annotate(self, request: Request) -> Response:
        def handle(request):
            dataset_id = self._dataset(request)
            if request.arg("async") == "1":
                raise BadRequest("asynchronous annotation uploads are not emulated")
            multipart = (request.header("content-type", "") or "").startswith("multipart/form-data")
            body, masks = self._mask_request(request) if multipart else (json_object(request), None)
            allowed = {"segmentations", "update"} if multipart else {"annotations", "segmentations", "update"}
            if set(body) - allowed:
                raise BadRequest(f"unexpected fields {sorted(set(body) - allowed)} in the annotate request")
            annotations, segmentations = body.get("annotations", []), body.get("segmentations", [])
            if not isinstance(annotations, list) or not isinstance(segmentations, list) or not (
                    annotations or segmentations):
                raise BadRequest("annotations and segmentations must be lists, not both empty")
            payloads = [check_annotation(a, f"annotations[{i}]") for i, a in enumerate(annotations)]
            payloads += [check_segmentation(s, f"segmentations[{i}]") for i, s in enumerate(segmentations)]
            if masks is not None and sorted(masks) != sorted(s["mask_url"] for s in segmentations):
                raise BadRequest(f"mask parts {sorted(masks)} do not match the segmentations' mask_url")
            if self.record:
                self.annotation_journal.append({"dataset_id": dataset_id, "multipart": multipart, "body": body,
                                                "masks": masks, "parts": getattr(request, "_parts_seen", None)})
            return json_response(self.gt.annotate(dataset_id, payloads, update_flag(body), masks))
        return self._call(handle, request)

    def _mask_request(self, request: Request) -> tuple[dict, dict[str, bytes]]:
        try:
            parts = request.parts()
        except ValueError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        request._parts_seen = [(p.name, p.filename, p.content_type) for p in parts]
        serialized = [p for p in parts if p.name == "serialized_request"]
        masks = [p for p in parts if p.name == "mask"]
        if len(serialized) != 1 or len(serialized) + len(masks) != len(parts) or not masks:
            raise BadRequest("expected one serialized_request part and one or more mask parts")
        try:
            body = json.loads(serialized[0].text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"serialized_request is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("serialized_request must be a JSON object")
        files = {}
        for part in masks:
            if part.content_type != "image/png" or not (part.filename or "").endswith(".png"):
                raise BadRequest(f"mask part {part.filename!r} must be a .png file sent as image/png")
            files[part.filename] = part.data
        return body, files

    @route("POST", f"{API}/dataset/{DS}/add_taxonomy")
    def add_taxonomy(self, request: Request) -> Response:
        return self._call(
            lambda r: json_response(self.gt.add_taxonomy(self._dataset(r), json_object(r))), request)

    @route("DELETE", f"{API}/annotation/{DS}")
    def delete_annotations(self, request: Request) -> Response:
        def handle(request):
            dataset_id = self._dataset(request)
            body = json_object(request)
            refs = body.get("reference_ids")
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                raise BadRequest("reference_ids must be a non-empty list of reference ids")
            if not isinstance(body.get("keep_history", True), bool):
                raise BadRequest("keep_history must be a boolean")
            if self.record:
                self.annotation_journal.append({"dataset_id": dataset_id, "delete": refs, "body": body})
            job = self.state.new_job(dataset_id, [], "annotationDeletion",
                                     action=lambda: self.gt.delete(dataset_id, list(refs)))
            return json_response(job.info_json())
        return self._call(handle, request)

    # -- test helpers -------------------------------------------------------------------------
    def annotations(self, dataset_id: str, ref: str) -> dict[str, list[dict]]:
        with self.lock:
            return self.gt.grouped(dataset_id, ref)

    def mask(self, dataset_id: str, ref: str) -> bytes | None:
        with self.lock:
            return self.gt.mask(dataset_id, ref)

    def taxonomies(self, dataset_id: str) -> dict[str, list[str]]:
        with self.lock:
            return copy.deepcopy(self.gt.taxonomies.get(dataset_id, {}))
