"""Labels and masks of a Nucleus item, as ground-truth annotations (docs/platforms/nucleus.md;
``Dataset.delete_annotations`` of scale-nucleus 0.22.3).

The payloads are ``payload.to_nucleus``'s, sent as the SDK sends them:
non-mask annotations as JSON ``POST dataset/{id}/annotate {"update": true, "annotations"}``
(batches of 5000), the mask as a multipart ``POST dataset/{id}/annotate`` with a
``serialized_request`` part ``{"segmentations": [...], "update": true}`` and a ``mask`` part
(file name = the segmentation's ``mask_url``, percent-encoded like aiohttp), a category after
``POST dataset/{id}/add_taxonomy`` with ``update: true`` (which only appends labels).

What real Nucleus does, and so how replacement works:

- ``update: true`` overwrites an annotation with the same ``(reference_id, annotation_id)``
  and replaces the item's one mask. Ids are ``syncd:<ref>:<position>:<type>``, so an edit
  or a re-send overwrites, never adds.
- Nucleus deletes annotations per item only (``DELETE annotation/{dataset id}`` with
  ``{"reference_ids": [ref], "keep_history": true}``, an async job); there is no delete by
  annotation id. A label removed locally leaves an id nothing overwrites, so:
- **Probe, then write or clear.** When the labels changed, ``GET dataset/{id}/refloc/{ref}``
  reads what the item holds (no probe when the append just created the item: its job
  counts ``new_items: 1``). If it holds anything the sidecar no longer has (an id not sent
  now, a mask when there is none now, a different category, a type syncd never sends), the
  item's annotations are deleted (the job is waited for, so it cannot run after the
  writes) and everything is written again. Otherwise the annotations and mask are written
  over their old selves and nothing is deleted. A category (no id; one per item and
  taxonomy, but unverified) is only ever sent where the item holds none, so a re-send
  cannot double it. After a lost reply, a crash or a half-done write the next attempt
  probes again: nothing is ever duplicated or left behind.

When nothing is written (``Plan.converted`` is None):
- the receipt's ``annotations_sha256`` (a hash of what the annotations are made from)
  equals this version's: metadata-only changes cost no annotation request. (Unless this
  process saw an earlier attempt stop half-way: then it writes again. The one case left:
  a process killed half-way through writing new labels, which are then changed back to
  the last acknowledged ones before the restart, keeps the half-written state until the
  item's next label change.) Receipts of syncd before annotations (no
  ``annotations_sha256``) count as "none sent";
- a first delivery (no receipt) of an item without labels or mask: if the append did not
  create the item, a probe looks for annotations syncd wrote in an attempt that was never
  acknowledged (killed after writing, labels removed meanwhile) and deletes them. An item
  holding none of syncd's keeps what was made in Nucleus: syncd only takes over the
  annotations of items that have labels or a mask.

Refusals (a 200 reply listing ``errors``, a 400 on annotate or add_taxonomy, a deletion job
that fails for good) do not hold the image back: they go to the receipt's ``not_sent`` (shown
by ``syncd status``) and ``annotations_sha256`` is None, so they are tried again with the
item's next change. Transient trouble and bad credentials raise as for the append.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncd.errors import PermanentError, TransientError
from syncd.targets.base import Upload
from syncd.targets.nucleus.client import NucleusClient
from syncd.targets.nucleus.jobs import JobResult, classify
from syncd.targets.nucleus.payload import NucleusAnnotations, to_nucleus

log = logging.getLogger(__name__)

EMPTY = "empty"  # the digest of an item without labels and mask
FORMAT = 1  # part of the digest: bump when the conversion changes, so annotations are sent again
BATCH = 5000  # the SDK's annotation batch size
KEYED = ("box", "polygon", "line", "keypoints")  # the types syncd sends with an annotation_id


def labels_digest(upload: Upload, taxonomy_name: str) -> str:
    """A hash of everything the item's annotations are made from (EMPTY without any)."""
    if not upload.labels and upload.mask is None:
        return EMPTY
    source = {"format": FORMAT, "labels": upload.labels, "taxonomy": taxonomy_name,
              "size": [upload.width, upload.height],
              "mask": None if upload.mask is None else hashlib.sha256(upload.mask).hexdigest(),
              "class_map": upload.class_map if upload.mask is not None else None}
    return hashlib.sha256(json.dumps(source, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class ItemMissing(TransientError):
    """Nucleus does not have the item (deleted since its append?): it is appended again."""


@dataclass(frozen=True)
class Plan:
    """What one delivery does about annotations: ``converted`` is None when nothing is sent;
    ``leftovers``: nothing to send, but a first delivery (see ``AnnotationWriter.write``)."""

    digest: str
    converted: NucleusAnnotations | None
    leftovers: bool = False

    def receipt(self) -> dict[str, Any]:
        return {"annotations_sha256": self.digest}


def plan(upload: Upload, taxonomy_name: str, *, unsure: bool = False) -> Plan:
    """Decide (without I/O, before the append) whether annotations are written. ``unsure``:
    an earlier attempt of this process stopped in the middle of writing them. Converting
    here means a mask that cannot be read fails the item before its image is sent."""
    digest = labels_digest(upload, taxonomy_name)
    previous = upload.previous
    if previous is None:
        if digest == EMPTY:
            return Plan(digest, None, leftovers=True)
    elif previous.extra.get("annotations_sha256", EMPTY) == digest and not unsure:
        return Plan(digest, None)
    return Plan(digest, to_nucleus(upload, taxonomy_name=taxonomy_name))


def _same_category(remote: dict, wanted: dict) -> bool:
    return (remote.get("label"), remote.get("taxonomy_name"), remote.get("metadata") or {}) == (
        wanted["label"], wanted["taxonomy_name"], wanted["metadata"])


def must_clear(remote: Any, converted: NucleusAnnotations) -> tuple[bool, bool]:
    """From the refloc ``annotations`` of the item: (delete them all first?, does the item
    already hold exactly the wanted category?)."""
    wanted_ids = {a["annotation_id"] for a in converted.annotations if a["type"] in KEYED}
    category = next((a for a in converted.annotations if a["type"] == "category"), None)
    clear = has_category = False
    for kind, rows in (remote or {}).items():
        if not rows:
            continue
        if not isinstance(rows, list):
            clear = True
        elif kind in KEYED:
            clear = clear or any(not isinstance(r, dict) or r.get("annotation_id") not in wanted_ids for r in rows)
        elif kind == "category":
            has_category = category is not None and len(rows) == 1 and _same_category(rows[0], category)
            clear = clear or not has_category
        elif kind == "segmentation":
            clear = clear or converted.segmentation is None or len(rows) > 1
        else:  # cuboids, multicategories, whatever syncd never sends
            clear = True
    return clear, has_category and not clear


def syncd_made(remote: Any, taxonomy_name: str) -> bool:
    """Does the item hold annotations syncd wrote (its ids, a category in its taxonomy)?"""
    for kind, rows in (remote or {}).items():
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict):
                continue
            if str(row.get("annotation_id") or "").startswith("syncd:"):
                return True
            if kind == "category" and row.get("taxonomy_name") == taxonomy_name:
                return True
    return False


class AnnotationWriter:
    """Writes items' annotations through the target's client. ``wait_job(key, job_id,
    what)`` waits for a deletion job in place (the target books it, so the item is not
    appended again while it may still run). Thread-safe."""

    def __init__(self, client: NucleusClient, wait_job: Callable[[str, str, str], JobResult], taxonomy_name: str):
        self.client = client
        self.wait_job = wait_job
        self.taxonomy_name = taxonomy_name
        self._lock = threading.Lock()
        self._taxonomy_labels: set[tuple[str, str]] = set()  # added in this process

    def write(self, upload: Upload, todo: Plan, what: str, *, fresh: bool = False) -> dict[str, Any]:
        """Make the item's annotations ``todo.converted``; return the receipt's fields.
        ``fresh``: the append created the item, so it holds no annotations (no probe).

        Without labels (``todo.leftovers``), a first delivery of an item the append did not
        create still removes what syncd wrote in an attempt that was never acknowledged
        (killed after the annotations, labels removed meanwhile). Only then: an item that
        holds no annotation of syncd's keeps the ones made in Nucleus."""
        converted = todo.converted
        remote = {} if fresh else self._probe(upload.key, what)
        not_sent: list[str] = []
        if converted is None:
            if syncd_made(remote, self.taxonomy_name):
                self._clear(upload.key, what, not_sent)
            return self._done(todo, what, not_sent)
        clear, has_category = must_clear(remote, converted)
        if clear:
            self._clear(upload.key, what, not_sent)
        annotations = [a for a in converted.annotations if not (a["type"] == "category" and has_category)]
        if any(a["type"] == "category" for a in annotations) and not self._taxonomy(converted, what, not_sent):
            annotations = [a for a in annotations if a["type"] != "category"]
        if converted.segmentation is not None:
            self._send_mask(converted, what, not_sent)
        for start in range(0, len(annotations), BATCH):
            self._send(annotations[start:start + BATCH], what, not_sent)
        return self._done(todo, what, not_sent)

    def _done(self, todo: Plan, what: str, not_sent: list[str]) -> dict[str, Any]:
        if not_sent:
            log.warning("%s: annotations not sent: %s", what, "; ".join(not_sent))
            return {"annotations_sha256": None, "not_sent": not_sent}
        return todo.receipt()

    # -- requests -----------------------------------------------------------------------------
    def _refused(self, response, context: str) -> str | None:
        """None for a 2xx; the server's message for a refusal (400, 404, 409, 413, 422: the
        payload, a route Nucleus does not serve); raises for credentials, a missing dataset
        (a 404 after which the dataset itself answers 404: ``client.not_found``) and
        transient trouble."""
        if response.status_code == 404:
            return str(self.client.not_found(response, context))
        try:
            self.client.raise_for_status(response, context)
        except PermanentError as exc:
            return str(exc)
        return None

    def _probe(self, key: str, what: str) -> Any:
        context = f"reading the annotations of {key!r}"
        response = self.client.request("GET", f"{self.client.dataset_route}/refloc/{quote(key, safe='')}",
                                        context=context)
        if response.status_code == 404:
            if not self.client.dataset_exists(f"{context} (after a 404: does the dataset exist?)"):
                raise self.client.missing_dataset()
            raise ItemMissing(f"{what}: {context}: Nucleus does not have the item (yet); retrying")
        self.client.raise_for_status(response, context)
        reply = self.client.json(response, context)
        if not isinstance(reply, dict) or not isinstance(reply.get("annotations", {}), dict):
            raise TransientError(f"{what}: {context}: unexpected reply {str(reply)[:200]}")
        return reply.get("annotations") or {}

    def _clear(self, key: str, what: str, not_sent: list[str]) -> None:
        """Delete every annotation of the item and wait for the deletion job, so that it
        cannot run after the writes that follow."""
        context = f"deleting the annotations of {key!r}"
        response = self.client.request("DELETE", f"annotation/{quote(self.client.dataset_id, safe='')}",
                                        json={"keep_history": True, "reference_ids": [key]}, context=context)
        refused = self._refused(response, context)
        if refused:
            not_sent.append(f"old annotations not removed: {refused}")
            return
        reply = self.client.json(response, context)
        job_id = reply.get("job_id") if isinstance(reply, dict) else None
        if not job_id:
            return  # answered synchronously: nothing to wait for
        result = self.wait_job(key, str(job_id), f"{what} (deleting old annotations)")
        try:
            classify(result, what=f"{what}: deleting old annotations")
        except PermanentError as exc:
            not_sent.append(f"old annotations not removed: {exc}")

    def _taxonomy(self, converted: NucleusAnnotations, what: str, not_sent: list[str]) -> bool:
        """Make sure the taxonomy holds the item's categories; False when refused."""
        for body in converted.taxonomies:
            wanted = {(body["taxonomy_name"], label) for label in body["labels"]}
            with self._lock:
                if wanted <= self._taxonomy_labels:
                    continue
            context = f"adding labels {body['labels']} to taxonomy {body['taxonomy_name']!r}"
            response = self.client.request("POST", f"{self.client.dataset_route}/add_taxonomy", json=body,
                                            context=context)
            refused = self._refused(response, context)
            if refused:
                not_sent.append(f"category not sent: {refused}")
                return False
            with self._lock:
                self._taxonomy_labels |= wanted
        return True

    def _send(self, annotations: list[dict], what: str, not_sent: list[str]) -> None:
        context = f"sending {len(annotations)} annotation(s)"
        response = self.client.request("POST", f"{self.client.dataset_route}/annotate",
                                        json={"update": True, "annotations": annotations}, context=context)
        self._reply(response, context, what, not_sent)

    def _send_mask(self, converted: NucleusAnnotations, what: str, not_sent: list[str]) -> None:
        segmentation = converted.segmentation
        request = json.dumps({"segmentations": [segmentation], "update": True})
        files = [("serialized_request", (None, request, "application/json")),
                 ("mask", (quote(segmentation["mask_url"], safe=""), converted.mask_png, "image/png"))]
        context = "sending the mask"
        response = self.client.request("POST", f"{self.client.dataset_route}/annotate", files=files,
                                        context=context)
        self._reply(response, context, what, not_sent)

    def _reply(self, response, context: str, what: str, not_sent: list[str]) -> None:
        """An annotate reply: HTTP 200 even when rows were refused (they are in ``errors``)."""
        refused = self._refused(response, context)
        if refused:
            not_sent.append(refused)
            return
        reply = self.client.json(response, context)
        errors = reply.get("errors") if isinstance(reply, dict) else None
        if errors:
            with self._lock:
                self._taxonomy_labels.clear()  # perhaps a taxonomy was deleted in Nucleus: add it again next time
        for error in errors or []:
            if "Item with id" in str(error) and "does not exist" in str(error):
                # The item vanished after its append (deleted meanwhile): append it again.
                raise ItemMissing(f"{what}: {context}: {error}")
            not_sent.append(f"{context}: Nucleus refused: {error}")
