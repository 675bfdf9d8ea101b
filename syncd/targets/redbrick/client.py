"""RedBrick AI wire protocol: one GraphQL endpoint, presigned PUTs, and error classes.

What goes on the wire is what the official ``redbrick-sdk`` 2.35.4 sends
(docs/platforms/redbrick.md): ``POST <endpoint>`` with headers ``ApiKey``,
``Content-Encoding-RB: gzip`` and the body ``base64(gzip(json({"query", "variables"})))``; the operation names and
variables of the queries below are the SDK's. Differences, on purpose:
- ``Accept-Encoding: gzip`` instead of ``br, gzip``: requests cannot decode brotli unless
  an optional package is installed, and a reply we cannot read is worse than a larger one.
- Selections ask only for the fields syncd reads.

Error classes (``RedBrickClient.execute``):
- HTTP 401/403 -> FatalTargetError; 404 -> FatalTargetError (no GraphQL endpoint at that
  URL); 408/425/429/5xx and transport errors -> TransientError (with ``Retry-After``);
  other 4xx -> PermanentError (400 answers with GraphQL ``errors`` are classified below).
- ``errors[]`` in a 200: messages that read like authentication/authorisation or a
  missing project -> FatalTargetError; like rate limiting or a temporary server problem ->
  TransientError; anything else -> ``GraphQLRefused`` (a PermanentError the target may
  resolve, e.g. a duplicate task name, by looking the task up). The SDK raises on any
  ``errors`` entry even with partial ``data``, and so do we.
The API key is never part of a message: replies are redacted before they are quoted.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from typing import Any

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.rate import is_throttle
from syncd.targets.http import Credentials, HttpClient, parse_retry_after, redact

DEFAULT_URL = "https://api.redbrickai.com"
PUBLIC_STORAGE = "11111111-1111-1111-1111-111111111111"  # StorageMethod.PUBLIC: absolute URLs
REDBRICK_STORAGE = "22222222-2222-2222-2222-222222222222"  # StorageMethod.REDBRICK: direct upload
KEY_LENGTH = 43  # the SDK refuses any other key length before sending anything
SDK_WIRE_VERSION = "2.35.4"  # the SDK release whose queries and encoding we send
# MIME types of direct-upload images, by extension: the SDK's IMAGE_FILE_TYPES (dicom aside).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp"}

_AUTH = re.compile(r"unauthori[sz]ed|not authori[sz]ed|authori[sz]ation|unauthenticated|authenticat|forbidden|"
                   r"permission|access denied|"
                   r"not allowed|api ?key|project\b.*\b(not found|does not exist)", re.I)
_TRANSIENT = re.compile(r"rate.?limit|too many requests|throttl|timed? ?out|temporar|try again|"
                        r"unavailable|internal server error", re.I)


class GraphQLRefused(PermanentError):
    """The server answered with ``errors[]`` that are neither auth nor transient problems;
    ``messages`` are the (redacted) error messages."""

    def __init__(self, message: str, messages: list[str]):
        super().__init__(message)
        self.messages = messages


def graphql_url(url: str) -> str:
    """The GraphQL endpoint for ``url``, by the SDK's rule (``_get_api_url``): lower-cased,
    trailing ``/`` dropped; the default URL and hosts with ``localhost`` or ``amazonaws.com``
    are kept as given, any other becomes ``https://<host>/api``; then ``/graphql/``."""
    url = (url or DEFAULT_URL).lower().rstrip("/")
    if DEFAULT_URL in url:
        url = DEFAULT_URL
    elif "amazonaws.com" not in url and "localhost" not in url:
        url = url.replace("https://", "", 1).replace("http://", "", 1)
        url = "https://" + url.split("/", 1)[0] + "/api"
    return url + "/graphql/"


def encode_body(query: str, variables: dict[str, Any]) -> bytes:
    """``base64(gzip(json))`` of the GraphQL request, compact JSON as the SDK writes it."""
    raw = json.dumps({"query": query, "variables": variables}, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw))


def classify_errors(messages: list[str], context: str) -> Exception:
    """The syncd error for a GraphQL ``errors`` list (see the module docstring)."""
    joined = "; ".join(messages) or "unknown error"
    if any(_AUTH.search(m) for m in messages):
        return FatalTargetError(f"{context}: RedBrick refused: {joined} — check the API key, org_id and project_id")
    if any(_TRANSIENT.search(m) for m in messages):
        return TransientError(f"{context}: RedBrick answered: {joined}")
    return GraphQLRefused(f"{context}: RedBrick refused: {joined}", messages)


class RedBrickClient(HttpClient):
    """Sends GraphQL operations and presigned PUTs; thread-safe (one session per thread).

    The API key is sent only to the GraphQL endpoint (header ``ApiKey``): sessions carry no
    credentials, so presigned PUTs go without them. A key that is not ``KEY_LENGTH``
    characters long is refused before anything is sent, as the SDK does.
    """

    def __init__(self, name: str, *, key_env: str, url: str, timeout: float, env=None):
        super().__init__(name, key_env=key_env, timeout=timeout, env=env)
        self.endpoint = graphql_url(url)

    def credentials(self, key: str) -> Credentials:
        if len(key) != KEY_LENGTH:
            raise FatalTargetError(
                f"target {self.name!r}: the value of {self.key_env} is not a RedBrick API key "
                f"(expected {KEY_LENGTH} characters, got {len(key)}); copy it again from RedBrick")
        return Credentials()  # no session headers: the key goes on GraphQL calls only

    def _headers(self) -> dict[str, str]:
        return {
            "ApiKey": self.key(),
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Content-Encoding-RB": "gzip",
            "Accept-Encoding": "gzip",
            "RB-SDK-Version": SDK_WIRE_VERSION,
        }

    def execute(self, query: str, variables: dict[str, Any], *, context: str, idempotent: bool = False) -> dict:
        """Run one operation and return its ``data``; raises the classes of the module
        docstring. ``idempotent`` operations (queries) report transient failures with
        ``outcome_unknown=False``: nothing was changed, no lookup is needed."""
        try:
            return self._execute(query, variables, context)
        except TransientError as exc:
            if idempotent and exc.outcome_unknown:
                raise TransientError(str(exc), retry_after=exc.retry_after, outcome_unknown=False,
                                     throttled=exc.throttled) from exc
            raise

    def _execute(self, query: str, variables: dict[str, Any], what: str) -> dict:
        headers = self._headers()
        response = self.request("POST", self.endpoint, context=what, data=encode_body(query, variables),
                                headers=headers)
        context = self.context(what)
        status = response.status_code
        if status == 404:
            raise FatalTargetError(f"{context}: there is no RedBrick GraphQL endpoint at {self.endpoint} "
                                   "(HTTP 404); check the target's url")
        payload = self._payload(response, context) if status in (200, 400) else None
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            messages = [redact(str(e.get("message") if isinstance(e, dict) else e), self.secrets) for e in errors]
            raise classify_errors(messages, context)
        self.raise_for_status(response, what)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise TransientError(f"{context}: the reply has no data: {self.describe(response)}")
        return data

    def _payload(self, response, context: str) -> Any:
        try:
            return response.json()
        except ValueError:
            if response.status_code == 200:
                raise TransientError(f"{context}: the reply is not JSON: {self.describe(response)}") from None
            return None

    def put(self, url: str, data: bytes, content_type: str, *, context: str,
            headers: dict[str, str] | None = None) -> None:
        """PUT ``data`` to a presigned URL with ``Content-Type`` and the SDK's other headers
        for that kind of file (``headers``: label files add ``x-ms-blob-type: BlockBlob``).

        200/201 succeed. Anything else is transient with ``outcome_unknown=False`` — the
        next attempt asks for a new URL and nothing refers to this one. A 403 here is the
        storage refusing an expired or mismatched signature, not our API key."""
        what = context
        context = self.context(what)
        try:
            response = self.request("PUT", url, context=what, data=data,
                                    headers={"Content-Type": content_type, **(headers or {})})
        except TransientError as exc:
            raise TransientError(str(exc), retry_after=exc.retry_after, outcome_unknown=False,
                                 throttled=exc.throttled) from exc
        if response.status_code in (200, 201):
            return
        if response.status_code in (400, 411, 413):
            raise PermanentError(f"{context}: the storage refused the file: {self.describe(response)}")
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise TransientError(f"{context}: the storage answered {self.describe(response)}; the file is sent again "
                             "with a new upload URL", outcome_unknown=False, retry_after=retry_after,
                             throttled=is_throttle(response.status_code, retry_after))


# -- operations (names and variables as the SDK sends them) -------------------------------------
GET_PROJECT = """
query getProjectSDK($orgId: UUID!, $projectId: UUID!) {
    project(orgId: $orgId, projectId: $projectId) { orgId projectId name status tdType }
}"""

GET_LABEL_STORAGE = """
query getLabelStorageSDK($orgId: UUID!, $projectId: UUID!) {
    getLabelStorage(orgId: $orgId, projectId: $projectId) { storageId path }
}"""

ITEMS_UPLOAD_PRESIGN = """
query itemsUploadPresignSDK($orgId: UUID!, $projectId: UUID!, $files: [String]!, $fileType: [String]!) {
    itemsUploadPresign(orgId: $orgId, projectId: $projectId, files: $files, fileType: $fileType) {
        items { presignedUrl filePath fileName }
    }
}"""

CREATE_DATAPOINT = """
mutation createDatapointSDK($orgId: UUID!, $workspaceId: UUID, $projectId: UUID, $items: [String!]!,
        $heatMaps: [HeatMapInput!], $transforms: [TransformInput!], $centerline: [CenterlineInput!],
        $name: String!, $storageId: UUID!, $labelsData: String, $labelsDataPath: String,
        $labelsMap: [LabelMapInput], $seriesInfo: [SeriesInfoInput!], $metaData: String,
        $isGroundTruth: Boolean!, $preAssign: String, $priority: Float, $attributes: JSONString) {
    createDatapoint(orgId: $orgId, workspaceId: $workspaceId, projectId: $projectId, items: $items,
            heatMaps: $heatMaps, transforms: $transforms, centerline: $centerline, name: $name,
            storageId: $storageId, labelsData: $labelsData, labelsDataPath: $labelsDataPath,
            labelsMap: $labelsMap, seriesInfo: $seriesInfo, metaData: $metaData,
            isGroundTruth: $isGroundTruth, preAssign: $preAssign, priority: $priority,
            attributes: $attributes) {
        dpId taskId taskIds
    }
}"""

UPDATE_TASK_ITEMS = """
mutation updateTaskItemsSDK($orgId: UUID!, $dpId: UUID, $projectId: UUID, $taskId: UUID, $storageId: UUID!,
        $items: [String!], $seriesInfo: [SeriesInfoInput!], $heatMaps: [HeatMapInput!],
        $transforms: [TransformInput!], $centerline: [CenterlineInput!], $metaData: String) {
    updateTaskItems(orgId: $orgId, dpId: $dpId, projectId: $projectId, taskId: $taskId, storageId: $storageId,
            items: $items, seriesInfo: $seriesInfo, heatMaps: $heatMaps, transforms: $transforms,
            centerline: $centerline, metaData: $metaData) {
        ok message
    }
}"""

TASKS_LIST = """
query tasksListSDK($orgId: UUID!, $projectId: UUID!, $stageName: String, $taskSearch: String,
        $manualLabelingFilters: TasksFilter, $first: Int, $after: String) {
    genericTasks(orgId: $orgId, projectId: $projectId, stageName: $stageName, taskSearch: $taskSearch,
            manualLabelingFilters: $manualLabelingFilters, first: $first, after: $after) {
        entries {
            taskId currentStageName createdAt updatedAt
            datapoint { dpId name items(presigned: false) metaData storageMethod { storageId } }
        }
        cursor
    }
}"""

PRESIGN_UPLOADS = """
query presignUploadsSDK($orgId: UUID!, $projectId: UUID!, $filesData: [String!]!, $fileTypeData: String!,
        $fileEncodingData: String, $filesSeg: [String!]!, $fileTypeSeg: String!, $fileEncodingSeg: String) {
    presignData: presignUploads(orgId: $orgId, projectId: $projectId, files: $filesData, fileType: $fileTypeData,
            fileEncoding: $fileEncodingData) {
        presignedUrl filePath fileName
    }
    presignSeg: presignUploads(orgId: $orgId, projectId: $projectId, files: $filesSeg, fileType: $fileTypeSeg,
            fileEncoding: $fileEncodingSeg) {
        presignedUrl filePath fileName
    }
}"""

PUT_LABELS = """
mutation updateTasksLabelsSDK($orgId: UUID!, $projectId: UUID!, $taskId: UUID!, $labelsData: String,
        $labelsDataPath: String, $labelsMap: [LabelMapInput], $finalize: Boolean, $timeSpentMs: Int,
        $extraData: JSONString) {
    putLabels(orgId: $orgId, projectId: $projectId, taskId: $taskId, labelsData: $labelsData,
            labelsDataPath: $labelsDataPath, labelsMap: $labelsMap, finalize: $finalize,
            timeSpentMs: $timeSpentMs, extraData: $extraData) {
        ok message
    }
}"""
