"""The Scale Nucleus target: every item becomes one dataset item, keyed by reference_id.

Wire protocol (docs/platforms/nucleus.md, from the official ``scale-nucleus`` SDK): HTTP
Basic auth with the API key as user name and an empty password (``client``); the image is sent
exactly as the SDK sends local files, a multipart ``POST dataset/{id}/append?async=1``
with an ``items`` part (a JSON list of one item payload carrying ``"update"``) and an
``image`` part whose file name is the item's ``image_url`` (percent-encoded like aiohttp
does; ``payload``). The reply is an async job; ``jobs`` waits for it and reads its errors.

Idempotency and updates:
- ``reference_id`` is the item key (``cam1/frame_0001``). Nucleus keeps one item per
  reference_id in a dataset, so re-sending never creates a second item.
- Every append is sent with ``update=true``: the item's metadata is replaced wholesale and
  its image overwritten. Sending ``update=false`` on first deliveries would be wrong
  here: after a lost reply (or a lost state database) the item can already exist, holding
  an older version, and ``update=false`` would silently ignore the newer one while syncd
  recorded it as delivered. The price is that a pre-existing item with the same
  reference_id (made outside syncd) is overwritten: the local folder is the truth.
- Nothing of syncd's is stored in the user's metadata, so ``lookup`` cannot tell which
  version a remote item holds and leaves ``extra["version"]`` out. The target is an
  upsert target (``create_only = False``): the daemon simply re-sends after an unknown
  outcome.

``upload.metadata`` is sent unchanged (any JSON). Labels and masks become ground-truth
annotations once the append's job has ended (``_deliver_annotations``, see
``annotations`` for how they are replaced, never duplicated); the receipt keeps
``annotations_sha256`` so that unchanged labels are not sent again.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator

from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.targets.base import Receipt, Target, TargetSettings, Upload
from syncd.targets.nucleus import payload
from syncd.targets.nucleus.annotations import AnnotationWriter, Plan, plan
from syncd.targets.nucleus.client import NucleusClient
from syncd.targets.nucleus.jobs import ItemJobs, JobWaiter, classify
from syncd.targets.nucleus.payload import image_url, item_payload, part_filename


class NucleusSettings(TargetSettings):
    platform: str = "nucleus"
    dataset_id: str = Field(min_length=1, description='id of the Nucleus dataset, e.g. "ds_bwkezj6g5c4g05gqp1eg"')
    api_key_env: str = Field("NUCLEUS_API_KEY", description="environment variable holding the Scale API key")
    base_url: str = Field("https://api.scale.com/v1/nucleus", description="Nucleus API base URL")
    # The official SDK allows 120 s per request; an image upload over a slow uplink needs it.
    timeout: float = Field(120.0, gt=0, description="seconds for each HTTP request")
    job_poll_interval: float = Field(2.0, gt=0, description="longest pause between polls of an upload job")
    job_timeout: float = Field(600.0, gt=0, description="seconds to wait for an upload job before retrying later")
    taxonomy_name: str = Field("syncd", min_length=1,
                               description="category taxonomy that classification labels go to (created as needed)")

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("dataset_id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        value = value.strip()
        if not value or "/" in value:
            raise ValueError(f"{value!r} is not a Nucleus dataset id (they look like ds_bwkezj6g5c4g05gqp1eg)")
        return value


def created(counts: Any) -> bool:
    """Did the append create the item (counts of a synchronous reply or of a finished job's
    ``message``)? False when unknown: the shape of a job's message is not documented."""
    return isinstance(counts, dict) and counts.get("new_items") == 1 and not counts.get("updated_items")


class NucleusTarget(Target):
    """Delivers items to one Nucleus dataset; see the module docstring."""

    platform = "nucleus"
    Settings = NucleusSettings
    create_only = False  # appends upsert by reference_id
    label_types = payload.LABEL_TYPES
    single_classification = payload.SINGLE_CLASSIFICATION  # one category per item

    def __init__(self, name: str, settings: NucleusSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.settings: NucleusSettings = settings
        self.client = NucleusClient(name, key_env=settings.api_key_env, base_url=settings.base_url,
                                    dataset_id=settings.dataset_id, timeout=settings.timeout, env=self.env)
        self._lock = threading.Lock()
        # item keys whose annotations a failed attempt of this process may have half written.
        self._unsure: set[str] = set()
        self.jobs = ItemJobs(JobWaiter(self.client.get_json, interval=settings.job_poll_interval,
                                       timeout=settings.job_timeout))
        self.annotations = AnnotationWriter(self.client, self.jobs, settings.taxonomy_name)

    def close(self) -> None:
        """Close the client's sessions (the target can still be used afterwards)."""
        self.client.close()

    # -- check --------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Credentials and dataset: ``GET dataset/{id}/is_scene`` (cheap, answers 404 for an
        unknown dataset). A scene dataset cannot take image items: fatal."""
        context = f"checking dataset {self.settings.dataset_id}"
        response = self.client.request("GET", f"{self.client.dataset_route}/is_scene", context=context)
        if response.status_code in (400, 404):
            raise self.client.missing_dataset()
        self.client.raise_for_status(response, context)
        reply = self.client.json(response, context)
        if isinstance(reply, dict) and reply.get("is_scene") is True:
            raise FatalTargetError(
                f"target {self.name!r}: Nucleus dataset {self.settings.dataset_id!r} is a scene dataset (video/lidar); "
                "syncd appends single images: use a dataset created with is_scene=False"
            )
        return []

    # -- deliver ------------------------------------------------------------------------------
    def deliver(self, upload: Upload) -> Receipt:
        """Append the item, wait for its job, check the job's errors; then its labels and
        mask (``_deliver_annotations``, only when they changed).

        A job this target stopped waiting for (timeout, failing polls) may still run later
        and would then write an older version over a newer one. So before appending an
        item again, its previous unfinished job is waited for first (in this process).
        """
        what = f"{self.name}: item {upload.key!r}"
        with self._lock:
            unsure = upload.key in self._unsure
        todo = plan(upload, self.settings.taxonomy_name, unsure=unsure)  # before sending: a bad mask fails here
        self.jobs.finish_previous(upload.key, what)
        job_id, counts = self._append(upload, what)
        if job_id is not None:
            result = self.jobs.wait(upload.key, job_id, what)
            classify(result, what=what)
            counts = result.reply.get("message")
        extra = {"version": upload.version, "image_sha256": upload.image_sha256,
                 "dataset_id": self.settings.dataset_id, "job_id": job_id}
        extra.update(self._deliver_annotations(upload, todo, what, fresh=created(counts)))
        return Receipt(remote_id=upload.key, extra=extra)

    def _append(self, upload: Upload, what: str) -> tuple[str | None, Any]:
        """Send the multipart append; return the job id and None, or None and the counts
        when the server answered synchronously (as Nucleus did before SDK 0.19)."""
        if not upload.key:
            raise PermanentError(f"{what}: an empty item key cannot be a Nucleus reference_id")
        try:
            items = json.dumps([item_payload(upload)], allow_nan=False)
        except ValueError as exc:
            raise PermanentError(f"{what}: the metadata is not valid JSON for Nucleus: {exc}") from None
        suffix = upload.image_suffix.lstrip(".") or "octet-stream"
        files = [
            ("items", (None, items, "application/json")),
            # The SDK's part type is image/<suffix> (image/jpg for .jpg): what the server sees daily.
            ("image", (part_filename(image_url(upload)), upload.image, f"image/{suffix}")),
        ]
        context = f"appending {upload.key!r} to dataset {self.settings.dataset_id}"
        response = self.client.request("POST", f"{self.client.dataset_route}/append", params={"async": "1"},
                                       files=files, context=context)
        if response.status_code == 404:
            raise self.client.missing_dataset()
        self.client.raise_for_status(response, context)
        reply = self.client.json(response, context)
        if isinstance(reply, dict) and reply.get("job_id"):
            return str(reply["job_id"]), None
        if isinstance(reply, dict) and "upload_errors" in reply:  # synchronous count reply
            if reply.get("upload_errors"):
                detail = json.dumps(reply.get("error_payload") or reply)[:300]
                raise PermanentError(f"{what}: Nucleus rejected the item: {detail}")
            return None, reply
        raise TransientError(f"{what}: {context}: the reply has neither a job id nor counts: {str(reply)[:200]}")

    def _deliver_annotations(self, upload: Upload, todo: Plan, what: str, *, fresh: bool = False) -> dict[str, Any]:
        """Labels and mask -> the item's annotations (when ``todo`` says they changed);
        returns the receipt's ``annotations_sha256`` (and ``not_sent``). ``fresh``: the
        append created the item."""
        if todo.converted is None and not (todo.leftovers and not fresh):
            return todo.receipt()
        with self._lock:
            self._unsure.add(upload.key)
        fields = self.annotations.write(upload, todo, what, fresh=fresh)
        with self._lock:
            self._unsure.discard(upload.key)
        return fields

    # -- lookup -------------------------------------------------------------------------------
    def lookup(self, upload: Upload) -> Receipt | None:
        """The item with this upload's reference_id (``GET dataset/{id}/refloc/{ref}``), or
        None. Its version is unknown (syncd stores nothing in the metadata), so the receipt
        has no ``version``: a caller re-sends rather than adopts."""
        context = f"looking up {upload.key!r}"
        route = f"{self.client.dataset_route}/refloc/{quote(upload.key, safe='')}"
        response = self.client.request("GET", route, context=context)
        if response.status_code == 404:
            return None
        self.client.raise_for_status(response, context)
        reply = self.client.json(response, context)
        item = reply.get("item") if isinstance(reply, dict) else None
        if not isinstance(item, dict):
            return None
        item_id = item.get("id") or item.get("dataset_item_id")
        return Receipt(remote_id=upload.key, extra={"item_id": item_id, "dataset_id": self.settings.dataset_id})
