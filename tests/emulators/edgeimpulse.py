"""A stateful Edge Impulse emulator: the ingestion service and the Studio API on ONE port.

Routes (platform reference, Part 1 §2), both on ``self.url``: ingestion at
``/api/{category}/files``, Studio under ``/v1/api/...``. Point the official clients at it
with ``EI_INGESTION_ENDPOINT=<url>`` and ``EI_API_ENDPOINT=<url>/v1`` (§2.7); the paths
never overlap. Organization data routes live in ``edgeimpulse_org.OrgDataRoutes``.

State: projects (each with API keys), samples (id, name, label, category, metadata,
content hash, bytes), organizations, their datasets, data items and bucket files.

Behaviour the targets and the SDKs rely on:
- ``x-api-key`` on every request: missing/unknown/revoked keys get 401
  ``{"success": false, "error": ...}``; a key of another project/organization gets 403.
- Ingestion: multipart parts named ``data`` with a filename (``.jpg .jpeg .png`` images are
  checked by magic bytes; ``.labels`` sidecars are accepted); ``x-metadata`` must be a JSON
  object of strings, ``x-label`` is percent-decoded, ``x-no-label: 1`` stores ``""``;
  with ``x-disallow-duplicates: 1`` a file whose SHA-256 the project already holds gets a
  per-file ``success: false`` (the other files go on). The sample name is the file name
  without its last extension. Category ``split`` picks training or testing by hash.
  Bounding boxes: see ``edgeimpulse_boxes`` (ingestion headers/parts, the Studio route,
  dropped at ingestion unless the project's labeling method is ``object_detection``).
- Studio errors: request validation fails with 400; a missing sample, project, dataset or
  data item answers ``{"success": false, "error": ...}`` with HTTP ``self.error_status``
  (200 by default, as the real Studio often does; set 404 to test the other shape).
- ``ingest_seconds``: each ingestion request takes this long (after its checks, before
  its answer); ``ingest_peak`` is the most ingestion requests seen at once.
- ``hash_envelope``: a sample's ``sha256Hash`` is not the SHA-256 of the file as sent (as
  the generated client's "including CBOR envelope if applicable" allows); by default it is.
- ``metadata_merge``: the set-metadata route merges instead of replacing (the documented
  "adds or updates" could mean either; the targets must survive both).
- ``record``: every request is kept in ``self.journal`` (method, path, query, x-* headers,
  JSON body or multipart parts).
- ``reply_next(path_regex, status, body)``: answer the next matching request with a canned
  reply instead (after auth, before touching state): for reply shapes no state produces.
- ``hide_routes(path_regex)``: until ``hide_routes()`` (none), requests whose path matches get
  the web framework's own 404 (``text/html``, ``Cannot POST /path``, before any auth), as a
  wrong URL, a deleted project or a service being redeployed would answer.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import re
import time
from urllib.parse import unquote

from tests.emulators.base import Emulator, Request, Response, json_response, route
from tests.emulators.edgeimpulse_boxes import BoxRoutes, ingested_boxes
from tests.emulators.edgeimpulse_org import OrgDataRoutes, fail

PID = r"(?P<pid>\d+)"
SID = r"(?P<sid>\d+)"
CATEGORIES = ("training", "testing", "validation", "post-processing", "anomaly", "split")
LIST_CATEGORIES = ("training", "testing", "validation", "post-processing", "anomaly", "all")
IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",)}
OTHER_TYPES = (".wav", ".cbor", ".json", ".csv", ".mp4", ".avi", ".txt", ".parquet")
LABEL_FROM_NAME = re.compile(r"^[a-zA-Z0-9\s\-_]+")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def string_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


class EdgeImpulseEmulator(BoxRoutes, OrgDataRoutes, Emulator):
    name = "edgeimpulse"

    def __init__(self, *, seed: int = 1234, error_status: int = 200, metadata_merge: bool = False):
        super().__init__(seed=seed)
        self.error_status = error_status
        self.metadata_merge = metadata_merge
        self.hash_envelope = False
        self.ingest_seconds = 0.0
        self.ingest_peak = 0
        self._ingesting = 0
        self.record = False
        self.journal: list[dict] = []
        self._ids = itertools.count(1)
        self._key_ids = itertools.count(1)
        self.keys: dict[str, tuple[str, int]] = {}  # api key -> ("project"|"org", id)
        self.revoked: set[str] = set()
        self.projects: dict[int, dict] = {}
        self.samples: dict[int, dict] = {}
        self.sample_data: dict[int, bytes] = {}
        self.canned: list[tuple[re.Pattern, Response]] = []
        self.hidden: re.Pattern | None = None
        self.init_org_state()

    # -- test-side helpers -------------------------------------------------------------------
    def add_project(self, name: str = "Emulated project", *, labeling_method: str = "single_label") -> dict:
        with self.lock:
            pid = 1000 + next(self._ids)
            project = {
                "id": pid, "name": name, "description": "", "created": now_iso(), "owner": "Emulator Org",
                "ownerIsDeveloperProfile": False, "collaborators": [], "labelingMethod": labeling_method,
                "metadata": {}, "isEnterpriseProject": False, "tier": "free", "hasPublicVersion": False,
                "isPublic": False, "allowsLivePublicAccess": False, "indPauseProcessingSamples": False,
                "publicProjectListed": False, "category": "Images",
            }
            self.projects[pid] = project
            return copy.deepcopy(project)

    def make_key(self, owner_id: int, *, kind: str = "project") -> str:
        """A new API key of project (or, with kind="org", organization) ``owner_id``."""
        with self.lock:
            key = f"ei_{hashlib.sha256(f'{kind}-{owner_id}-{next(self._key_ids)}'.encode()).hexdigest()[:48]}"
            self.keys[key] = (kind, owner_id)
            return key

    def revoke(self, key: str) -> None:
        with self.lock:
            self.revoked.add(key)

    def samples_in(self, project_id: int) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(s) for s in self.samples.values() if s["projectId"] == project_id]

    def reply_next(self, path_regex: str, status: int, body) -> None:
        """Answer the next request whose path matches with ``status`` and ``body`` (dict, str, bytes)."""
        with self.lock:
            self.canned.append((re.compile(path_regex), Response(status=status, body=body)))

    def hide_routes(self, path_regex: str | None = None) -> None:
        """Answer requests whose path matches ``path_regex`` with a bare 404 (None: none)."""
        with self.lock:
            self.hidden = re.compile(path_regex) if path_regex else None

    def recorded(self, method: str, path_regex: str) -> list[dict]:
        with self.lock:
            return [e for e in self.journal if e["method"] == method and re.search(path_regex, e["path"])]

    # -- auth and journal ----------------------------------------------------------------------
    def authorize(self, request: Request) -> Response | None:
        if self.record:
            self._journal(request)
        if self.hidden is not None and self.hidden.search(request.path):
            return Response(status=404, body=f"<pre>Cannot {request.method} {request.path}</pre>",
                            headers={"Content-Type": "text/html; charset=utf-8"})
        key = request.header("x-api-key")
        if not key:
            return json_response({"success": False, "error": "Missing x-api-key header (or JWT token)"}, 401)
        owner = self.keys.get(key)
        if owner is None or key in self.revoked:
            return json_response({"success": False, "error": "Invalid API key"}, 401)
        kind, owner_id = owner
        if request.path.startswith("/v1/api/organizations/"):
            if kind != "org" or int(request.params.get("oid", -1)) != owner_id:
                return json_response({"success": False, "error": "No access to this organization"}, 403)
        elif "pid" in request.params:
            if kind != "project" or int(request.params["pid"]) != owner_id:
                return json_response({"success": False, "error": "No access to this project"}, 403)
        elif kind != "project":
            return json_response({"success": False, "error": "This API key is not a project API key"}, 401)
        request.params["_owner"] = str(owner_id)
        with self.lock:
            for index, (pattern, response) in enumerate(self.canned):
                if pattern.search(request.path):
                    del self.canned[index]
                    return response
        return None

    def _journal(self, request: Request) -> None:
        entry = {"method": request.method, "path": request.path, "query": request.query,
                 "headers": {k: v for k, v in request.headers.items() if k.startswith("x-") and k != "x-api-key"}}
        content_type = request.header("content-type", "")
        if content_type.startswith("multipart/form-data"):
            try:
                entry["parts"] = [{"name": p.name, "filename": p.filename, "content_type": p.content_type,
                                   "size": len(p.data), "text": None if p.filename else p.text}
                                  for p in request.parts()]
            except ValueError:
                entry["parts"] = None
        elif request.body:
            try:
                entry["json"] = request.json()
            except ValueError:
                entry["body"] = request.body[:200]
        with self.lock:
            self.journal.append(entry)

    def _project(self, request: Request) -> dict:
        return self.projects[int(request.params.get("pid") or request.params["_owner"])]

    # -- ingestion ---------------------------------------------------------------------------------
    @route("POST", r"/api/(?P<category>[^/]+)/files")
    def ingest(self, request: Request) -> Response:
        category = request.params["category"]
        if category not in CATEGORIES:
            return fail(f"Invalid category '{category}', should be one of {', '.join(CATEGORIES)}", 400)
        try:
            parts = request.parts()
        except ValueError as exc:
            return fail(f"Expected a multipart/form-data body: {exc}", 400)
        files = [p for p in parts if p.name == "data"]
        if not files or any(not p.filename for p in files):
            return fail("No files in the request: send multipart parts named 'data' with a filename", 400)
        metadata = {}
        if request.header("x-metadata") is not None:
            try:
                metadata = json.loads(request.header("x-metadata"))
            except ValueError:
                return fail("x-metadata is not valid JSON", 400)
            if not string_map(metadata):
                return fail("x-metadata must be a JSON object with string values", 400)
        no_label = request.header("x-no-label") == "1"
        label = None if no_label or request.header("x-label") is None else unquote(request.header("x-label"))
        try:
            boxes = ingested_boxes(request, files)
        except ValueError as exc:
            return fail(f"Invalid bounding boxes: {exc}", 400)
        project = self._project(request)
        if self.ingest_seconds:
            with self.lock:
                self._ingesting += 1
                self.ingest_peak = max(self.ingest_peak, self._ingesting)
            time.sleep(self.ingest_seconds)
            with self.lock:
                self._ingesting -= 1
        results = []
        with self.lock:
            for part in files:
                if part.filename.endswith(".labels"):
                    continue  # annotation sidecars ride along; not samples themselves
                results.append(self._ingest_file(project, category, part.filename, part.data, label, no_label,
                                                 metadata, self.boxes_kept(project, boxes.get(part.filename, [])),
                                                 request.header("x-disallow-duplicates") == "1"))
        return json_response({"success": True, "files": results})

    def _ingest_file(self, project, category, filename, data, label, no_label, metadata, boxes, no_duplicates) -> dict:
        stem, dot, ext = filename.rpartition(".")
        name, ext = (stem, "." + ext.lower()) if dot else (filename, "")
        if ext in IMAGE_MAGIC:
            if not data.startswith(IMAGE_MAGIC[ext]):
                return {"success": False, "error": f"Failed to process {filename}: not a valid image"}
        elif ext not in OTHER_TYPES:
            return {"success": False, "error": f"Failed to process {filename}: unsupported file type '{ext}'"}
        digest = hashlib.sha256((b"envelope:" if self.hash_envelope else b"") + data).hexdigest()
        if no_duplicates:
            for other in self.samples.values():
                if other["projectId"] == project["id"] and other["sha256Hash"] == digest:
                    return {"success": False, "error": f"An item with this hash already exists (ids: {other['id']})"}
        if category == "split":
            category = "testing" if int(digest[:8], 16) % 5 == 0 else "training"
        if label is None:
            match = LABEL_FROM_NAME.match(name)
            label = "" if no_label or not match else match.group(0).strip()
        sample_id = next(self._ids)
        width, height = image_size(data) if ext in IMAGE_MAGIC else (0, 0)
        self.samples[sample_id] = {
            "id": sample_id, "filename": name, "signatureValidate": False, "created": now_iso(),
            "lastModified": now_iso(), "category": category, "label": label,
            "coldstorageFilename": f"ingestion/{project['id']}/{filename}.{digest[:8]}.json",
            "intervalMs": 0, "frequency": 0, "originalIntervalMs": 0, "originalFrequency": 0,
            "deviceType": "IMAGE", "sensors": [], "valuesCount": 1, "added": now_iso(), "boundingBoxes": boxes,
            "boundingBoxesType": "object_detection", "chartType": "image", "isDisabled": False,
            "isProcessing": False, "processingError": False, "isCropped": False, "metadata": dict(metadata),
            "projectId": project["id"], "sha256Hash": digest, "datastreams": [],
            "imageDimensions": {"width": width, "height": height},
        }
        self.sample_data[sample_id] = data
        return {"success": True, "sampleId": sample_id, "fileName": name, "projectId": project["id"]}

    # -- Studio: projects ------------------------------------------------------------------------------
    @route("GET", r"/v1/api/projects")
    def list_projects(self, request: Request) -> Response:
        return json_response({"success": True, "projects": [copy.deepcopy(self._project(request))]})

    @route("GET", rf"/v1/api/{PID}")
    def project_info(self, request: Request) -> Response:
        project = self.projects.get(int(request.params["pid"]))
        if project is None:
            return fail("Project not found", self.error_status)
        return json_response({"success": True, "project": copy.deepcopy(project), "devices": [],
                              "studioUrl": self.url})

    # -- Studio: samples -------------------------------------------------------------------------
    def _sample(self, request: Request) -> dict | None:
        sample = self.samples.get(int(request.params["sid"]))
        if sample is None or sample["projectId"] != int(request.params["pid"]):
            return None
        return sample

    def _no_sample(self, request: Request) -> Response:
        return fail(f"No sample found with ID {request.params['sid']}", self.error_status)

    @route("GET", rf"/v1/api/{PID}/raw-data")
    def list_samples(self, request: Request) -> Response:
        category = request.arg("category")
        if category not in LIST_CATEGORIES:
            return fail(f"Invalid category '{category}'", 400)
        try:
            limit = int(request.arg("limit", "1000"))
            offset = int(request.arg("offset", "0"))
            labels = json.loads(request.arg("labels")) if request.arg("labels") else None
        except ValueError as exc:
            return fail(f"Invalid parameter: {exc}", 400)
        name = request.arg("filename")
        with self.lock:
            found = [s for s in self.samples.values() if s["projectId"] == int(request.params["pid"])
                     and (category == "all" or s["category"] == category)
                     and (not name or name in s["filename"]) and (not labels or s["label"] in labels)]
            found.sort(key=lambda s: -s["id"])
            page = copy.deepcopy(found[offset:offset + limit])
        if request.arg("excludeSensors") == "true":
            for sample in page:
                sample["sensors"] = []
        return json_response({"success": True, "samples": page, "totalCount": len(found)})

    @route("GET", rf"/v1/api/{PID}/raw-data/count")
    def count_samples(self, request: Request) -> Response:
        category = request.arg("category")
        if category not in LIST_CATEGORIES:
            return fail(f"Invalid category '{category}'", 400)
        with self.lock:
            count = sum(1 for s in self.samples.values() if s["projectId"] == int(request.params["pid"])
                        and (category == "all" or s["category"] == category))
        return json_response({"success": True, "count": count})

    @route("GET", rf"/v1/api/{PID}/raw-data/{SID}")
    def get_sample(self, request: Request) -> Response:
        with self.lock:
            sample = self._sample(request)
            if sample is None:
                return self._no_sample(request)
            payload = {"deviceType": "IMAGE", "sensors": [], "values": [], "intervalMs": 0, "frequencyHz": 0}
            return json_response({"success": True, "sample": copy.deepcopy(sample), "payload": payload,
                                  "totalPayloadLength": 0, "datastreamPayloads": []})

    def _json_body(self, request: Request):
        try:
            return request.json(), None
        except ValueError:
            return None, fail("The body is not valid JSON", 400)

    @route("POST", rf"/v1/api/{PID}/raw-data/{SID}/metadata")
    def set_metadata(self, request: Request) -> Response:
        body, error = self._json_body(request)
        if error:
            return error
        if not isinstance(body, dict) or set(body) - {"metadata"} or not string_map(body.get("metadata", {})):
            return fail("Body must be {\"metadata\": {string: string}}", 400)
        with self.lock:
            sample = self._sample(request)
            if sample is None:
                return self._no_sample(request)
            new = dict(body.get("metadata") or {})
            sample["metadata"] = {**sample["metadata"], **new} if self.metadata_merge else new
            sample["lastModified"] = now_iso()
        return json_response({"success": True})

    @route("POST", rf"/v1/api/{PID}/raw-data/{SID}/edit-label")
    def edit_label(self, request: Request) -> Response:
        body, error = self._json_body(request)
        if error:
            return error
        if not isinstance(body, dict) or not isinstance(body.get("label"), str):
            return fail("Body must be {\"label\": string}", 400)
        with self.lock:
            sample = self._sample(request)
            if sample is None:
                return self._no_sample(request)
            sample["label"] = body["label"]
            sample["lastModified"] = now_iso()
        return json_response({"success": True})

    @route("DELETE", rf"/v1/api/{PID}/raw-data/{SID}")
    def delete_sample(self, request: Request) -> Response:
        with self.lock:
            sample = self._sample(request)
            if sample is None:
                return self._no_sample(request)
            del self.samples[sample["id"]]
            self.sample_data.pop(sample["id"], None)
        return json_response({"success": True})

    @route("POST", rf"/v1/api/{PID}/raw-data/batch/clear-metadata-by-key")
    def clear_metadata_by_key(self, request: Request) -> Response:
        body, error = self._json_body(request)
        if error:
            return error
        if request.arg("category") not in LIST_CATEGORIES or not isinstance(body, dict) or (
                not isinstance(body.get("metadataKey"), str)):
            return fail("category and {\"metadataKey\": string} are required", 400)
        ids = json.loads(request.arg("ids")) if request.arg("ids") else None
        with self.lock:
            for sample in self.samples.values():
                if sample["projectId"] == int(request.params["pid"]) and (ids is None or sample["id"] in ids) and (
                        request.arg("category") in ("all", sample["category"])):
                    sample["metadata"].pop(body["metadataKey"], None)
        return json_response({"success": True})
