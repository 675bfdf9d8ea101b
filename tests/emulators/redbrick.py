"""A stateful RedBrick AI emulator: one GraphQL endpoint plus presigned PUT URLs, shaped
after the official ``redbrick-sdk`` 2.35.4 wire traffic (platform reference, Part 2 §2).

Transport: ``POST /graphql/`` (also ``/api/graphql/``) with a body that is either
``base64(gzip(json))`` (header ``Content-Encoding-RB: gzip``, what the SDK sends) or plain
JSON. The operation is routed on its name (``query|mutation <Name>``), not by parsing the
selection: every answer carries the full shard the SDK asks for. Faults can target one
operation: ``faults.next("lost_reply", path="createDatapointSDK$")`` (see ``fault_path``).

Behaviour the targets and the SDK rely on:
- ``ApiKey`` header: an unknown or revoked key is HTTP 401; a known key used on another
  organisation is a GraphQL ``errors`` entry (HTTP 200) saying it is not authorised.
- Errors are ``{"data": {<field>: null}, "errors": [{"message", "path"}]}`` with HTTP 200;
  an unknown operation or an undecodable body is HTTP 400.
- Task names are unique per project: ``createDatapoint`` with a taken name is an error
  entry (``duplicate_message``). Direct-upload items (storage ``2222…``) must be file
  paths that were PUT to a presigned URL; ``metaData`` must be a JSON object of strings.
- ``updateTaskItems``: ``items``/``metaData``/``seriesInfo`` replace what is stored when
  given (``append`` extends items); None leaves them. Labels, ``putLabels`` and the label
  files: ``redbrick_labels`` (strict checks; tasks keep ``labels`` and ``segmentations``).
- ``genericTasks``: ``taskSearch`` is a name *prefix* (a ``"quoted"`` search is exact),
  pages with ``first`` and an opaque ``after`` cursor (None after the last page).
- ``validateAndConvertToImportFormat``: import-format tasks (``items``) pass through with
  ``converted: null``; public-format tasks (``series``) are converted (``redbrick_formats``).
"""

from __future__ import annotations

import base64
import copy
import gzip
import itertools
import json
import re
import secrets
import uuid
from datetime import datetime, timezone

from tests.emulators.base import Emulator, Request, Response, json_response, route
from tests.emulators.redbrick_formats import task_entry, validate_and_convert
from tests.emulators.redbrick_labels import GraphQLFailure, LabelsMixin, json_string

PUBLIC = "11111111-1111-1111-1111-111111111111"
REDBRICK = "22222222-2222-2222-2222-222222222222"
STORAGES = {PUBLIC, REDBRICK}
GRAPHQL = r"/(?:api/)?graphql/?"
OPERATION = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")


def decode_payload(request: Request) -> dict:
    """The GraphQL payload of a request: base64+gzip with ``Content-Encoding-RB: gzip``, else JSON."""
    body = request.body
    if (request.header("content-encoding-rb") or "").lower() == "gzip":
        body = gzip.decompress(base64.b64decode(body, validate=True))
    payload = json.loads(body.decode("utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        raise ValueError("the body is not a GraphQL request")
    return payload


def operation_of(payload: dict) -> str | None:
    match = OPERATION.match(payload["query"])
    return payload.get("operationName") or (match.group(1) if match else None)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class RedBrickEmulator(LabelsMixin, Emulator):
    name = "redbrick"

    def __init__(self, *, seed: int = 1234):
        super().__init__(seed=seed)
        self.duplicate_message = "Task with name '{name}' already exists in this project"
        self.keys: dict[str, str] = {}  # API key -> organisation id
        self.projects: dict[tuple[str, str], dict] = {}
        self.tasks: dict[str, dict] = {}  # taskId -> task (internal form)
        self.names: dict[tuple[str, str, str], str] = {}  # (org, project, name) -> taskId
        self.blobs: dict[str, dict] = {}  # filePath -> {"data", "content_type", "headers", "kind"}
        self.presigned: dict[str, dict] = {}  # token -> {"filePath", "fileType", "kind", "required"}
        self.calls: list[dict] = []  # every GraphQL call: op, variables, headers
        self.puts: list[dict] = []  # every PUT: filePath, headers, size
        self.scripted: dict[str, list[str]] = {}  # op -> error messages for its next calls
        self._seq = itertools.count(1)

    # -- state helpers for tests -------------------------------------------------------------
    def add_api_key(self, org_id: str, key: str | None = None) -> str:
        """A 43-character API key (the SDK refuses any other length) for ``org_id``."""
        key = key or secrets.token_urlsafe(32)[:43].ljust(43, "x")
        with self.lock:
            self.keys[key] = org_id
        return key

    def revoke(self, key: str) -> None:
        with self.lock:
            self.keys.pop(key, None)

    def add_project(self, org_id: str, project_id: str | None = None, *, name: str = "Project",
                    status: str = "CREATION_SUCCESS") -> dict:
        project_id = project_id or str(uuid.uuid4())
        stamp = now_iso()
        project = {
            "orgId": org_id, "projectId": project_id, "name": name, "desc": "", "status": status,
            "tdType": "IMAGE_SEGMENTATION", "taxonomy": self._taxonomy(org_id),
            "projectUrl": f"https://app.redbrickai.com/{org_id}/projects/{project_id}",
            "createdAt": stamp, "updatedAt": stamp, "consensusSettings": {"enabled": False},
            "workspace": None,
            "stages": [
                {"stageName": "Label", "brickName": "manual-labeling", "stageConfig": "{}",
                 "routing": {"nextStageName": "Review_1"}},
                {"stageName": "Review_1", "brickName": "expert-review", "stageConfig": "{}",
                 "routing": {"passed": "Output", "failed": "Label"}},
                {"stageName": "Output", "brickName": "labelset-output", "stageConfig": "{}",
                 "routing": {"nextStageName": "END"}},
            ],
        }
        with self.lock:
            self.projects[(org_id, project_id)] = project
        return project

    @staticmethod
    def _taxonomy(org_id: str) -> dict:
        # More keys than orgId/taxId/name, so the SDK does not send a second taxonomy query.
        return {"orgId": org_id, "taxId": str(uuid.uuid4()), "name": "Default", "version": 1, "createdAt": now_iso(),
                "categories": None, "attributes": None, "taskCategories": None, "taskAttributes": None,
                "colorMap": None, "archived": False, "isNew": True, "studyClassify": [], "seriesClassify": [],
                "instanceClassify": [],
                "objectTypes": [{"category": "road", "classId": 0, "labelType": "SEGMENTATION", "attributes": [],
                                 "color": "#ff0000", "archived": False, "parents": [], "hint": None}]}

    def script_error(self, op: str, message: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``op`` with an ``errors`` entry (HTTP 200),
        before touching any state."""
        with self.lock:
            self.scripted.setdefault(op, []).extend([message] * times)

    def add_task(self, org_id: str, project_id: str, name: str, *, meta: dict | None = None,
                 items: list[str] | None = None) -> dict:
        """A task made by someone else (public storage, so no upload is needed)."""
        variables = {"orgId": org_id, "projectId": project_id, "name": name, "storageId": PUBLIC,
                     "items": items or [f"https://example.com/{name}.png"], "isGroundTruth": False,
                     "metaData": None if meta is None else json.dumps(meta)}
        with self.lock:
            created = self.op_createDatapointSDK(variables, org_id)["createDatapoint"]
            return copy.deepcopy(self.tasks[created["taskId"]])

    def tasks_in(self, org_id: str, project_id: str) -> list[dict]:
        """Copies of the project's tasks, oldest first; ``metaData`` decoded to a dict."""
        with self.lock:
            found = [copy.deepcopy(t) for t in self.tasks.values()
                     if (t["orgId"], t["projectId"]) == (org_id, project_id)]
        for task in found:
            task["meta"] = json.loads(task["metaData"]) if task["metaData"] else {}
        return sorted(found, key=lambda t: t["seq"])

    def calls_of(self, op: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["op"] == op]

    # -- transport ---------------------------------------------------------------------------
    def fault_path(self, request: Request) -> str:
        """``/graphql/<OperationName>`` for GraphQL calls, so faults can target one operation."""
        if request.method == "POST" and re.fullmatch(GRAPHQL, request.path):
            try:
                return f"{request.path.rstrip('/')}/{operation_of(decode_payload(request))}"
            except Exception:
                return request.path
        return request.path

    def authorize(self, request: Request) -> Response | None:
        if request.method == "POST" and self.keys.get(request.header("apikey") or "") is None:
            return json_response({"message": "Unauthorized"}, 401)
        return None

    @route("POST", GRAPHQL)
    def graphql(self, request: Request) -> Response:
        try:
            payload = decode_payload(request)
        except (ValueError, OSError, EOFError) as exc:
            return json_response({"errors": [{"message": f"could not decode the request body: {exc}"}]}, 400)
        op = operation_of(payload)
        variables = payload.get("variables") or {}
        handler = getattr(self, f"op_{op}", None) if op else None
        with self.lock:
            self.calls.append({"op": op, "variables": copy.deepcopy(variables), "headers": dict(request.headers)})
            if handler is None:
                return json_response({"errors": [{"message": f"Unknown operation {op!r}"}]}, 400)
            if self.scripted.get(op):
                message = self.scripted[op].pop(0)
                return json_response({"data": None, "errors": [{"message": message}]})
            try:
                return json_response({"data": handler(variables, self.keys.get(request.header("apikey") or "", ""))})
            except GraphQLFailure as failure:
                return json_response({"data": {failure.field: None},
                                      "errors": [{"message": failure.message, "path": [failure.field]}]})

    @route("PUT", r"/upload/(?P<token>[^/]+)")
    def put_file(self, request: Request) -> Response:
        with self.lock:
            grant = self.presigned.get(request.params["token"])
            content_type = request.header("content-type")
            self.puts.append({"token": request.params["token"], "headers": dict(request.headers),
                              "size": len(request.body), "filePath": grant and grant["filePath"]})
            if grant is None or content_type != grant["fileType"]:
                # What S3 answers for an unknown URL or a Content-Type other than the signed one.
                return Response(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>",
                                {"Content-Type": "application/xml"})
            missing = [k for k, value in grant["required"].items() if request.header(k) != value]
            if missing:  # Azure's answer to a Put Blob without x-ms-blob-type
                return Response(400, f"<Error><Code>MissingRequiredHeader</Code><HeaderName>{missing[0]}"
                                     "</HeaderName></Error>", {"Content-Type": "application/xml"})
            self.blobs[grant["filePath"]] = {"data": request.body, "content_type": content_type,
                                             "headers": dict(request.headers), "kind": grant["kind"]}
        return Response(200, b"", {"ETag": f'"{uuid.uuid4().hex}"'})

    # -- helpers -----------------------------------------------------------------------------
    def _project(self, field: str, variables: dict, key_org: str) -> dict:
        org_id = variables.get("orgId")
        if org_id != key_org:
            raise GraphQLFailure(field, f"Unauthorized: this API key cannot access organization {org_id}")
        project = self.projects.get((org_id, variables.get("projectId")))
        if project is None:
            raise GraphQLFailure(field, f"Project {variables.get('projectId')} not found")
        return project

    def _task(self, field: str, project: dict, task_id: str | None, dp_id: str | None = None) -> dict:
        for task in self.tasks.values():
            same_project = (task["orgId"], task["projectId"]) == (project["orgId"], project["projectId"])
            wanted = (task_id and task["taskId"] == task_id) or (not task_id and dp_id and task["dpId"] == dp_id)
            if same_project and wanted:
                return task
        raise GraphQLFailure(field, f"Task {task_id or dp_id} not found")

    def _check_items(self, field: str, items, storage_id: str) -> list[str]:
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            raise GraphQLFailure(field, "items must be a non-empty list of strings")
        if storage_id not in STORAGES:
            raise GraphQLFailure(field, f"Storage method {storage_id} not found")
        if storage_id == REDBRICK:
            missing = [i for i in items if i not in self.blobs]
            if missing:
                raise GraphQLFailure(field, f"Item {missing[0]} was not uploaded")
        return list(items)

    def _metadata(self, field: str, value) -> str | None:
        if value is None:
            return None
        meta = json_string(field, value, dict, "metaData")
        if not all(isinstance(v, str) for v in meta.values()):
            raise GraphQLFailure(field, "metaData values must be strings")
        return value

    def _presign(self, project: dict, name: str, file_type: str, *, kind: str = "item",
                 required: dict | None = None) -> dict:
        token = f"{kind}-{uuid.uuid4().hex}"  # the kind shows in the URL, for fault filters
        path = f"{project['orgId']}/{project['projectId']}/{kind}s/{token}/{name}"
        self.presigned[token] = {"filePath": path, "fileType": file_type, "kind": kind, "required": required or {}}
        return {"presignedUrl": f"{self.url}/upload/{token}", "filePath": path, "fileName": name}

    # -- operations (each returns the ``data`` object) --------------------------------------
    def op_getProjectSDK(self, v: dict, key_org: str) -> dict:
        if v.get("orgId") != key_org:
            raise GraphQLFailure("project", f"Unauthorized: this API key cannot access organization {v.get('orgId')}")
        project = self.projects.get((v.get("orgId"), v.get("projectId")))
        return {"project": copy.deepcopy(project)}

    def op_getLabelStorageSDK(self, v: dict, key_org: str) -> dict:
        self._project("getLabelStorage", v, key_org)
        return {"getLabelStorage": {"storageId": REDBRICK, "path": "redbrick"}}

    def op_membersSDK(self, v: dict, key_org: str) -> dict:
        if v.get("orgId") != key_org:
            raise GraphQLFailure("members", "Unauthorized")
        user = {"userId": "u-1", "email": "owner@example.com", "givenName": "Owner", "familyName": "Example",
                "mfaSetup": False, "lastSeen": now_iso(), "updatedAt": now_iso(), "idProvider": None}
        return {"members": [{"user": user, "role": "OWNER", "tags": [], "active": True, "lastSeen": now_iso()}]}

    def op_itemsUploadPresignSDK(self, v: dict, key_org: str) -> dict:
        project = self._project("itemsUploadPresign", v, key_org)
        files, types = v.get("files") or [], v.get("fileType") or []
        if len(files) != len(types):
            raise GraphQLFailure("itemsUploadPresign", "files and fileType must have the same length")
        return {"itemsUploadPresign": {"items": [self._presign(project, f, t) for f, t in zip(files, types)]}}

    def op_createDatapointSDK(self, v: dict, key_org: str) -> dict:
        field = "createDatapoint"
        project = self._project(field, v, key_org)
        name = v.get("name")
        if not isinstance(name, str) or not name:
            raise GraphQLFailure(field, "name must be a non-empty string")
        if not isinstance(v.get("isGroundTruth"), bool):
            raise GraphQLFailure(field, "isGroundTruth must be a boolean")
        items = self._check_items(field, v.get("items"), v.get("storageId"))
        meta = self._metadata(field, v.get("metaData"))
        labels = self.task_labels(field, v)
        key = (project["orgId"], project["projectId"], name)
        if key in self.names:
            raise GraphQLFailure(field, self.duplicate_message.format(name=name))
        task_id, dp_id, stamp = str(uuid.uuid4()), str(uuid.uuid4()), now_iso()
        self.tasks[task_id] = {
            "taskId": task_id, "dpId": dp_id, "orgId": project["orgId"], "projectId": project["projectId"],
            "name": name, "items": items, "storageId": v["storageId"], "metaData": meta,
            "seriesInfo": v.get("seriesInfo"), **labels, "labelsVersion": 0, "isGroundTruth": v["isGroundTruth"],
            "priority": v.get("priority"), "preAssign": v.get("preAssign"), "attributes": v.get("attributes"),
            "heatMaps": v.get("heatMaps"), "transforms": v.get("transforms"), "centerline": v.get("centerline"),
            "stage": "Output" if v["isGroundTruth"] else "Label", "createdAt": stamp, "updatedAt": stamp,
            "seq": next(self._seq),
        }
        self.names[key] = task_id
        return {field: {"dpId": dp_id, "taskId": task_id, "taskIds": [task_id]}}

    def op_updateTaskItemsSDK(self, v: dict, key_org: str) -> dict:
        field = "updateTaskItems"
        project = self._project(field, v, key_org)
        task = self._task(field, project, v.get("taskId"), v.get("dpId"))
        storage_id = v.get("storageId")
        if storage_id not in STORAGES:
            raise GraphQLFailure(field, f"Storage method {storage_id} not found")
        meta = self._metadata(field, v.get("metaData"))
        if v.get("items") is not None:
            items = self._check_items(field, v["items"], storage_id)
            task["items"] = task["items"] + items if v.get("append") else items
            task["storageId"] = storage_id
        if meta is not None:
            task["metaData"] = meta  # replaces: keys not sent are gone
        for name in ("seriesInfo", "heatMaps", "transforms", "centerline"):
            if v.get(name) is not None:
                task[name] = v[name]
        task["updatedAt"] = now_iso()
        return {field: {"ok": True, "message": None}}

    def _delete(self, field: str, v: dict, key_org: str, match) -> dict:
        project = self._project(field, v, key_org)
        for task in list(self.tasks.values()):
            if (task["orgId"], task["projectId"]) == (project["orgId"], project["projectId"]) and match(task):
                del self.tasks[task["taskId"]]
                self.names.pop((task["orgId"], task["projectId"], task["name"]), None)
        return {field: {"ok": True}}

    def op_deleteTasksSDK(self, v: dict, key_org: str) -> dict:
        return self._delete("deleteTasks", v, key_org, lambda t: t["taskId"] in (v.get("taskIds") or []))

    def op_deleteTasksNamesSDK(self, v: dict, key_org: str) -> dict:
        return self._delete("deleteTasks", v, key_org, lambda t: t["name"] in (v.get("taskNames") or []))

    def op_tasksListSDK(self, v: dict, key_org: str) -> dict:
        field = "genericTasks"
        project = self._project(field, v, key_org)
        search = v.get("taskSearch") or ""
        exact = len(search) >= 2 and search.startswith('"') and search.endswith('"')
        filters = v.get("manualLabelingFilters") or {}
        found = [t for t in sorted(self.tasks.values(), key=lambda t: t["seq"])
                 if (t["orgId"], t["projectId"]) == (project["orgId"], project["projectId"])
                 and (t["name"] == search[1:-1] if exact else t["name"].startswith(search))
                 and (not v.get("stageName") or t["stage"] == v["stageName"])
                 and (not filters.get("taskId") or t["taskId"] == filters["taskId"])]
        try:
            start = int(base64.b64decode(v["after"]).decode()) if v.get("after") else 0
        except ValueError:
            raise GraphQLFailure(field, "Invalid cursor") from None
        first = v.get("first") or 50
        page = found[start:start + first]
        more = start + first < len(found)
        cursor = base64.b64encode(str(start + first).encode()).decode() if more else None
        return {field: {"entries": [task_entry(t) for t in page], "cursor": cursor}}

    def op_validateAndConvertToImportFormatSDK(self, v: dict, key_org: str) -> dict:
        return {"validateAndConvertToImportFormat": validate_and_convert(v.get("original"))}
