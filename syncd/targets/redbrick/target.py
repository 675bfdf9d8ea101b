"""The RedBrick AI target: one task per item in one project, named by the item key.

Wire protocol: see ``client`` (GraphQL, the official SDK's operations). A delivery:

- First delivery (``upload.previous`` is None): the image is stored — direct upload
  (``storage = "direct"``): ``itemsUploadPresign`` + PUT of the bytes, the task's item is the
  returned ``filePath``; ``storage = "public"``: the item is ``public_url_prefix + key +
  suffix`` — then ``createDatapoint`` with name = item key. Task names are unique in a
  project, so a re-send can never make a second task: when ``createDatapoint`` is refused
  (a duplicate name, or any other refusal) the task is looked up by name, and if it
  exists it is adopted and updated instead. The labels and the mask go in that same
  ``createDatapoint`` (``labelsData``, ``labelsMap``; see ``annotations``).
- Update (``upload.previous`` set): a new image is stored first (when its hash differs
  from the receipt's), the labels are replaced with ``putLabels`` when they changed
  (``sync_labels``), and finally one ``updateTaskItems`` sets the new items (if any) and
  the metadata, which RedBrick replaces as a whole. A task deleted in RedBrick meanwhile is
  created again.
- Labels RedBrick refuses (e.g. a category its taxonomy lacks) and a mask that cannot be
  sent (no ``nibabel``) do not stop the image and metadata: the task is written without
  them and the receipt's ``not_sent`` (and a warning) says what is missing and why.

Metadata and the version marker: RedBrick keeps ``metaData`` as a JSON object of strings;
string values go as they are, any other JSON value is sent JSON-encoded. The key
``syncd_version`` is added with the item's version; it is written in the same mutation
as the items and metadata (and last in an update), so a task carrying version V holds V.
``lookup`` reads it back: after a lost reply the daemon adopts such a task without
sending anything. The key ``syncd_version`` is therefore reserved in the sidecar metadata.
Labels are written before (or with) the marker, so a task carrying version V holds V's labels.

Receipt: ``remote_id`` = taskId; ``extra`` = taskId, dpId, name, version, image_sha256,
items (the stored file paths or URLs), storage ("direct" or "public"), labels_sha256 (what
the labels were made from; None = send them with the next update), not_sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.base import Receipt, Target, TargetSettings, Upload
from syncd.targets.redbrick import payload
from syncd.targets.redbrick.annotations import (
    EMPTY,
    FIX_NIBABEL,
    Labels,
    LabelWriter,
    expected_digest,
    nibabel_available,
)
from syncd.targets.redbrick.client import (
    CREATE_DATAPOINT,
    DEFAULT_URL,
    GET_LABEL_STORAGE,
    GET_PROJECT,
    IMAGE_TYPES,
    ITEMS_UPLOAD_PRESIGN,
    PUBLIC_STORAGE,
    REDBRICK_STORAGE,
    TASKS_LIST,
    UPDATE_TASK_ITEMS,
    GraphQLRefused,
    RedBrickClient,
)

log = logging.getLogger("syncd.targets.redbrick")

VERSION_KEY = "syncd_version"  # reserved metaData key (see the module docstring)
STORAGE_IDS = {"direct": REDBRICK_STORAGE, "public": PUBLIC_STORAGE}
PAGE_SIZE = 50
MAX_PAGES = 1000  # a prefix search over 50,000 similar names is a misconfiguration, not a loop
MAX_HOPS = 2  # create -> adopt -> update (or update -> gone -> create): never a loop


class RedBrickSettings(TargetSettings):
    platform: str = "redbrick"
    api_key_env: str = Field("REDBRICK_API_KEY", description="environment variable holding the RedBrick API key")
    org_id: str = Field(description="organization id (UUID), as in https://app.redbrickai.com/<org_id>/...")
    project_id: str = Field(description="project id (UUID), as in .../projects/<project_id>")
    url: str = Field(DEFAULT_URL, description="RedBrick API URL (private deployments: https://<host>)")
    storage: Literal["direct", "public"] = Field(
        "direct", description='"direct": upload the image files to RedBrick; "public": tasks point at public URLs')
    public_url_prefix: str | None = Field(
        None, description='with storage = "public": URL prefix under which the item key + suffix is served')
    ground_truth: bool = Field(False, description="create tasks directly in the Ground Truth stage (isGroundTruth)")

    @field_validator("org_id", "project_id")
    @classmethod
    def _uuid(cls, value: str, info) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except (ValueError, AttributeError):
            raise ValueError(f"{info.field_name} must be a UUID like 1b4e28ba-2fa1-11d2-883f-0016d3cca427, "
                             f"got {value!r}") from None

    @field_validator("url", "public_url_prefix")
    @classmethod
    def _http_url(cls, value: str | None, info) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{info.field_name} must start with http:// or https://, got {value!r}")
        return value

    @model_validator(mode="after")
    def _public_needs_prefix(self) -> "RedBrickSettings":
        if self.storage == "public" and not self.public_url_prefix:
            raise ValueError('storage = "public" needs public_url_prefix (where the images are served)')
        if self.storage == "direct" and self.public_url_prefix:
            raise ValueError('public_url_prefix is only used with storage = "public"')
        return self


class RedBrickTarget(Target):
    """Delivers items as tasks of one RedBrick project; see the module docstring."""

    platform = "redbrick"
    Settings = RedBrickSettings
    create_only = True  # createDatapoint is not idempotent: look up by name before re-sending
    # One item per call. createDatapoint makes one task per mutation (the official SDK,
    # redbrick-sdk 2.35.4 upload/interact.py, runs one per task, ten at a time), and it is
    # where each item's outcome and the name-taken recovery live. The only call that takes
    # several files, itemsUploadPresign, the SDK also makes per task; sharing it between
    # items would save one small request of three per item (direct storage; none with public
    # URLs) and tie the items to one presign. Aliasing several createDatapoint mutations in
    # one GraphQL document is not something the SDK does; the server's answer to it is
    # unknown. See docs/platforms/redbrick.md, "Known limits".
    max_batch = 1
    label_types = payload.LABEL_TYPES
    single_classification = payload.SINGLE_CLASSIFICATION

    def __init__(self, name: str, settings: RedBrickSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.settings: RedBrickSettings = settings
        self.client = RedBrickClient(name, key_env=settings.api_key_env, url=settings.url, timeout=settings.timeout,
                                     env=self.env)
        self._labels = LabelWriter(self.client, self._ids())

    def _ids(self) -> dict[str, str]:
        return {"orgId": self.settings.org_id, "projectId": self.settings.project_id}

    def close(self) -> None:
        """Close the client's sessions (the target can still be used afterwards)."""
        self.client.close()

    # -- check --------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """The key (43 characters) reads project ``project_id`` of ``org_id`` and its label
        storage. A project still being created is transient, an archived or failed one
        fatal. Warns when masks cannot be sent (nibabel missing)."""
        api = self.client
        s = self.settings
        project = api.execute(GET_PROJECT, self._ids(), context="reading the project", idempotent=True).get("project")
        if not project:
            raise FatalTargetError(
                f"target {self.name!r}: no RedBrick project {s.project_id} in organization {s.org_id} "
                "(or the API key cannot see it); check org_id and project_id")
        status = project.get("status")
        if status == "CREATING":
            raise TransientError(f"target {self.name!r}: RedBrick project {s.project_id} is still being created",
                                 outcome_unknown=False)
        if status in ("REMOVING", "CREATION_FAILURE"):
            what = "is archived" if status == "REMOVING" else "failed to be created"
            raise FatalTargetError(
                f"target {self.name!r}: RedBrick project {project.get('name')!r} ({s.project_id}) {what}")
        api.execute(GET_LABEL_STORAGE, self._ids(), context="reading the project's label storage", idempotent=True)
        if not nibabel_available():
            return [f"masks are not sent to RedBrick: the nibabel package is missing ({FIX_NIBABEL}); "
                    "images and labels are"]
        return []

    # -- item naming, metadata, storage ---------------------------------------------------------
    @staticmethod
    def task_name(upload: Upload) -> str:
        """The task name: the item key (deterministic, unique per project)."""
        return upload.key

    def metadata_string(self, upload: Upload) -> str:
        """``metaData`` as RedBrick takes it: a JSON string of an object of strings."""
        if VERSION_KEY in upload.metadata:
            raise PermanentError(f"item {upload.key!r}: the sidecar metadata key {VERSION_KEY!r} is reserved by "
                                 "syncd on RedBrick; rename it")
        values = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
                  for k, v in upload.metadata.items()}
        values[VERSION_KEY] = upload.version
        return json.dumps(values, separators=(",", ":"))

    def public_url(self, upload: Upload) -> str:
        prefix = self.settings.public_url_prefix or ""
        return prefix.rstrip("/") + "/" + quote(upload.key, safe="/") + upload.image_suffix

    def store_image(self, upload: Upload) -> list[str]:
        """Make the image available to RedBrick; returns the task's ``items``."""
        if self.settings.storage == "public":
            return [self.public_url(upload)]
        mime = IMAGE_TYPES.get(upload.image_suffix)
        if mime is None:
            raise PermanentError(
                f"item {upload.key!r}: RedBrick direct upload takes {', '.join(IMAGE_TYPES)} images, not "
                f"{upload.image_suffix or 'files without a suffix'}; convert it or use storage = \"public\"")
        api = self.client
        data = api.execute(ITEMS_UPLOAD_PRESIGN, {**self._ids(), "files": [upload.image_name], "fileType": [mime]},
                           context=f"asking where to upload {upload.key!r}", idempotent=True)
        granted = ((data.get("itemsUploadPresign") or {}).get("items") or [None])[0]
        if not granted or not granted.get("presignedUrl") or not granted.get("filePath"):
            raise TransientError(f"{self.name}: RedBrick gave no upload URL for {upload.key!r}", outcome_unknown=False)
        api.put(granted["presignedUrl"], upload.image, mime, context=f"uploading the image of {upload.key!r}")
        return [granted["filePath"]]  # opaque: stored, never built

    def sync_labels(self, upload: Upload, previous: Receipt, prepared: Labels | None) -> tuple[Labels, bool]:
        """The labels an update records, and whether they must be sent (``putLabels``).

        Nothing is sent or uploaded when the labels are unchanged since ``previous`` (same
        ``labels_sha256``), nor for an item without labels and mask when the task holds no
        labels syncd wrote (receipts from before labels were sent have no such record): labels
        made in RedBrick are left alone. Otherwise ``prepared`` (labels already built by a
        create that found the name taken) or newly built ones are sent."""
        digest, written = previous.extra.get("labels_sha256"), bool(previous.extra.get("labels_written"))
        expected = expected_digest(upload)
        if (digest is not None and digest == expected) or (expected == EMPTY and not written):
            return Labels(digest=expected, written=written, not_sent=tuple(previous.extra.get("not_sent") or ())), False
        return prepared or self._labels.prepare(upload), True

    # -- deliver ------------------------------------------------------------------------------
    def deliver(self, upload: Upload) -> Receipt:
        """Create the task named ``upload.key`` (first delivery; a name already taken is
        adopted and updated), or update the task of ``upload.previous`` (new image, labels
        when they changed, then items and metadata with the version marker last). A task
        deleted in RedBrick meanwhile is created again. Labels RedBrick refuses and masks
        that cannot be sent go to the receipt's ``not_sent``, never stop the image."""
        metadata = self.metadata_string(upload)
        previous = upload.previous
        if previous is not None and previous.extra.get("taskId"):
            return self._update(upload, previous, metadata)
        return self._create(upload, metadata)

    def _create(self, upload: Upload, metadata: str, *, items: list[str] | None = None,
                labels: Labels | None = None, hops: int = 0) -> Receipt:
        name = self.task_name(upload)
        items = items or self.store_image(upload)
        labels = labels or self._labels.prepare(upload)
        variables = {
            **self._ids(), "workspaceId": None, "name": name, "storageId": STORAGE_IDS[self.settings.storage],
            "items": items, **labels.variables(), "seriesInfo": None,
            "heatMaps": None, "transforms": None, "centerline": None, "metaData": metadata,
            "isGroundTruth": self.settings.ground_truth, "preAssign": "null", "priority": None, "attributes": None,
        }
        try:
            data = self.client.execute(CREATE_DATAPOINT, variables, context=f"creating task {name!r}")
        except GraphQLRefused as exc:
            found = self._find(name) if hops < MAX_HOPS else None
            if found is None:
                if labels.empty:
                    raise
                # Perhaps the labels were refused (a category the taxonomy lacks...): the image
                # and metadata go without them, and the receipt says so. If the refusal was
                # about something else, the second attempt is refused too and that is raised.
                refused = labels.refused("; ".join(exc.messages), written=False)
                return self._create(upload, metadata, items=items, labels=refused, hops=hops + 1)
            # The name is taken (a lost reply, a task made by hand): adopt that task.
            log.info("task %r already exists in RedBrick as %s; updating it", name, found["taskId"])
            return self._update(upload, self._receipt(found, upload), metadata, items=items, labels=labels,
                                hops=hops + 1)
        created = data.get("createDatapoint") or {}
        if not created.get("taskId"):
            raise TransientError(f"{self.name}: creating task {name!r}: the reply has no taskId")
        return self._ack(upload, created["taskId"], created.get("dpId"), items, labels)

    def _update(self, upload: Upload, previous: Receipt, metadata: str, *, items: list[str] | None = None,
                labels: Labels | None = None, hops: int = 0) -> Receipt:
        name = self.task_name(upload)
        task_id = previous.extra.get("taskId") or previous.remote_id
        same_image = (previous.extra.get("image_sha256") == upload.image_sha256
                      and previous.extra.get("storage") == self.settings.storage)
        new_items = None if same_image else (items or self.store_image(upload))
        record, send = self.sync_labels(upload, previous, labels)
        if send:
            try:
                self._labels.put(task_id, record, task_name=name)
            except GraphQLRefused as exc:
                found = self._find(name) if hops < MAX_HOPS else None
                if found is None or found["taskId"] != task_id:
                    if hops >= MAX_HOPS:
                        raise
                    return self._replace_gone(upload, task_id, found, metadata, new_items, record, hops)
                # The task is there: the labels themselves were refused; it keeps what it had.
                record = record.refused("; ".join(exc.messages), written=bool(previous.extra.get("labels_written")))
        variables = {
            **self._ids(), "dpId": previous.extra.get("dpId"), "taskId": task_id,
            "storageId": STORAGE_IDS[self.settings.storage], "items": new_items, "seriesInfo": None,
            "heatMaps": None, "transforms": None, "centerline": None, "metaData": metadata,
        }
        try:
            data = self.client.execute(UPDATE_TASK_ITEMS, variables, context=f"updating task {name!r} ({task_id})")
        except GraphQLRefused:
            # Refused: most likely the task was deleted in RedBrick (maybe replaced by
            # another task of that name). Anything else is raised as it is.
            found = self._find(name) if hops < MAX_HOPS else None
            if hops >= MAX_HOPS or (found is not None and found["taskId"] == task_id):
                raise
            return self._replace_gone(upload, task_id, found, metadata, new_items, record if send else None, hops)
        result = data.get("updateTaskItems") or {}
        if not result.get("ok"):
            raise PermanentError(f"{self.name}: updating task {name!r} ({task_id}): RedBrick answered "
                                 f"{result.get('message') or 'not ok'}")
        return self._ack(upload, task_id, previous.extra.get("dpId"), new_items or previous.extra.get("items"), record)

    def _replace_gone(self, upload: Upload, task_id: str, found: dict[str, Any] | None, metadata: str,
                      items: list[str] | None, labels: Labels | None, hops: int) -> Receipt:
        """Task ``task_id`` is gone: create it again, or update the other task of that name.
        ``labels`` are full labels already built, or None (an unchanged record: built anew)."""
        if found is None:
            log.info("task %r (%s) is gone from RedBrick; creating it again", self.task_name(upload), task_id)
            return self._create(upload, metadata, items=items, labels=labels, hops=hops + 1)
        return self._update(upload, self._receipt(found, upload), metadata, items=items, labels=labels, hops=hops + 1)

    def _ack(self, upload: Upload, task_id: str, dp_id: str | None, items: list[str] | None,
             labels: Labels) -> Receipt:
        if labels.not_sent:
            log.warning("%s: task %r was written without: %s", self.name, self.task_name(upload),
                        "; ".join(labels.not_sent))
        extra = {"taskId": task_id, "dpId": dp_id, "name": self.task_name(upload), "version": upload.version,
                 "image_sha256": upload.image_sha256, "items": items, "storage": self.settings.storage,
                 **labels.record()}
        return Receipt(remote_id=task_id, extra=extra)

    # -- lookup -------------------------------------------------------------------------------
    def lookup(self, upload: Upload) -> Receipt | None:
        """The task named by this upload's key, or None. ``extra["version"]`` is the task's
        ``syncd_version`` (None for a task syncd did not write)."""
        found = self._find(self.task_name(upload))
        return None if found is None else self._receipt(found, upload)

    def _find(self, name: str) -> dict[str, Any] | None:
        """The task entry whose name is exactly ``name``. ``taskSearch`` is a prefix search,
        so every page is read until the name is found or the cursor ends."""
        after, seen = None, set()
        for _ in range(MAX_PAGES):
            variables = {**self._ids(), "stageName": None, "taskSearch": name, "manualLabelingFilters": {},
                         "first": PAGE_SIZE, "after": after}
            data = self.client.execute(TASKS_LIST, variables, context=f"looking up task {name!r}", idempotent=True)
            page = data.get("genericTasks") or {}
            for entry in page.get("entries") or []:
                if ((entry or {}).get("datapoint") or {}).get("name") == name and entry.get("taskId"):
                    return entry
            after = page.get("cursor")
            if not after or after in seen:
                return None
            seen.add(after)
        raise PermanentError(f"{self.name}: looking up task {name!r}: more than {MAX_PAGES * PAGE_SIZE} task names "
                             "start with it; give items more distinct keys")

    def _receipt(self, entry: dict[str, Any], upload: Upload) -> Receipt:
        """A receipt for a task found by name. Its image hash is known when the task holds
        this very version (the version covers the image), or when it still holds the file
        path the previous receipt recorded (direct upload paths are unique per upload)."""
        datapoint = entry.get("datapoint") or {}
        try:
            meta = json.loads(datapoint.get("metaData") or "{}")
        except ValueError:
            meta = {}
        version = meta.get(VERSION_KEY) if isinstance(meta, dict) else None
        items = datapoint.get("items")
        storage_id = (datapoint.get("storageMethod") or {}).get("storageId")
        storage = next((k for k, v in STORAGE_IDS.items() if v == storage_id), None)
        sha = None
        if version == upload.version:
            sha = upload.image_sha256
        elif (storage == "direct" and upload.previous is not None and items
              and upload.previous.extra.get("items") == items and upload.previous.extra.get("storage") == "direct"):
            sha = upload.previous.extra.get("image_sha256")
        # A task carrying this very version holds its labels too (written before the marker).
        # Otherwise they are unknown, and whether syncd wrote labels to it is what the previous
        # receipt of this task says (a task made by hand: no).
        same_task = upload.previous is not None and upload.previous.extra.get("taskId") == entry["taskId"]
        written = bool(same_task and upload.previous.extra.get("labels_written"))
        if upload.previous is None and version is not None:
            # No acknowledged delivery yet, but the task carries syncd's marker: syncd created it
            # in an attempt whose reply was lost (or before a crash), possibly with labels of an
            # older version. Treat them as syncd's, so a version without labels clears them.
            written = True
        if version == upload.version:
            record = Labels(digest=expected_digest(upload), written=expected_digest(upload) != EMPTY)
        else:
            record = Labels(digest=None, written=written)
        extra = {"taskId": entry["taskId"], "dpId": datapoint.get("dpId"), "name": datapoint.get("name"),
                 "version": version, "image_sha256": sha, "items": items, "storage": storage, **record.record()}
        return Receipt(remote_id=entry["taskId"], extra=extra)
