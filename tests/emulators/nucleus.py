"""A stateful Scale Nucleus emulator (REST under ``/v1/nucleus``), shaped after the official
``scale-nucleus`` SDK's wire traffic (platform reference, Part 1 §1). The state and its
rules (rows, update semantics, jobs) live in ``nucleus_state.py``.

Served:
- HTTP Basic auth (key as user, empty password) or ``x-limited-access-key``; anything else
  is 401 ``{"error": ...}``. ``revoke(key)`` invalidates a key.
- ``POST dataset/create``, ``GET dataset/details``, ``DELETE dataset/{id}``,
  ``GET dataset/{id}/is_scene``, ``GET dataset/{id}/use_privacy_mode``.
- ``POST dataset/{id}/append[?async=1]`` in all three shapes: multipart (``items`` JSON list
  + ``image`` parts paired by file name == ``image_url``, in order), JSON
  ``{"requestId", "update"}`` after ``GET dataset/{id}/signedUrl/{rid}`` and an
  unauthenticated NDJSON ``PUT`` to the signed URL, and the legacy synchronous JSON
  ``{"items": [...], "update"}`` (≤ 0.18) answering counts. Without ``async=1`` a
  multipart append is synchronous too. A malformed request is 400 with an error body.
- ``GET job/{id}``, ``job/{id}/errors``, ``job/{id}/info`` (jobs progress over polls, or
  with ``job_seconds`` stay Running that long, as real jobs take seconds; each job of a
  batch append for its own ``job_seconds`` from its creation). One append is one job
  however many items it carries; a refused item fails alone: the job still ends
  ``Completed``, the others are written, and ``errors`` lists one JSON-encoded record per
  refused item in the shape the SDK documents (``{"item": {"referenceId", "imageUrl",
  ...}, "error"}``, camelCase as in ``AsyncJob.errors``); ``fail_next_job(..., rows=)``
  adds rows that name no item. ``POST jobs/`` lists jobs (``dataset_id``, ``job_types``,
  ``show_completed``, ``limit``).
- ``GET|DELETE dataset/{id}/refloc/{ref}``, ``GET dataset/{id}/datasetItems`` (items carry
  ``ref_id``, the backend quirk the SDK handles), ``POST dataset/{id}/itemsPage``,
  ``POST dataset/{id}/metadata?async=0|1`` (merge), and ``GET /images/{item id}``.
- Annotations (``nucleus_annotations.py``): ``POST dataset/{id}/annotate`` (JSON or
  multipart masks), ``POST dataset/{id}/add_taxonomy``, ``DELETE annotation/{id}``; refloc
  answers the item's annotations; deleting an item or dataset deletes its annotations.

Test helpers: ``add_dataset``, ``items(dataset_id)``, ``item(dataset_id, ref)``,
``image(dataset_id, ref)``, ``run_jobs()``, ``fail_next_job(status, ...)``, ``reject``,
``journal`` (every append as sent, raw body included, and the fault injected on it, when ``record`` is on),
``annotations(dataset_id, ref)``, ``mask(dataset_id, ref)``, ``taxonomies(dataset_id)``,
``annotation_journal`` (annotate and delete requests, when ``record`` is on).
"""

from __future__ import annotations

import base64
import copy
import json

from tests.emulators.base import Emulator, Request, Response, json_response, route
from tests.emulators.nucleus_annotations import AnnotationRoutes, AnnotationStore
from tests.emulators.nucleus_jobs import JobRoutes
from tests.emulators.nucleus_state import (
    REMOTE_SCHEMES,
    BadRequest,
    Job,
    NucleusState,
    Row,
    item_list,
    json_object,
    new_id,
    new_row,
    update_flag,
)

API = "/v1/nucleus"
DS = r"(?P<ds>[^/]+)"
DEFAULT_KEY = "test_nucleus_key_0123456789abcdef"


def error(status: int, message: str) -> Response:
    return json_response({"error": message, "status_code": status}, status)


class NucleusEmulator(JobRoutes, AnnotationRoutes, Emulator):
    name = "nucleus"

    def __init__(self, *, seed: int = 1234, api_key: str = DEFAULT_KEY, job_script=("Queued", "Running"),
                 job_seconds: float | None = None):
        super().__init__(seed=seed)
        self.api_key = api_key
        self.keys = {api_key}
        self.state = NucleusState()
        self.state.job_script = list(job_script)
        self.state.job_seconds = job_seconds
        self.signed: dict[str, bytes] = {}  # request id -> NDJSON uploaded to its signed URL
        self.record = False
        self.journal: list[dict] = []
        self.gt = AnnotationStore(self.state)
        self.annotation_journal: list[dict] = []

    def start(self, port: int = 0) -> "NucleusEmulator":
        super().start(port)
        self.state.base_url = self.url
        return self

    # -- test helpers -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.url + API

    @property
    def job_script(self) -> list[str]:
        return self.state.job_script

    @job_script.setter
    def job_script(self, value) -> None:
        self.state.job_script = list(value)

    @property
    def reject(self) -> dict[str, str]:
        return self.state.reject

    def add_dataset(self, name: str = "dataset", **flags) -> str:
        with self.lock:
            return self.state.add_dataset(name, **flags)

    def items(self, dataset_id: str) -> list[dict]:
        with self.lock:
            self.state.run_due()
            return copy.deepcopy(list(self.state.items.get(dataset_id, {}).values()))

    def item(self, dataset_id: str, ref: str) -> dict | None:
        with self.lock:
            self.state.run_due()
            return copy.deepcopy(self.state.items.get(dataset_id, {}).get(ref))

    def image(self, dataset_id: str, ref: str) -> bytes | None:
        with self.lock:
            self.state.run_due()
            item = self.state.items.get(dataset_id, {}).get(ref)
            return None if item is None else self.state.images.get(item["id"])

    def jobs(self) -> list[Job]:
        with self.lock:
            self.state.run_due()
            return sorted(self.state.jobs.values(), key=lambda j: j.seq)

    def run_jobs(self) -> None:
        """Run every pending job now (the server catching up)."""
        with self.lock:
            self.state.run_all()

    def fail_next_job(self, status: str, message: str = "scripted failure", *, apply: bool = False,
                      rows: list[str] = ()) -> None:
        """The next job created ends with ``status`` (its items applied only with ``apply``,
        each refused item then gets its error row), its errors listing ``rows`` too (rows
        naming no item, e.g. ``"Internal error"``)."""
        with self.lock:
            self.state.forced.append((status, message, apply, list(rows)))

    def revoke(self, key: str) -> None:
        with self.lock:
            self.keys.discard(key)

    # -- auth and helpers ---------------------------------------------------------------------
    def authorize(self, request: Request) -> Response | None:
        if request.path.startswith(("/signed/", "/images/")):
            return None  # presigned: no auth, like S3
        limited = request.header("x-limited-access-key")
        header = request.header("authorization", "") or ""
        key = None
        if header.startswith("Basic "):
            try:
                user, _, _ = base64.b64decode(header[6:]).decode().partition(":")
                key = user
            except ValueError:
                key = None
        if limited and header:
            return error(400, "Cannot use both an API key and a limited access key")
        if (key or limited) not in self.keys:
            return error(401, "Unauthorized: the API key is invalid or missing (HTTP Basic auth, key as user name)")
        return None

    def _dataset(self, request: Request) -> str:
        dataset_id = request.params["ds"]
        if dataset_id not in self.state.datasets:
            raise LookupError(f"Dataset {dataset_id} not found")
        return dataset_id

    def _call(self, fn, request: Request) -> Response:
        """Run a handler under the lock, after the jobs that are due; LookupError is 404,
        BadRequest 400."""
        try:
            with self.lock:
                self.state.run_due()
                return fn(request)
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        except BadRequest as exc:
            return error(400, str(exc))

    # -- datasets -----------------------------------------------------------------------------
    @route("POST", f"{API}/dataset/create")
    def create_dataset(self, request: Request) -> Response:
        def handle(request):
            body = json_object(request)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest("name is required")
            flags = {k: body.get(k) or False for k in ("is_scene", "use_privacy_mode")}
            if not all(isinstance(v, bool) for v in flags.values()):
                raise BadRequest("is_scene and use_privacy_mode must be booleans")
            return json_response({"dataset_id": self.state.add_dataset(name, **flags)})
        return self._call(handle, request)

    @route("GET", f"{API}/dataset/details")
    def dataset_details(self, request: Request) -> Response:
        return self._call(lambda r: json_response([dict(d) for d in self.state.datasets.values()]), request)

    @route("DELETE", f"{API}/dataset/{DS}")
    def delete_dataset(self, request: Request) -> Response:
        def handle(request):
            self.gt.drop_dataset(self._dataset(request))
            self.state.delete_dataset(request.params["ds"])
            return json_response({})
        return self._call(handle, request)

    @route("GET", f"{API}/dataset/{DS}/(?P<flag>is_scene|use_privacy_mode)")
    def dataset_flag(self, request: Request) -> Response:
        def handle(request):
            flag = request.params["flag"]
            return json_response({flag: self.state.datasets[self._dataset(request)][flag]})
        return self._call(handle, request)

    # -- signed URL upload --------------------------------------------------------------------
    @route("GET", f"{API}/dataset/{DS}/signedUrl/(?P<rid>[^/]+)")
    def signed_url(self, request: Request) -> Response:
        def handle(request):
            self._dataset(request)
            rid = request.params["rid"]
            return json_response({"signed_url": f"{self.url}/signed/{rid}?X-Amz-Signature={new_id('sig')}"})
        return self._call(handle, request)

    @route("PUT", r"/signed/(?P<rid>[^/]+)")
    def signed_put(self, request: Request) -> Response:
        if not request.arg("X-Amz-Signature"):
            return Response(403, "<Error><Code>AccessDenied</Code></Error>")
        with self.lock:
            self.signed[request.params["rid"]] = request.body
        return Response(200, b"")

    @route("GET", r"/images/(?P<id>[^/]+)")
    def image_bytes(self, request: Request) -> Response:
        with self.lock:
            data = self.state.images.get(request.params["id"])
        return error(404, "no such image") if data is None else Response(200, data, {"Content-Type": "image/png"})

    # -- append -------------------------------------------------------------------------------
    @route("POST", f"{API}/dataset/{DS}/append")
    def append(self, request: Request) -> Response:
        content_type = request.header("content-type", "") or ""
        parsed: list[Row] | BadRequest | None = None
        if content_type.startswith("multipart/form-data"):
            # Parsed and decoded before the lock, as a server handles requests side by side;
            # a malformed body is answered after the dataset checks, as before.
            try:
                parsed = self._multipart_rows(request)
            except BadRequest as exc:
                parsed = exc

        def handle(request):
            dataset_id = self._dataset(request)
            if self.state.datasets[dataset_id]["is_scene"]:
                raise BadRequest("This dataset holds scenes; append scenes, not dataset items")
            is_async = request.arg("async") == "1"
            if isinstance(parsed, BadRequest):
                raise parsed
            if parsed is not None:
                rows = parsed
            else:
                body = json_object(request)
                if "requestId" in body:
                    rows, is_async = self._signed_rows(body), True
                elif "items" in body:
                    rows = [new_row(p, None, update_flag(body)) for p in item_list(body["items"])]
                else:
                    raise BadRequest("expected multipart items+image parts, {requestId, update} or {items, update}")
            refs = [row.payload["reference_id"] for row in rows]
            if len(set(refs)) != len(refs):
                raise BadRequest("duplicate reference_id in one request")
            if self.record:
                sent = [{"payload": r.payload, "image": r.image, "update": r.update} for r in rows]
                self.journal.append({"dataset_id": dataset_id, "query": request.query, "content_type": content_type,
                                     "rows": sent, "parts": getattr(request, "_parts_seen", None),
                                     "body": request.body, "fault": request.fault})
            if is_async:
                return json_response(self.state.new_job(dataset_id, rows).info_json())
            counts, errors = self.state.run_rows(dataset_id, rows)
            reply = {"dataset_id": dataset_id, "new_items": counts["new"], "updated_items": counts["updated"],
                     "ignored_items": counts["ignored"], "upload_errors": counts["errors"]}
            if errors:  # the legacy reply lists the refused items' payloads (the SDK reads them as items)
                reply["error_payload"] = [dict(payload, error=error) for payload, error in errors]
            return json_response(reply)
        return self._call(handle, request)

    def _multipart_rows(self, request: Request) -> list[Row]:
        try:
            parts = request.parts()
        except ValueError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        request._parts_seen = [{"name": p.name, "filename": p.filename, "content_type": p.content_type,
                                "size": len(p.data)} for p in parts]
        unknown = sorted({p.name for p in parts} - {"items", "image"})
        if unknown:
            raise BadRequest(f"unexpected multipart parts: {unknown}")
        items = [p for p in parts if p.name == "items"]
        if len(items) != 1:
            raise BadRequest("exactly one 'items' part is required")
        try:
            payloads = item_list(json.loads(items[0].text))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the 'items' part is not valid JSON: {exc}") from None
        images = [p for p in parts if p.name == "image"]
        urls = [p["image_url"] for p in payloads]
        names = [p.filename for p in images]
        if names != urls:
            raise BadRequest(f"image part file names {names} do not match the items' image_url {urls} (same order)")
        for part in images:
            if not (part.content_type or "").startswith("image/"):
                raise BadRequest(f"image part {part.filename!r} has content type {part.content_type!r}")
        return [new_row(p, img.data, update_flag(p)) for p, img in zip(payloads, images)]

    def _signed_rows(self, body: dict) -> list[Row]:
        data = self.signed.pop(str(body["requestId"]), None)
        if data is None:
            raise BadRequest(f"no upload found for requestId {body['requestId']!r}")
        try:
            payloads = item_list([json.loads(line) for line in data.decode().splitlines() if line.strip()])
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the uploaded NDJSON is invalid: {exc}") from None
        for payload in payloads:
            if not str(payload["image_url"]).startswith(REMOTE_SCHEMES):
                raise BadRequest(f"image_url {payload['image_url']!r} is not a remote URL")
        return [new_row(p, None, update_flag(body)) for p in payloads]

    # -- items --------------------------------------------------------------------------------
    @route("GET", f"{API}/dataset/{DS}/refloc/(?P<ref>[^/]+)")
    def refloc(self, request: Request) -> Response:
        def handle(request):
            item = self.state.items[self._dataset(request)].get(request.params["ref"])
            if item is None:
                raise LookupError(f"No item with reference_id {request.params['ref']!r}")
            return json_response({"item": copy.deepcopy(item),
                                  "annotations": self.gt.grouped(request.params["ds"], item["reference_id"])})
        return self._call(handle, request)

    @route("DELETE", f"{API}/dataset/{DS}/refloc/(?P<ref>[^/]+)")
    def delete_refloc(self, request: Request) -> Response:
        def handle(request):
            item = self.state.items[self._dataset(request)].pop(request.params["ref"], None)
            if item is None:
                raise LookupError(f"No item with reference_id {request.params['ref']!r}")
            self.state.images.pop(item["id"], None)
            self.gt.delete(request.params["ds"], [item["reference_id"]])
            return json_response({})
        return self._call(handle, request)

    @route("GET", f"{API}/dataset/{DS}/datasetItems")
    def dataset_items(self, request: Request) -> Response:
        def handle(request):
            items = []
            for item in self.state.items[self._dataset(request)].values():
                item = copy.deepcopy(item)
                item["ref_id"] = item.pop("reference_id")  # the backend quirk
                items.append(item)
            return json_response({"dataset_items": items})
        return self._call(handle, request)

    @route("POST", f"{API}/dataset/{DS}/itemsPage")
    def items_page(self, request: Request) -> Response:
        def handle(request):
            body = json_object(request)
            size, token = body.get("pageSize"), body.get("pageToken")
            if not isinstance(size, int) or size < 1 or not (token is None or str(token).isdigit()):
                raise BadRequest("pageSize must be a positive integer and pageToken null or a token")
            items = list(self.state.items[self._dataset(request)].values())
            start = int(token or 0)
            end = start + size
            return json_response({"items": copy.deepcopy(items[start:end]),
                                  "nextPageToken": str(end) if end < len(items) else None})
        return self._call(handle, request)

    @route("POST", f"{API}/dataset/{DS}/metadata")
    def merge_metadata(self, request: Request) -> Response:
        def handle(request):
            dataset_id = self._dataset(request)
            body = json_object(request)
            mappings = body.get("metadata")
            if not isinstance(mappings, list) or body.get("level", "item") != "item":
                raise BadRequest("expected {metadata: [{reference_id, metadata}], level: 'item'}")
            errors, updated = [], 0
            for mapping in mappings:
                item = self.state.items[dataset_id].get(mapping.get("reference_id"))
                if item is None or not isinstance(mapping.get("metadata"), dict):
                    errors.append(f"No item with reference_id {mapping.get('reference_id')!r}")
                    continue
                item["metadata"].update(copy.deepcopy(mapping["metadata"]))
                updated += 1
            if request.arg("async") == "1":
                job = Job(job_id=new_id("job"), dataset_id=dataset_id, seq=0, rows=[], job_type="metadataUpdate",
                          status="Completed", errors=errors)
                self.state.jobs[job.job_id] = job
                return json_response(job.info_json())
            return json_response({"dataset_id": dataset_id, "updated_items": updated, "errors": errors})
        return self._call(handle, request)
