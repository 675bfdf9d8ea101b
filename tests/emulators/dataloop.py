"""A stateful Dataloop emulator (REST under ``/api/v1``), shaped after the official ``dtlpy``
SDK's wire traffic (platform reference, Part 2 §1).

State: projects (looked up by name as a *list*), datasets (each with a default recipe and
ontology in ``metadata.system.recipes``), items keyed by ``(dataset id, filename)`` with
their binaries, annotations. Behaviour the targets and the SDK rely on:

- Bearer JWT auth: HS256-signed with ``self.secret``, ``exp`` in the future, not revoked;
  anything else is 401 ``{"message": ...}``. ``make_token()`` mints keys.
- ``POST /datasets/{id}/items?mode=skip|overwrite`` (multipart, plain or chunked):
  skip returns the existing item untouched, overwrite replaces binary and ``metadata.user``
  (when a metadata part is sent); header ``x-item-op`` is created/overwrite/skip;
  ``metadata.system.size`` is the number of bytes received (``truncate_next`` makes the
  next stored binaries one byte short, to emulate a corrupted upload).
- ``PATCH /items/{id}``: deep merge, ``null`` deletes a key; ``metadata.system`` only with
  ``?system=true``; read-only fields are ignored.
- ``POST /datasets/{id}/query``: DQL filters ($and/$or, $eq $ne $gt $gte $lt $lte $in $nin
  $exists $match, ``*`` globs on strings), sort, page/pageSize; resources items and
  annotations.
- Annotations, recipes and ontologies: see dataloop_annotations (strict payload checks,
  POST adds and never replaces). An image's ``metadata.system.width/height`` are set at
  upload (Dataloop sets them when it has processed the image), for the binary mask check.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import itertools
import json
import posixpath
import re
import time

from PIL import Image

from tests.emulators.base import Emulator, Request, Response, json_response, route
from tests.emulators.dataloop_annotations import AnnotationRoutes
from tests.emulators.dataloop_query import deep_merge, page_of

API = "/api/v1"
ID = r"(?P<id>[^/]+)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict, secret: bytes) -> str:
    """An HS256 JWT carrying ``claims``."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def error(status: int, message: str) -> Response:
    return json_response({"message": message, "status": status}, status, **{"x-request-id": f"req-{time.time_ns()}"})


class DataloopEmulator(AnnotationRoutes, Emulator):
    name = "dataloop"

    def __init__(self, *, seed: int = 1234, secret: bytes = b"dataloop-emulator-secret",
                 overwrite_new_id: bool = False):
        super().__init__(seed=seed)
        self.secret = secret
        # Whether mode=overwrite gives the item a new id (the real behaviour is unverified).
        self.overwrite_new_id = overwrite_new_id
        self.truncate_next = 0
        # With ``record``, every request is kept in ``self.journal`` as a dict: method, path,
        # query, and the JSON body or the multipart parts (name -> text, or size for files).
        self.record = False
        self.journal: list[dict] = []
        self.revoked: set[str] = set()
        self._ids = itertools.count(1)
        self.projects: dict[str, dict] = {}
        self.datasets: dict[str, dict] = {}
        self.items: dict[str, dict] = {}
        self.binaries: dict[str, bytes] = {}
        self.paths: dict[tuple[str, str], str] = {}
        self.annotations: dict[str, dict] = {}
        self.recipes: dict[str, dict] = {}
        self.ontologies: dict[str, dict] = {}

    # -- test-side helpers -------------------------------------------------------------------
    def make_token(self, email: str = "dev@example.com", *, expires_in: float = 3600 * 24 * 365) -> str:
        now = int(time.time())
        return make_jwt({"email": email, "sub": email, "iat": now, "exp": now + int(expires_in)}, self.secret)

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def new_id(self) -> str:
        return f"65{next(self._ids):022x}"  # increasing, like Mongo ObjectIds

    def add_project(self, name: str) -> dict:
        with self.lock:
            project = {"id": self.new_id(), "name": name, "creator": "dev@example.com", "role": "owner",
                       "createdAt": self._now(), "org": {}, "isBlocked": False, "groups": []}
            self.projects[project["id"]] = project
            return project

    def add_dataset(self, project_id: str, name: str) -> dict:
        with self.lock:
            ontology = {"id": self.new_id(), "title": f"{name} ontology", "roots": [], "attributes": [],
                        "metadata": {"system": {}}, "creator": "dev@example.com"}
            recipe = {"id": self.new_id(), "title": f"{name} recipe", "ontologyIds": [ontology["id"]],
                      "projectIds": [project_id], "creator": "dev@example.com"}
            dataset = {"id": self.new_id(), "name": name, "projects": [project_id], "driver": None,
                       "createdAt": self._now(), "creator": "dev@example.com", "itemsCount": 0,
                       "annotated": 0, "readonly": False, "accessLevel": "custom",
                       "metadata": {"system": {"recipes": [recipe["id"]]}}}
            self.ontologies[ontology["id"]] = ontology
            self.recipes[recipe["id"]] = recipe
            self.datasets[dataset["id"]] = dataset
            return dataset

    def items_in(self, dataset_id: str) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(i) for i in self.items.values()
                    if i["datasetId"] == dataset_id and i["type"] == "file"]

    @staticmethod
    def _now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())

    def _route(self, request: Request) -> Response:
        if self.record:
            entry = {"method": request.method, "path": request.path, "query": request.query,
                     "headers": dict(request.headers)}
            try:
                if (request.header("content-type") or "").startswith("multipart/"):
                    entry["parts"] = [(p.name, p.text if p.filename is None else len(p.data)) for p in request.parts()]
                elif request.body:
                    entry["json"] = request.json()
            except ValueError:
                entry["body"] = request.body
            with self.lock:
                self.journal.append(entry)
        return super()._route(request)

    def recorded(self, method: str, pattern: str) -> list[dict]:
        """Journal entries of ``method`` on paths matching regex ``pattern``."""
        with self.lock:
            return [e for e in self.journal if e["method"] == method and re.search(pattern, e["path"])]

    # -- auth --------------------------------------------------------------------------------
    def claims(self, request: Request) -> dict | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        parts = token.split(".")
        if scheme.lower() != "bearer" or len(parts) != 3 or token in self.revoked:
            return None
        sig = hmac.new(self.secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(sig), parts[2]):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return None
        return claims if isinstance(claims, dict) and claims.get("exp", 0) > time.time() else None

    def authorize(self, request: Request) -> Response | None:
        if self.claims(request) is None:
            return error(401, "Unauthorized: missing, invalid or expired token")
        return None

    # -- users, projects, datasets ---------------------------------------------------------------
    @route("GET", f"{API}/users/me")
    def users_me(self, request: Request) -> Response:
        email = self.claims(request).get("email", "dev@example.com")
        return json_response({"id": email, "email": email, "username": email, "firstName": "Dev", "lastName": "User"})

    @route("GET", f"{API}/projects")
    def list_projects(self, request: Request) -> Response:
        with self.lock:
            return json_response(list(self.projects.values()))

    @route("GET", f"{API}/projects/(?P<name>.+)/name")
    def project_by_name(self, request: Request) -> Response:
        with self.lock:
            found = [p for p in self.projects.values() if p["name"] == request.params["name"]]
        return json_response(found) if found else error(404, "Project not found")

    @route("GET", f"{API}/projects/{ID}")
    def get_project(self, request: Request) -> Response:
        project = self.projects.get(request.params["id"])
        return json_response(project) if project else error(404, "Project not found")

    @route("POST", f"{API}/datasets/query")
    def query_datasets(self, request: Request) -> Response:
        body = request.json()
        wanted = set((body.get("context") or {}).get("projects") or [])
        with self.lock:
            docs = [d for d in self.datasets.values() if not wanted or wanted & set(d["projects"])]
            return json_response(page_of(docs, body))

    @route("POST", f"{API}/datasets")
    def create_dataset(self, request: Request) -> Response:
        body = request.json()
        project_id = (body.get("projects") or [None])[0]
        if project_id not in self.projects or not body.get("name"):
            return error(400, "a dataset needs a name and an existing project")
        return json_response(self.add_dataset(project_id, body["name"]))

    @route("GET", f"{API}/datasets/{ID}")
    def get_dataset(self, request: Request) -> Response:
        dataset = self.datasets.get(request.params["id"])
        return json_response(dataset) if dataset else error(404, "Dataset not found")

    # -- items -------------------------------------------------------------------------------
    def _item_json(self, request: Request, item_id: str, dataset_id: str, path: str, email: str) -> dict:
        base = f"http://{request.header('host', '127.0.0.1')}{API}"
        return {"id": item_id, "datasetId": dataset_id, "dataset": f"{base}/datasets/{dataset_id}",
                "url": f"{base}/items/{item_id}", "stream": f"{base}/items/{item_id}/stream",
                "thumbnail": f"{base}/items/{item_id}/thumbnail", "annotations": f"{base}/items/{item_id}/annotations",
                "createdAt": self._now(), "updatedAt": self._now(), "creator": email, "updatedBy": email,
                "dir": posixpath.dirname(path), "filename": path, "name": posixpath.basename(path), "type": "file",
                "hidden": False, "annotated": False, "annotationsCount": 0,
                "metadata": {"system": {}, "user": {}}}

    def _store_binary(self, item: dict, file_part) -> None:
        data = file_part.data
        if self.truncate_next > 0:  # a corrupted upload: the platform kept fewer bytes
            self.truncate_next -= 1
            data = data[:-1]
        self.binaries[item["id"]] = data
        try:
            with Image.open(io.BytesIO(data)) as image:
                item["metadata"]["system"].update({"width": image.width, "height": image.height})
        except OSError:  # not an image: Dataloop keeps it as a file without dimensions
            pass
        item["metadata"]["system"].update({"originalname": file_part.filename or item["name"], "size": len(data),
                                           "encoding": "7bit", "mimetype": file_part.content_type or
                                           "application/octet-stream", "refs": [], "isBinary": True})

    @route("POST", f"{API}/datasets/{ID}/items")
    def upload_item(self, request: Request) -> Response:
        dataset_id = request.params["id"]
        if dataset_id not in self.datasets:
            return error(404, "Dataset not found")
        mode = request.arg("mode", "skip")
        if mode not in ("skip", "overwrite"):
            return error(400, f"unknown mode {mode!r}")
        try:
            parts = {p.name: p for p in request.parts()}
            metadata = json.loads(parts["metadata"].text) if "metadata" in parts else None
        except (ValueError, KeyError) as exc:
            return error(400, f"bad multipart body: {exc}")
        path = parts["path"].text if "path" in parts else ""
        if not path.startswith("/") or (parts.get("type") and parts["type"].text != "file") or "file" not in parts:
            return error(400, "expected type=file, an absolute path and a file part")
        if metadata is not None and not isinstance(metadata, dict):
            return error(400, "metadata must be a JSON object")
        email = self.claims(request).get("email", "dev@example.com")
        with self.lock:
            existing_id = self.paths.get((dataset_id, path))
            if existing_id is not None and mode == "skip":
                return json_response(self.items[existing_id], **{"x-item-op": "skip"})
            if existing_id is not None and self.overwrite_new_id:
                self._delete_item(existing_id)
                existing_id = None
            if existing_id is None:
                item = self._item_json(request, self.new_id(), dataset_id, path, email)
                self.items[item["id"]] = item
                self.paths[(dataset_id, path)] = item["id"]
                self.datasets[dataset_id]["itemsCount"] += 1
                op = "created"
            else:
                item = self.items[existing_id]
                item["updatedAt"], item["updatedBy"] = self._now(), email
                op = "overwrite"
            if metadata is not None:
                item["metadata"]["user"] = copy.deepcopy(metadata.get("user") or {})
                deep_merge(item["metadata"]["system"], metadata.get("system") or {})
            self._store_binary(item, parts["file"])
            return json_response(item, **{"x-item-op": op})

    def _delete_item(self, item_id: str) -> None:
        item = self.items.pop(item_id)
        self.binaries.pop(item_id, None)
        self.paths.pop((item["datasetId"], item["filename"]), None)
        self.datasets[item["datasetId"]]["itemsCount"] -= 1
        for ann_id in [a for a, ann in self.annotations.items() if ann["itemId"] == item_id]:
            del self.annotations[ann_id]

    @route("GET", f"{API}/items/{ID}")
    def get_item(self, request: Request) -> Response:
        item = self.items.get(request.params["id"])
        return json_response(item) if item else error(404, "Item not found")

    @route("DELETE", f"{API}/items/{ID}")
    def delete_item(self, request: Request) -> Response:
        with self.lock:
            if request.params["id"] not in self.items:
                return error(404, "Item not found")
            self._delete_item(request.params["id"])
        return Response(200, b"")

    @route("PATCH", f"{API}/items/{ID}")
    def patch_item(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            return error(400, "expected a JSON object")
        with self.lock:
            item = self.items.get(request.params["id"])
            if item is None:
                return error(404, "Item not found")
            metadata = dict(body.get("metadata") or {})
            if request.arg("system") != "true":
                metadata.pop("system", None)  # system metadata needs ?system=true
            deep_merge(item["metadata"], metadata)
            for field in ("description",):
                if field in body:
                    item[field] = body[field]
            item["updatedAt"] = self._now()
            return json_response(item)

    @route("POST", f"{API}/datasets/{ID}/query")
    def query_dataset(self, request: Request) -> Response:
        dataset_id = request.params["id"]
        if dataset_id not in self.datasets:
            return error(404, "Dataset not found")
        body = request.json()
        if "update" in body or "delete" in body:
            return error(400, "bulk update/delete by query is not emulated")
        with self.lock:
            if body.get("resource", "items") == "annotations":
                docs = [a for a in self.annotations.values() if a["datasetId"] == dataset_id]
            else:
                docs = [i for i in self.items.values() if i["datasetId"] == dataset_id]
            return json_response(copy.deepcopy(page_of(docs, body)))
