"""Labels and masks of a Dataloop item, as its annotations (docs/platforms/dataloop.md).

What is sent is ``payload.to_dataloop``'s payload (the shapes dtlpy's
annotation definitions build), the way dtlpy's ``item.annotations.upload`` sends it: ``POST
/items/{id}/annotations`` with a JSON array of at most 100 annotations, each with its
``itemId`` and ``datasetId``. Labels the dataset's ontology lacks are added first, as
``dataset.add_label`` does (``PATCH /ontologies/{id}/labels`` with ``upsert: true``), with the
class map's colour; labels the ontology already has keep their colour, and that colour is
the RGB of the binary masks (as dtlpy's ``Segmentation`` takes it from the ontology).

Replacement, never duplication. A POST adds and never replaces, so every annotation syncd
makes carries ``metadata.user.syncd = {"key", "version", "source"}``. Syncing an item:

1. lists its annotations (``POST /datasets/{id}/query``, resource ``annotations``, keyset
   paging as the SDK) and keeps those tagged with the item's key: "ours";
2. deletes ours that are not wanted any more, one by one (``DELETE /annotations/{id}``, as
   the SDK), duplicates included;
3. posts the wanted ones that ours lack.

Compared by content (``signature``: type, label, coordinates, attributes), so a
re-send after a lost reply or a crash posts nothing twice, and an edit of one box re-sends
neither the other labels nor the (large) binary masks. Annotations people made in Dataloop
(untagged) are never touched.

When. The item marker's ``annotations_sha256`` (``metadata.user.syncd``) says what the
item's annotations were made from: ``annotations_digest`` (labels, mask, class map, size),
``"empty"`` for none, ``"pending"`` while they are being written and ``"incomplete"`` when
Dataloop refused some. The target PATCHes the marker after the annotations are written, so a
marker equal to this version's digest proves they are in place (``lookup`` relies on it):
unchanged labels cost nothing (metadata-only changes, re-sends), a crash or lost reply in
the middle is finished by the next attempt. The mask conversion (about 1.5 s for a 4K mask
with 20 classes) runs once per attempt, and only when annotations are written.

Refusals (4xx other than 401, e.g. a 400 on a payload, a 403 on the ontology for a key
without the developer role) never hold the image back: they are reported in the receipt's
``not_sent`` and the marker says ``"incomplete"``, so the next change of the item (or
``syncd retry --incomplete``) tries again. Transient trouble raises ``TransientError``; a 401
pauses the target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncd.errors import ItemError, LocalError, TransientError
from syncd.targets.base import Upload
from syncd.targets.dataloop.client import DataloopClient
from syncd.targets.dataloop.payload import DataloopAnnotations, to_dataloop
from syncd.targets.dataloop.wire import MARKER, user_metadata

log = logging.getLogger(__name__)

EMPTY = "empty"  # no labels and no mask
PENDING = "pending"  # the annotations are being written
INCOMPLETE = "incomplete"  # Dataloop refused some (see not_sent)
FORMAT = 1  # part of the digest: bump when the conversion changes, so annotations are sent again
BATCH = 100  # annotations per POST, as the SDK
BATCH_BYTES = 16 * 1024 * 1024  # and at most this much JSON (binary masks are large)
PAGE = 1000  # the query's largest page


def annotations_digest(upload: Upload) -> str:
    """A hash of everything the item's annotations are made from (EMPTY without any)."""
    if not upload.labels and upload.mask is None:
        return EMPTY
    source = {"format": FORMAT, "labels": upload.labels, "size": [upload.width, upload.height],
              "mask": None if upload.mask is None else hashlib.sha256(upload.mask).hexdigest(),
              "class_map": upload.class_map if upload.mask is not None else None}
    return hashlib.sha256(json.dumps(source, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def annotations_state(item: dict[str, Any]) -> str | None:
    """The item marker's ``annotations_sha256`` (None on items syncd did not mark with one)."""
    marker = user_metadata(item).get(MARKER)
    return marker.get("annotations_sha256") if isinstance(marker, dict) else None


def is_ours(annotation: Any, key: str) -> bool:
    if not isinstance(annotation, dict):
        return False
    tag = ((annotation.get("metadata") or {}).get("user") or {}).get(MARKER)
    return isinstance(tag, dict) and tag.get("key") == key


def signature(annotation: dict[str, Any]) -> str:
    """What makes two annotations the same for syncd: type, label, coordinates, attributes,
    the tag's key and whether it came from the labels or the mask. Not the tag's version nor
    the label's position: an annotation that did not change is kept, tagged by the version
    that made it, when labels before it are removed. Ids, dates and server fields aside."""
    metadata = annotation.get("metadata") or {}
    tag = (metadata.get("user") or {}).get(MARKER)
    if isinstance(tag, dict):
        tag = [tag.get("key"), str(tag.get("source")).split("[", 1)[0]]
    return json.dumps([annotation.get("type"), annotation.get("label"), annotation.get("coordinates"),
                       (metadata.get("system") or {}).get("attributes") or {}, tag], sort_keys=True)


def difference(ours: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """``(to delete, to post)``: ours that are not wanted (duplicates included), and wanted
    ones that ours lack, compared by ``signature`` as multisets."""
    left = Counter(map(signature, wanted))
    stale = []
    for annotation in ours:
        sig = signature(annotation)
        if left[sig] > 0:
            left[sig] -= 1
        else:
            stale.append(annotation)
    missing = []
    for annotation in wanted:
        sig = signature(annotation)
        if left[sig] > 0:
            left[sig] -= 1
            missing.append(annotation)
    return stale, missing


def batches(annotations: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """At most BATCH annotations and about BATCH_BYTES of JSON per request."""
    out: list[list[dict[str, Any]]] = []
    size = 0
    for annotation in annotations:
        weight = len(json.dumps(annotation))
        if not out or len(out[-1]) >= BATCH or (out[-1] and size + weight > BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(annotation)
        size += weight
    return out


@dataclass(frozen=True)
class SyncResult:
    """``state`` goes into the item marker; ``not_sent`` into the receipt."""

    state: str
    not_sent: tuple[str, ...] = ()


class Refused(Exception):
    """A 4xx answer (other than 401) to one annotation request: reported, not raised."""


class AnnotationSync:
    """Makes one item's annotations equal to its labels and mask, through the target's client."""

    def __init__(self, client: DataloopClient):
        self.client = client
        self._lock = threading.Lock()
        self._ontology: tuple[str | None, dict[str, str], str | None] | None = None  # (id, tag -> colour, problem)
        self._email: str | None = None

    def forget(self) -> None:
        """Read the ontology again next time (``check()`` calls this)."""
        with self._lock:
            self._ontology = None

    def remember_user(self, me: Any) -> None:
        """Keep the API key's user (a ``GET /users/me`` reply) for DELETE bodies."""
        with self._lock:
            if isinstance(me, dict) and me.get("email"):
                self._email = str(me["email"])

    # -- the sync -----------------------------------------------------------------------------
    def sync(self, item: dict[str, Any], upload: Upload, digest: str) -> SyncResult:
        """Make ``item``'s syncd annotations those of ``upload`` unless its marker says so."""
        if annotations_state(item) == digest:
            return SyncResult(digest)
        if digest == EMPTY and item.get("annotationsCount") == 0:
            return SyncResult(EMPTY)  # nothing to write and nothing to remove
        what = f"{self.client.name}: item {upload.key!r}"
        not_sent: list[str] = []
        wanted: list[dict[str, Any]] = []
        if digest != EMPTY:
            converted = self._convert(upload, not_sent)
            if converted is None:
                return SyncResult(INCOMPLETE, tuple(not_sent))
            wanted = [{**a, "itemId": str(item["id"]), "datasetId": self.client.dataset_id()}
                      for a in converted.annotations]
        try:
            stale, missing = difference(self._list_ours(item, upload.key), wanted)
            for annotation in stale:  # first, so a refusal below never leaves two versions
                self._delete(annotation)
            self._post(item, missing, not_sent)
        except Refused as exc:
            not_sent.append(str(exc))
        if not_sent:
            log.warning("%s: annotations not sent: %s", what, "; ".join(not_sent))
        return SyncResult(INCOMPLETE if not_sent else digest, tuple(not_sent))

    def _convert(self, upload: Upload, not_sent: list[str]) -> DataloopAnnotations | None:
        colours = self._colours(not_sent)
        try:
            converted = to_dataloop(upload, label_colors=colours)
        except (ItemError, LocalError, ValueError) as exc:  # validated already: only a race with an edit
            not_sent.append(f"labels and mask not converted: {exc}")
            return None
        missing = {name: colour for name, colour in converted.labels.items() if name not in colours}
        if missing:
            self._add_labels(missing, not_sent)
        return converted

    # -- requests -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, context: str, *, gone: str | None = None, **kwargs):
        """One request. A 404 returns None, or raises TransientError when ``gone`` says what
        is gone (the next attempt starts over); a 401 pauses the target, transient statuses
        raise, other 4xx raise Refused with the server's message; a 2xx is returned."""
        client = self.client
        response = client.request(method, path, context=context, **kwargs)
        status = response.status_code
        if status == 404 and gone is not None:
            raise TransientError(f"{client.context(context)}: {gone}; the next attempt starts over",
                                 outcome_unknown=False)
        if status == 404 and method == "DELETE":
            return None
        if 400 <= status < 500 and status not in (401, 408, 425, 429):
            raise Refused(f"{context}: Dataloop refused: {client.describe(response)}")
        client.raise_for_status(response, context)
        return response

    def _colours(self, not_sent: list[str]) -> dict[str, str]:
        """The ontology's label colours (tag -> ``#rrggbb``), read once per check()."""
        with self._lock:
            cached = self._ontology
        if cached is None:
            try:
                cached = self._read_ontology()
            except Refused as exc:
                cached = (None, {}, f"the dataset's ontology could not be read ({exc})")
            with self._lock:
                self._ontology = cached
        if cached[2]:
            not_sent.append(f"labels not added to the ontology: {cached[2]}")
        return dict(cached[1])

    def _read_ontology(self) -> tuple[str | None, dict[str, str], str | None]:
        client = self.client
        dataset_id = client.dataset_id()
        context = "reading the dataset's recipe"
        dataset = client.json(self._call("GET", f"/datasets/{quote(dataset_id, safe='')}", context), context)
        dataset = dataset if isinstance(dataset, dict) else {}
        recipes = ((dataset.get("metadata") or {}).get("system") or {}).get("recipes") or []
        if not recipes:
            return None, {}, "the dataset has no recipe"
        recipe = client.json(self._call("GET", f"/recipes/{quote(str(recipes[0]), safe='')}", context), context)
        ontology_ids = (recipe.get("ontologyIds") or []) if isinstance(recipe, dict) else []
        if not ontology_ids:
            return None, {}, f"recipe {recipes[0]} has no ontology"
        context = "reading the dataset's ontology"
        ontology_id = str(ontology_ids[0])
        ontology = client.json(self._call("GET", f"/ontologies/{quote(ontology_id, safe='')}", context), context)
        return ontology_id, label_colours(ontology), None

    def _add_labels(self, missing: dict[str, str], not_sent: list[str]) -> None:
        with self._lock:
            ontology_id = self._ontology[0] if self._ontology else None
        if ontology_id is None:
            return  # reported by _colours
        nodes = [{"tag": name, "color": colour, "displayData": {}} for name, colour in sorted(missing.items())]
        context = f"adding labels {sorted(missing)} to the ontology"
        try:
            response = self._call("PATCH", f"/ontologies/{quote(ontology_id, safe='')}/labels", context,
                                  json={"labelsNode": nodes, "upsert": True})
        except Refused as exc:
            not_sent.append(f"labels not added to the ontology: {exc}")
            return
        reply = self.client.json(response, context)
        colours = label_colours(reply) if isinstance(reply, dict) and "roots" in reply else {}
        with self._lock:
            if self._ontology is not None:
                self._ontology[1].update(colours or missing)

    def _list_ours(self, item: dict[str, Any], key: str) -> list[dict[str, Any]]:
        """The item's annotations tagged with ``key``, every page (keyset paging on id)."""
        item_id = str(item["id"])
        context = f"listing the annotations of item {item_id}"
        path = f"/datasets/{quote(self.client.dataset_id(), safe='')}/query"
        ours: list[dict[str, Any]] = []
        last: str | None = None
        while True:
            clauses: list[dict[str, Any]] = [{"itemId": item_id}]
            if last is not None:
                clauses.append({"id": {"$gt": last}})
            body = {"filter": {"$and": clauses}, "sort": {"id": "ascending"}, "page": 0, "pageSize": PAGE,
                    "resource": "annotations"}
            reply = self.client.json(self._call("POST", path, context, json=body, headers={"user_query": "false"}),
                                      context)
            page = reply.get("items") if isinstance(reply, dict) else None
            if not isinstance(page, list):
                raise TransientError(f"{self.client.context(context)}: unexpected reply {str(reply)[:200]}")
            ours += [a for a in page if is_ours(a, key) and a.get("itemId", item_id) == item_id]
            if not page or not reply.get("hasNextPage"):
                return ours
            last = str(page[-1].get("id"))

    def _delete(self, annotation: dict[str, Any]) -> None:
        """Delete one annotation; one already gone (a lost reply earlier) is fine."""
        annotation_id = str(annotation.get("id"))
        self._call("DELETE", f"/annotations/{quote(annotation_id, safe='')}", f"deleting annotation {annotation_id}",
                   json={"username": self._user_email()})

    def _post(self, item: dict[str, Any], wanted: list[dict[str, Any]], not_sent: list[str]) -> None:
        item_id = str(item["id"])
        for batch in batches(wanted):
            context = f"sending {len(batch)} annotation(s) to item {item_id}"
            try:
                response = self._call("POST", f"/items/{quote(item_id, safe='')}/annotations", context, json=batch,
                                      gone="the item is gone")
            except Refused as exc:
                not_sent.append(str(exc))
                continue
            created = self.client.json(response, context)
            created = created if isinstance(created, list) else [created]
            if len(created) != len(batch):
                not_sent.append(f"{context}: Dataloop created {len(created)} of them")

    def _user_email(self) -> str | None:
        """The API key's user, sent in DELETE bodies as the SDK does (from /users/me, once)."""
        with self._lock:
            if self._email is not None:
                return self._email
        response = self.client.request("GET", "/users/me", context="reading the API key's user", check=True)
        self.remember_user(self.client.json(response, "reading the API key's user"))
        return self._email


def label_colours(ontology: dict[str, Any]) -> dict[str, str]:
    """``{tag: colour}`` of an ontology's labels; nested labels as ``parent.child``."""
    out: dict[str, str] = {}

    def walk(nodes: Any, prefix: str) -> None:
        for node in nodes or []:
            value = (node.get("value") or {}) if isinstance(node, dict) else {}
            tag = value.get("tag")
            if not isinstance(tag, str):
                continue
            full = tag if not prefix or tag.startswith(prefix + ".") else f"{prefix}.{tag}"
            if isinstance(value.get("color"), str) and value["color"].startswith("#"):
                out[full] = value["color"]
            walk(node.get("children"), full)

    walk(ontology.get("roots") if isinstance(ontology, dict) else None, "")
    return out
