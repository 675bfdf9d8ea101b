"""The Dataloop target: items uploaded to one dataset, keyed by their remote path.

Wire protocol (docs/platforms/dataloop.md): ``authorization: Bearer <API key>`` where the
API key is a JWT (``client``); items are uploaded as multipart to
``POST /datasets/{id}/items?mode=skip|overwrite`` and their ``metadata.user`` is changed
with ``PATCH /items/{id}`` carrying a diff (``null`` deletes a key).

Idempotency and the version marker:
- The remote path is ``remote_root + item key + image suffix`` (``/cam1/frame_0001.png``).
  Dataloop has one item per path in a dataset, so ``mode=skip`` never creates a second
  item: a re-send after a lost reply gets the existing item back.
- ``metadata.user.syncd`` = ``{"key", "version", "image_sha256", "annotations_sha256"}`` is
  written with every delivery (in the upload request itself and by the PATCH that follows).
  It tells, for an existing item, which image it holds, so a re-send can decide between
  "just fix the metadata" and "overwrite the binary", and what its annotations were made
  from (see ``annotations``). The key ``syncd`` is therefore reserved in the sidecar
  metadata.
- ``metadata.system.size`` is compared with the bytes sent. A new item with the wrong
  size is deleted (as the official SDK does) and the attempt is transient; an overwritten
  item is not deleted (annotators' work may hang on it) but is overwritten again next time.

Everything else in ``upload.metadata`` goes to ``metadata.user`` unchanged (any JSON);
keys whose value is ``null`` are dropped, because ``null`` means "delete" in a PATCH.

Labels and the mask become the item's annotations (``annotations.AnnotationSync``)
after the upload and before the metadata PATCH, whose marker then records them as written.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.base import Receipt, Target, TargetSettings, Upload
from syncd.targets.dataloop import payload
from syncd.targets.dataloop.annotations import EMPTY, PENDING, AnnotationSync, annotations_digest, annotations_state
from syncd.targets.dataloop.client import DataloopClient
from syncd.targets.dataloop.wire import MARKER, drop_nulls, metadata_diff, same_json, stored_size, user_metadata

EXPIRY_WARNING_DAYS = 30


class DataloopSettings(TargetSettings):
    platform: str = "dataloop"
    api_key_env: str = Field("DATALOOP_API_KEY",
                             description="environment variable holding the Dataloop API key (a JWT)")
    dataset_id: str | None = Field(None, description="id of the dataset; or give project and dataset names")
    project: str | None = Field(None, description="project name (with dataset), instead of dataset_id")
    dataset: str | None = Field(None, description="dataset name inside project, instead of dataset_id")
    remote_root: str = Field("/", description="folder in the dataset under which item keys are placed")
    base_url: str = Field("https://gate.dataloop.ai/api/v1", description="Dataloop API base URL")

    @field_validator("remote_root")
    @classmethod
    def _normalise_root(cls, value: str) -> str:
        parts = [p for p in value.replace("\\", "/").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"remote_root {value!r} must not contain '.' or '..' segments")
        return "/" + "".join(p + "/" for p in parts)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_dataset_reference(self) -> "DataloopSettings":
        by_names = self.project is not None or self.dataset is not None
        if self.dataset_id and by_names:
            raise ValueError("give either dataset_id or project + dataset, not both")
        if not self.dataset_id and not (self.project and self.dataset):
            raise ValueError("give dataset_id, or both project and dataset (names)")
        return self


class DataloopTarget(Target):
    """Delivers items to one Dataloop dataset; see the module docstring."""

    platform = "dataloop"
    Settings = DataloopSettings
    # lookup() is one exact query by path: after an unknown outcome it saves re-uploading
    # the binary. Re-sends are safe without it too (mode=skip + metadata PATCH).
    create_only = True
    # One item per request: the upload route takes one ``file`` part with its own ``path``
    # and ``metadata`` fields and answers with that one item (and its ``x-item-op``); the
    # official SDK (dtlpy 1.126.5, uploader.py) sends one request per file, five at a time.
    # The annotations and the metadata PATCH that follow are per item too. Nothing to share.
    max_batch = 1
    label_types = payload.LABEL_TYPES
    single_classification = payload.SINGLE_CLASSIFICATION

    def __init__(self, name: str, settings: DataloopSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.settings: DataloopSettings = settings
        self.client = DataloopClient(name, key_env=settings.api_key_env, base_url=settings.base_url,
                                     timeout=settings.timeout, dataset_id=settings.dataset_id,
                                     project=settings.project, dataset=settings.dataset, env=self.env)
        self.annotations = AnnotationSync(self.client)

    def close(self) -> None:
        """Close the client's sessions (the target can still be used afterwards)."""
        self.client.close()

    # -- check and dataset --------------------------------------------------------------------
    def check(self) -> list[str]:
        """The API key (a JWT not about to expire, accepted by ``GET /users/me``) and the
        dataset, resolved again; warns when the key expires within EXPIRY_WARNING_DAYS.
        Raises FatalTargetError for a bad key or a missing dataset."""
        self.client.key()
        me = self.client.request("GET", "/users/me", context="checking the API key (GET /users/me)", check=True)
        self.annotations.remember_user(self.client.json(me, "checking the API key (GET /users/me)"))
        self.annotations.forget()  # re-read the ontology's labels too
        self.client.forget_dataset()  # re-resolve: check() is the moment to notice a renamed dataset
        self.client.dataset_id()
        warnings = []
        days = (self.client.key_expiry - time.time()) / 86400
        if days < EXPIRY_WARNING_DAYS:
            warnings.append(f"target {self.name!r}: the Dataloop API key expires in {days:.0f} days; create a new one")
        return warnings

    def dataset_id(self) -> str:
        """The dataset id, resolved once (by id, or project name + dataset name) and cached."""
        return self.client.dataset_id()

    # -- paths and metadata -------------------------------------------------------------------
    def remote_path(self, upload: Upload) -> str:
        """``remote_root + key + suffix``; keys with '.'/'..' segments are refused."""
        parts = [p for p in upload.key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise PermanentError(f"item key {upload.key!r} cannot be a Dataloop path ('.'/'..' segments or empty)")
        return self.settings.remote_root + "/".join(parts) + upload.image_suffix

    def desired_user_metadata(self, upload: Upload, annotations: str) -> dict[str, Any]:
        """``metadata.user``: the sidecar metadata and the marker, whose ``annotations_sha256``
        is ``annotations`` (a digest or a state of dataloop_annotations)."""
        if MARKER in upload.metadata:
            raise PermanentError(
                f"item {upload.key!r}: the sidecar metadata key {MARKER!r} is reserved by syncd on Dataloop; rename it"
            )
        marker = {"key": upload.key, "version": upload.version, "image_sha256": upload.image_sha256,
                  "annotations_sha256": annotations}
        return {**drop_nulls(upload.metadata), MARKER: marker}

    @staticmethod
    def holds_image(item: dict[str, Any], upload: Upload) -> bool:
        """Whether the remote item holds this upload's image (marker hash and byte size)."""
        marker = user_metadata(item).get(MARKER)
        same_hash = isinstance(marker, dict) and marker.get("image_sha256") == upload.image_sha256
        return same_hash and stored_size(item) == len(upload.image)

    # -- deliver ------------------------------------------------------------------------------
    def deliver(self, upload: Upload) -> Receipt:
        """Make the item at ``remote_path(upload)`` hold this image, metadata and annotations.

        A first delivery uploads with ``mode=skip`` (a re-send gets the same item back), an
        image change overwrites the binary at the same path, a metadata-only change sends no
        binary. Then the annotations, then one PATCH of ``metadata.user`` whose marker says
        what the item now holds. A stored size that differs from the bytes sent is a
        TransientError (the next attempt overwrites); a reserved metadata key a
        PermanentError before any request."""
        dataset_id = self.dataset_id()
        path = self.remote_path(upload)
        digest = annotations_digest(upload)
        self.desired_user_metadata(upload, digest)  # a reserved key fails the item before any request
        previous = upload.previous
        item = None
        if previous is not None and previous.extra.get("path") == path and (
            previous.extra.get("image_sha256") == upload.image_sha256
        ):
            item = self._get_item(previous.remote_id)  # metadata-only change: no binary re-sent
            if item is not None and item.get("filename") != path:
                item = None  # moved away in the console: treat as gone
        if item is None or not self.holds_image(item, upload):
            # A first delivery uses skip: a re-send after a lost reply gets the same item back.
            # An image change (previous set) overwrites the binary at the same path.
            mode = "overwrite" if previous is not None else "skip"
            # The marker only claims the annotations once they are written (see _upload_state).
            desired = self.desired_user_metadata(upload, self._upload_state(upload, digest, mode))
            item = self._upload(dataset_id, path, upload, desired, mode)
            if mode == "skip" and not self.holds_image(item, upload):
                marker = user_metadata(item).get(MARKER)
                if isinstance(marker, dict) and marker.get("image_sha256") == upload.image_sha256:
                    self._delete_corrupted(item, upload)  # our new item, stored at the wrong size
                # An existing item with another image (or not made by syncd) is at our path.
                desired = self.desired_user_metadata(upload, self._upload_state(upload, digest, "overwrite"))
                item = self._upload(dataset_id, path, upload, desired, "overwrite")
            if stored_size(item) != len(upload.image):
                raise TransientError(
                    f"{self.name}: item {upload.key!r}: Dataloop stored {stored_size(item)} bytes "
                    f"of {len(upload.image)} sent "
                    "(corrupted upload); it is overwritten on the next attempt",
                    outcome_unknown=False,
                )
        # Annotations first, then the marker that says they are in place (one PATCH in all).
        synced = self.annotations.sync(item, upload, digest)
        item = self._patch_user_metadata(item, self.desired_user_metadata(upload, synced.state), upload)
        if previous is not None and previous.remote_id != item["id"] and previous.extra.get("path") not in (None, path):
            # The image changed format (suffix), so the item moved to a new path: remove the
            # superseded one so the key keeps exactly one remote item.
            self.client.request("DELETE", f"/items/{quote(previous.remote_id, safe='')}",
                                context="deleting the superseded item")
        return self._receipt(item, upload, path, version=upload.version, not_sent=synced.not_sent)

    @staticmethod
    def _upload_state(upload: Upload, digest: str, mode: str) -> str:
        """The marker's annotation state sent with an upload: ``digest`` only where no
        annotation of ours can be on the item (a new item, or an overwrite of one that held
        none) and there are none to write; PENDING otherwise, until they are written."""
        previous = upload.previous.extra.get("annotations_sha256") if upload.previous is not None else None
        if digest == EMPTY and (mode == "skip" or previous == EMPTY):
            return digest
        return PENDING

    def _receipt(self, item: dict[str, Any], upload: Upload, path: str, *, version: str | None,
                 not_sent: tuple[str, ...] = ()) -> Receipt:
        marker = user_metadata(item).get(MARKER)
        complete = isinstance(marker, dict) and stored_size(item) == len(upload.image)
        sha = marker.get("image_sha256") if complete else None
        extra = {"version": version, "image_sha256": sha, "path": path, "dataset_id": self.client.known_dataset_id,
                 "annotations_sha256": annotations_state(item)}
        if not_sent:
            extra["not_sent"] = list(not_sent)
        return Receipt(remote_id=str(item["id"]), extra=extra)

    def _upload(self, dataset_id: str, path: str, upload: Upload, desired: dict, mode: str) -> dict[str, Any]:
        context = f"uploading {upload.key!r} to {path} (mode={mode})"
        fields = [
            ("type", (None, "file")),
            ("path", (None, path)),
            ("metadata", (None, json.dumps({"user": desired}))),
            ("file", (posixpath.basename(path), upload.image, upload.mime_type)),
        ]
        response = self.client.request("POST", f"/datasets/{quote(dataset_id, safe='')}/items", params={"mode": mode},
                                       files=fields, context=context)
        if response.status_code == 404:
            raise FatalTargetError(f"target {self.name!r}: Dataloop dataset {dataset_id!r} no longer exists")
        self.client.raise_for_status(response, context)
        item = self.client.json(response, context)
        if not isinstance(item, dict) or "id" not in item:
            raise TransientError(f"{self.name}: {context}: the reply has no item id")
        return item

    def _delete_corrupted(self, item: dict[str, Any], upload: Upload) -> None:
        """Delete a new item stored at the wrong size and raise TransientError (what the
        official SDK does; the next attempt uploads it again)."""
        self.client.request("DELETE", f"/items/{quote(str(item['id']), safe='')}", context="deleting a corrupted item")
        raise TransientError(
            f"{self.name}: item {upload.key!r}: Dataloop stored {stored_size(item)} bytes of {len(upload.image)} sent; "
            "the corrupted item was deleted and is uploaded again on the next attempt",
            outcome_unknown=False,
        )

    def _get_item(self, item_id: str) -> dict[str, Any] | None:
        response = self.client.request("GET", f"/items/{quote(item_id, safe='')}", context=f"reading item {item_id}")
        if response.status_code == 404:
            return None
        self.client.raise_for_status(response, f"reading item {item_id}")
        return self.client.json(response, f"reading item {item_id}")

    def _patch_user_metadata(self, item: dict[str, Any], desired: dict[str, Any], upload: Upload) -> dict[str, Any]:
        """PATCH ``metadata.user`` to equal ``desired`` (a diff, null = delete) and verify it."""
        diff = metadata_diff(user_metadata(item), desired)
        if not diff:
            return item
        context = f"updating the metadata of {upload.key!r} (item {item['id']})"
        response = self.client.request("PATCH", f"/items/{quote(str(item['id']), safe='')}",
                                       json={"metadata": {"user": diff}}, context=context)
        if response.status_code == 404:  # deleted meanwhile (console, another client)
            raise TransientError(f"{self.name}: {context}: the item is gone; it is uploaded again on the next attempt",
                                 outcome_unknown=False)
        self.client.raise_for_status(response, context)
        patched = self.client.json(response, context)
        if not isinstance(patched, dict) or not same_json(user_metadata(patched), desired):
            raise PermanentError(
                f"{self.name}: {context}: Dataloop did not store the metadata as sent "
                f"(keys now: {sorted(user_metadata(patched if isinstance(patched, dict) else {}))})"
            )
        return patched

    # -- lookup -------------------------------------------------------------------------------
    def lookup(self, upload: Upload) -> Receipt | None:
        """The item at this upload's path, or None. ``extra["version"]`` is the upload's
        version only when the item already equals it fully (image, user metadata, and the
        marker's annotation digest, which is only set once the annotations are written)."""
        dataset_id = self.dataset_id()
        path = self.remote_path(upload)
        body = {"filter": {"$and": [{"filename": path}, {"type": "file"}]}, "sort": {"id": "ascending"},
                "page": 0, "pageSize": 10, "resource": "items"}
        context = f"looking up {path}"
        response = self.client.request("POST", f"/datasets/{quote(dataset_id, safe='')}/query", json=body,
                                       headers={"user_query": "true"}, context=context, check=True)
        items = [i for i in self.client.json(response, context).get("items", []) if i.get("filename") == path]
        if not items:
            return None
        item = items[0]
        desired = self.desired_user_metadata(upload, annotations_digest(upload))
        complete = self.holds_image(item, upload) and same_json(user_metadata(item), desired)
        return self._receipt(item, upload, path, version=upload.version if complete else None)
