"""Annotations, recipes and ontologies of the Dataloop emulator (platform reference Part 2
§1.4–1.6), as a mixin of ``DataloopEmulator`` (its state: ``items``, ``annotations``,
``recipes``, ``ontologies`` under ``lock``).

- ``POST /items/{id}/annotations``: a JSON array; every element is checked for the shapes
  dtlpy sends (``annotation_problem``): a known type, a label, coordinates of that type's
  shape, a binary mask as an RGBA PNG data URL the size of the item's image, ``itemId`` /
  ``datasetId`` (when given) naming this item. One bad element refuses the whole request
  with 400 and stores nothing. POST adds, never replaces; the reply lists the created
  annotations with ids.
- ``DELETE /annotations/{id}`` (404 when gone), ``PUT`` (a diff, deep-merged), ``GET``;
  ``GET /items/{id}/annotations``; the annotation query lives with the item query.
- ``GET /recipes/{id}``, ``GET /ontologies/{id}``, ``PATCH /ontologies/{id}/labels`` (upsert
  or update only) and ``/addLabels`` (add only); tags must be non-empty strings and colours
  ``#rrggbb``.

Test hooks: ``refuse_annotations`` (a message: the next annotation POSTs answer 400 with it,
as many as ``refuse_annotations_times``) and ``ontology_readonly`` (label PATCHes answer
403, like a key without the developer role).
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import re
import time
from numbers import Real

from PIL import Image

from tests.emulators.base import Request, Response, json_response, route
from tests.emulators.dataloop_query import deep_merge

API = "/api/v1"
ID = r"(?P<id>[^/]+)"
TYPES = frozenset({"box", "cube", "cube_3d", "class", "comparison", "ellipse", "point", "segment", "polyline", "pose",
                   "binary", "subtitle", "text_mark", "gis", "ref_semantic_3d", "polyline_3d", "text", "ref_image"})
DATA_URL = "data:image/png;base64,"
HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


def _is_xy(point) -> bool:
    return (isinstance(point, dict) and all(isinstance(point.get(c), Real) and not isinstance(point.get(c), bool)
                                            for c in ("x", "y")))


def _rings(coordinates, least: int) -> str | None:
    if not isinstance(coordinates, list) or not coordinates or isinstance(coordinates[0], dict):
        return "coordinates must be a list of rings (lists of {x, y}), not points"
    for ring in coordinates:
        if not isinstance(ring, list) or len(ring) < least or not all(map(_is_xy, ring)):
            return f"every ring needs at least {least} points {{x, y}}"
    return None


def _binary(coordinates, size: tuple[int, int] | None) -> str | None:
    if not isinstance(coordinates, str) or not coordinates.startswith(DATA_URL):
        return f"a binary annotation's coordinates must be a {DATA_URL}... URL"
    try:
        with Image.open(io.BytesIO(base64.b64decode(coordinates[len(DATA_URL):], validate=True))) as image:
            if image.format != "PNG" or image.mode != "RGBA":
                return f"the mask must be an RGBA PNG, not {image.format} {image.mode}"
            if size is not None and image.size != size:
                return f"the mask is {image.size[0]}x{image.size[1]} but the item is {size[0]}x{size[1]}"
            image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        return f"the mask cannot be decoded: {exc}"
    return None


def annotation_problem(annotation, item: dict) -> str | None:
    """What is wrong with one element of an annotations POST for ``item``, or None."""
    if not isinstance(annotation, dict):
        return "each annotation must be a JSON object"
    kind, label, coordinates = annotation.get("type"), annotation.get("label"), annotation.get("coordinates")
    if kind not in TYPES:
        return f"unknown annotation type {kind!r}"
    if not isinstance(label, str) or not label:
        return "label must be a non-empty string"
    for field in ("itemId", "datasetId"):
        if annotation.get(field) not in (None, item["id" if field == "itemId" else "datasetId"]):
            return f"{field} {annotation[field]!r} does not match the item"
    metadata = annotation.get("metadata", {})
    if not isinstance(metadata, dict) or not isinstance(metadata.get("system", {}), dict):
        return "metadata and metadata.system must be objects"
    if not isinstance(metadata.get("system", {}).get("attributes", {}), (dict, list)):
        return "metadata.system.attributes must be an object"
    if kind == "class":
        return None if coordinates in (None, [], {}) else "a class annotation has no coordinates"
    if kind == "point":
        return None if _is_xy(coordinates) else "a point's coordinates are {x, y, z}"
    if kind == "box":
        ok = isinstance(coordinates, list) and len(coordinates) in (2, 3) and all(map(_is_xy, coordinates[:2]))
        return None if ok else "a box's coordinates are [top-left, bottom-right] as {x, y, z}"
    if kind == "segment":
        return _rings(coordinates, 3)
    if kind == "polyline":
        return _rings(coordinates, 2)
    if kind == "binary":
        system = item["metadata"]["system"]
        size = (system["width"], system["height"]) if "width" in system and "height" in system else None
        return _binary(coordinates, size)
    return None


def error(status: int, message: str) -> Response:
    return json_response({"message": message, "status": status}, status, **{"x-request-id": f"req-{time.time_ns()}"})


class AnnotationRoutes:
    """The annotation, recipe and ontology routes of DataloopEmulator."""

    refuse_annotations: str | None = None
    refuse_annotations_times = 1
    ontology_readonly = False

    def annotations_of(self, item_id: str) -> list[dict]:
        """The item's annotations, oldest first (copies)."""
        with self.lock:
            return [copy.deepcopy(a) for a in self.annotations.values() if a["itemId"] == item_id]

    @route("POST", f"{API}/items/{ID}/annotations")
    def create_annotations(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return error(400, "the body must be JSON")
        with self.lock:
            item = self.items.get(request.params["id"])
            if item is None:
                return error(404, "Item not found")
            if not isinstance(body, list):
                return error(400, "expected a JSON array of annotations")
            for index, annotation in enumerate(body):
                problem = annotation_problem(annotation, item)
                if problem:
                    return error(400, f"annotation {index}: {problem}")
            if self.refuse_annotations:
                message = self.refuse_annotations
                self.refuse_annotations_times -= 1
                if self.refuse_annotations_times <= 0:
                    self.refuse_annotations = None
                return error(400, message)
            created = []
            for annotation in body:
                annotation = {**copy.deepcopy(annotation), "id": self.new_id(), "itemId": item["id"],
                              "datasetId": item["datasetId"], "createdAt": self._now(),
                              "creator": self.claims(request).get("email")}
                annotation.setdefault("metadata", {}).setdefault("system", {})
                self.annotations[annotation["id"]] = annotation
                created.append(copy.deepcopy(annotation))
            self._count_annotations(item)
            return json_response(created)

    def _count_annotations(self, item: dict) -> None:
        item["annotationsCount"] = sum(1 for a in self.annotations.values() if a["itemId"] == item["id"])
        item["annotated"] = item["annotationsCount"] > 0

    @route("GET", f"{API}/items/{ID}/annotations")
    def list_annotations(self, request: Request) -> Response:
        return json_response(self.annotations_of(request.params["id"]))

    @route("GET", f"{API}/annotations/{ID}")
    def get_annotation(self, request: Request) -> Response:
        with self.lock:
            annotation = copy.deepcopy(self.annotations.get(request.params["id"]))
        return json_response(annotation) if annotation else error(404, "Annotation not found")

    @route("PUT", f"{API}/annotations/{ID}")
    def put_annotation(self, request: Request) -> Response:
        with self.lock:
            annotation = self.annotations.get(request.params["id"])
            if annotation is None:
                return error(404, "Annotation not found")
            deep_merge(annotation, {k: v for k, v in request.json().items() if k not in ("id", "itemId", "datasetId")})
            return json_response(copy.deepcopy(annotation))

    @route("DELETE", f"{API}/annotations/{ID}")
    def delete_annotation(self, request: Request) -> Response:
        with self.lock:
            annotation = self.annotations.pop(request.params["id"], None)
            if annotation is None:
                return error(404, "Annotation not found")
            if annotation["itemId"] in self.items:
                self._count_annotations(self.items[annotation["itemId"]])
        return Response(200, b"")

    @route("GET", f"{API}/recipes/{ID}")
    def get_recipe(self, request: Request) -> Response:
        recipe = self.recipes.get(request.params["id"])
        return json_response(recipe) if recipe else error(404, "Recipe not found")

    @route("GET", f"{API}/ontologies/{ID}")
    def get_ontology(self, request: Request) -> Response:
        with self.lock:
            ontology = copy.deepcopy(self.ontologies.get(request.params["id"]))
        return json_response(ontology) if ontology else error(404, "Ontology not found")

    @route("PATCH", f"{API}/ontologies/{ID}/(?P<op>labels|addLabels)")
    def patch_labels(self, request: Request) -> Response:
        body = request.json()
        nodes = body.get("labelsNode") if isinstance(body, dict) else None
        if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
            return error(400, "expected {labelsNode: [...]}")
        for node in nodes:
            if not isinstance(node.get("tag"), str) or not node["tag"]:
                return error(400, "every label needs a tag")
            if node.get("color") is not None and not HEX_COLOUR.match(str(node["color"])):
                return error(400, f"label {node['tag']!r}: color must be #rrggbb, not {node['color']!r}")
        if self.ontology_readonly:
            return error(403, "Forbidden: the user may not edit this recipe")
        with self.lock:
            ontology = self.ontologies.get(request.params["id"])
            if ontology is None:
                return error(404, "Ontology not found")
            upsert = request.params["op"] == "addLabels" or body.get("upsert", False)
            roots = {r["value"]["tag"]: r for r in ontology["roots"]}
            for node in nodes:
                tag = node["tag"]
                value = {"tag": tag, "color": node.get("color"), "displayLabel": node.get("displayLabel", tag),
                         "attributes": node.get("attributes", []), "displayData": node.get("displayData", {})}
                if tag in roots:
                    if request.params["op"] == "labels":
                        roots[tag]["value"].update(value)
                elif upsert:
                    roots[tag] = {"value": value, "children": []}
                    ontology["roots"].append(roots[tag])
            return json_response(copy.deepcopy(ontology))
