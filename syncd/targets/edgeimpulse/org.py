"""The Edge Impulse organization-data target: every item is one data item in one
organization dataset.

Wire protocol (docs/platforms/edgeimpulse.md), all under ``{api_url}/api/organizations/{id}``:
- create: ``POST /data/add``, multipart fields ``name``, ``dataset``, ``metadata`` (a JSON
  object as a string), optional ``bucketId``/``bucketName``, and the image as ``files[]``;
  the reply is ``{"success", "id"}``;
- metadata change: ``POST /data/{dataId}`` with ``{"metadata": {complete map}}``, then the
  item is read back (``GET /data/{dataId}``);
- lookup: ``GET /data?dataset=...&filter=name = '<name>'``;
- image change: ``DELETE /data/{dataId}``, then create again.

Idempotency: the item name is derived from the item key (``payload.sample_name``),
the markers ``syncd_version``/``syncd_image_sha256`` live in the item's metadata, and the
daemon looks the name up before any re-send (``create_only``). An image change deletes the
old item before creating the new one: deleting an item can delete the files stored under
its name in the bucket, which the new item's files would share. The item is therefore
briefly absent; a crash in that window is repaired by the next attempt (lookup finds
nothing, so the item is created).

Labels and masks are not sent: organization data items hold files and metadata, no
annotations (``EdgeImpulseOrgTarget.label_types`` is empty, so the daemon
reports every item's labels and mask as not representable). The mask is deliberately not
added as an extra file: Edge Impulse would not read it as a label, and it would have to
follow the item through every delete-and-create of an image change.

Errors come as non-2xx or inside HTTP 200 (``{"success": false, "error": ...}``); both are
classified by ``client.result``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from pydantic import Field

from syncd.errors import FatalTargetError, PermanentError, SyncdError, TransientError
from syncd.targets.base import Receipt, Target, Upload
from syncd.targets.edgeimpulse.client import (
    EdgeImpulseClient,
    EdgeImpulseSettingsBase,
    RemoteNotFound,
)
from syncd.targets.edgeimpulse.payload import (
    IMAGE_KEY,
    choose,
    desired_metadata,
    sample_name,
)

PAGE = 100
MAX_PAGES = 100


class EdgeImpulseOrgSettings(EdgeImpulseSettingsBase):
    platform: str = "edgeimpulse-org"
    api_key_env: str = Field("EI_ORG_API_KEY", description="environment variable holding the organization API key")
    organization_id: int = Field(gt=0, description="the organization's id (in the Studio URL /organization/<id>)")
    dataset: str = Field(min_length=1, description="name of an existing organization dataset")
    bucket_id: int | None = Field(None, description="id of the storage bucket for new items (optional)")
    bucket_name: str | None = Field(None, description="name of the storage bucket for new items (optional)")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class EdgeImpulseOrgTarget(Target):
    """Delivers items as data items of one organization dataset; see the module docstring."""

    platform = "edgeimpulse-org"
    Settings = EdgeImpulseOrgSettings
    create_only = True  # a re-send of data/add would create a second item: look it up first
    # One item per request: data/add creates one data item (its files[] are that item's files).
    max_batch = 1
    label_types = frozenset()  # data items hold files and metadata, no annotations
    single_classification = False

    def __init__(self, name: str, settings: EdgeImpulseOrgSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.settings: EdgeImpulseOrgSettings = settings
        self.client = EdgeImpulseClient(name, key_env=settings.api_key_env, timeout=settings.timeout, env=self.env)

    def close(self) -> None:
        """Close the client's sessions (the target can still be used afterwards)."""
        self.client.close()

    def org(self, path: str) -> str:
        return f"{self.settings.api_url}/api/organizations/{self.settings.organization_id}{path}"

    def _receipt(self, data_id: int, upload: Upload, *, version: str | None, image_sha256: str | None,
                 stale: list[int] | None = None) -> Receipt:
        s = self.settings
        extra = {"version": version, "image_sha256": image_sha256, "name": sample_name(upload.key),
                 "organization_id": s.organization_id, "dataset": s.dataset, "stale_ids": stale or []}
        return Receipt(remote_id=str(data_id), extra=extra)

    def _previous(self, upload: Upload) -> Receipt | None:
        """The previous receipt, if it is for this organization and dataset."""
        previous = upload.previous
        if previous is None or previous.extra.get("organization_id") != self.settings.organization_id or (
            previous.extra.get("dataset") != self.settings.dataset
        ):
            return None
        return previous

    # -- check ----------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """The key reads the organization dataset ``dataset``; FatalTargetError otherwise."""
        s = self.settings
        try:
            self.client.call("GET", self.org(f"/dataset/{quote(s.dataset, safe='')}"), item=True,
                             context=f"reading dataset {s.dataset!r}")
        except PermanentError as exc:
            raise FatalTargetError(
                f"{exc} — create the dataset {s.dataset!r} in organization {s.organization_id} (Studio: Data > "
                "Datasets) or fix 'dataset'") from exc
        return []

    # -- deliver --------------------------------------------------------------------------------
    def deliver(self, upload: Upload) -> Receipt:
        """Make the data item named after ``upload.key`` hold this image and metadata: the
        same image is updated in place (metadata read back); a new image deletes the old
        item first, then creates the new one (see the module docstring)."""
        desired = desired_metadata(upload)
        previous = self._previous(upload)
        stale = [int(i) for i in (previous.extra.get("stale_ids") or [])] if previous else []
        if previous is not None and previous.extra.get("image_sha256") == upload.image_sha256:
            try:
                receipt = self._update(int(previous.remote_id), upload, desired)
                self._delete_all(stale, upload)
                return receipt
            except RemoteNotFound:
                pass  # deleted in Studio meanwhile: create it again
            except _Kept:
                stale.append(int(previous.remote_id))  # the platform merged metadata: replace the item
        elif previous is not None:
            stale.append(int(previous.remote_id))
        self._delete_all(stale, upload)  # first: the new item's files may share the old item's storage path
        return self._create(upload, desired)

    def _create(self, upload: Upload, desired: dict[str, str]) -> Receipt:
        s = self.settings
        name = sample_name(upload.key)
        fields: list[tuple[str, Any]] = [
            ("name", (None, name)),
            ("dataset", (None, s.dataset)),
            ("metadata", (None, json.dumps(desired, sort_keys=True))),
        ]
        if s.bucket_id is not None:
            fields.append(("bucketId", (None, str(s.bucket_id))))
        if s.bucket_name is not None:
            fields.append(("bucketName", (None, s.bucket_name)))
        fields.append(("files[]", (upload.image_name, upload.image, upload.mime_type)))
        context = f"adding {upload.key!r} as data item {name!r} to dataset {s.dataset!r}"
        body = self.client.call("POST", self.org("/data/add"), context=context, files=fields)
        data_id = body.get("id")
        if not isinstance(data_id, int):
            raise TransientError(f"{self.name}: {context}: the reply has no item id; checking on the next attempt")
        return self._receipt(data_id, upload, version=upload.version, image_sha256=upload.image_sha256)

    def _update(self, data_id: int, upload: Upload, desired: dict[str, str]) -> Receipt:
        """Replace the item's metadata with ``desired``; verified by reading the item back."""
        context = f"updating data item {data_id} of {upload.key!r}"
        self.client.call("POST", self.org(f"/data/{data_id}"), context=context, item=True, json={"metadata": desired})
        body = self.client.call("GET", self.org(f"/data/{data_id}"), context=f"reading data item {data_id}", item=True)
        item = body.get("data") if isinstance(body.get("data"), dict) else {}
        if item.get("dataset") not in (None, self.settings.dataset):
            raise RemoteNotFound(f"{self.name}: data item {data_id} moved to dataset {item.get('dataset')!r}")
        metadata = item.get("metadata") or {}
        if metadata != desired:
            if all(metadata.get(k) == v for k, v in desired.items()):
                raise _Kept()  # merged instead of replaced: keys that must go are still there
            wrong = sorted(k for k in desired if metadata.get(k) != desired[k])
            raise PermanentError(f"{self.name}: {context}: Edge Impulse did not store the metadata as sent "
                                 f"(differing keys: {wrong[:10]})")
        return self._receipt(data_id, upload, version=upload.version, image_sha256=upload.image_sha256)

    def _delete_all(self, ids: list[int], upload: Upload) -> None:
        """Delete superseded items; a failure is an unknown outcome (the lookup sorts it out)."""
        for data_id in sorted(set(ids)):
            try:
                self.client.call("DELETE", self.org(f"/data/{data_id}"), item=True,
                          context=f"deleting the superseded data item {data_id} of {upload.key!r}")
            except RemoteNotFound:
                pass
            except (TransientError, FatalTargetError):
                raise
            except SyncdError as exc:
                raise TransientError(f"{exc} (retried on the next attempt)") from exc

    # -- lookup ---------------------------------------------------------------------------------
    def items_named(self, name: str) -> list[dict[str, Any]]:
        """Every data item of the dataset named exactly ``name`` (the list route's filter)."""
        found: list[dict[str, Any]] = []
        offset = 0
        for _ in range(MAX_PAGES):
            body = self.client.call("GET", self.org("/data"), context=f"looking up data item {name!r}",
                             params={"dataset": self.settings.dataset, "filter": f"name = {_sql_string(name)}",
                                     "limit": PAGE, "offset": offset})
            if body.get("filterParseError"):
                raise PermanentError(f"{self.name}: looking up {name!r}: filter refused: {body['filterParseError']}")
            page = body.get("data") or []
            found += [d for d in page if isinstance(d, dict) and d.get("name") == name and "id" in d
                      and d.get("dataset", self.settings.dataset) == self.settings.dataset]
            offset += len(page)
            if not page or len(page) < PAGE:
                break
        return found

    def lookup(self, upload: Upload) -> Receipt | None:
        """The data item named after ``upload.key``, or None; as EdgeImpulseTarget.lookup."""
        items = self.items_named(sample_name(upload.key))
        if not items:
            return None
        keep, stale = choose(items, upload)
        metadata = keep.get("metadata") or {}
        complete = not stale and metadata == desired_metadata(upload)
        return self._receipt(int(keep["id"]), upload, version=upload.version if complete else None,
                             image_sha256=metadata.get(IMAGE_KEY), stale=stale)


class _Kept(Exception):
    """Internal: the metadata update kept keys it should have removed."""
