"""The Edge Impulse project target: every item is one sample in one project.

Wire protocol (docs/platforms/edgeimpulse.md): a new image is one multipart request to the
ingestion service ``POST {ingestion_url}/api/{category}/files`` (part ``data``; headers
``x-api-key``, ``x-label`` (percent-encoded) or ``x-no-label``, ``x-metadata``,
``x-bounding-boxes``, ``x-disallow-duplicates``, ``x-upload-source``); the reply lists one
result per file and both the top-level and the per-file ``success`` are checked (the
request is built in ``ingest``; new items with identical headers share one request, see
``batch``). Later changes use Studio (``{api_url}/api/{projectId}/raw-data/...``): ``.../{sampleId}/metadata``
with the complete map, ``.../{sampleId}/edit-label``, ``.../{sampleId}/bounding-boxes``
(the complete list), ``DELETE .../{sampleId}``, and the list route for lookups by name.

Annotations (``payload.to_edgeimpulse``): box labels and the mask's
connected regions become the sample's bounding boxes, whole pixels. A new sample gets them
with its upload (``x-bounding-boxes``, as the official SDK sends them; a list too long for a
header travels as a ``bounding_boxes.labels`` part, as the CLI uploader sends it). On an
update the sample, read back anyway, is compared with the wanted list and the complete list
is set only when it differs: the route replaces the list, so a re-send after a lost reply
never duplicates boxes and a metadata-only change sends none. What Edge Impulse cannot hold
(points, polygons, polylines, keypoints, attributes, extra classifications) is reported by
the daemon (``label_types``, see ``syncd.labels.support``), never sent.

Idempotency (see ``payload`` for names and markers):
- The sample name comes from the item key; a lookup lists the samples with that name.
- ``x-disallow-duplicates: 1`` makes the platform refuse a file it already holds. A re-send
  whose file is refused is looked up by name and adopted when the sample there holds this
  image; otherwise the refusal is a PermanentError naming the platform's reason.
- Metadata, label or box change (same image): the metadata route with the complete map,
  then the sample is read back; a label change uses edit-label, a box change the
  bounding-boxes route; keys the platform kept although they are no longer wanted (it merged
  instead of replacing) are cleared one by one.
- Image change: the new image is uploaded as a new sample first, then the old sample is
  deleted, so the item is never missing remotely. If anything fails in between, the error
  says "outcome unknown": the daemon's lookup then sees both samples, keeps the one holding
  the new image and the next delivery deletes the other.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from syncd.errors import FatalTargetError, PermanentError, SyncdError, TransientError
from syncd.targets.base import Receipt, Target, Upload
from syncd.targets.edgeimpulse import ingest, payload
from syncd.targets.edgeimpulse.batch import SharedUploads
from syncd.targets.edgeimpulse.client import (
    EdgeImpulseClient,
    EdgeImpulseSettingsBase,
    RemoteNotFound,
    result,
)
from syncd.targets.edgeimpulse.ingest import Form, Wanted
from syncd.targets.edgeimpulse.payload import (
    IMAGE_KEY,
    choose,
    desired_metadata,
    holds_image,
    sample_name,
    to_edgeimpulse,
)

BOX_FIELDS = ("label", "x", "y", "width", "height")
PAGE = 100
MAX_PAGES = 100
CLASS_LABEL_TYPES = ("classification",)  # syncd.labels.model


class EdgeImpulseSettings(EdgeImpulseSettingsBase):
    platform: str = "edgeimpulse"
    api_key_env: str = Field("EI_API_KEY", description="environment variable holding the project's API key (ei_...)")
    project_id: int = Field(
        gt=0, description="the project's id (Dashboard > Project info); the API key must belong to it")
    category: Literal["training", "validation", "testing", "post-processing", "split"] = Field(
        "split", description="where new samples go; 'split' lets Edge Impulse pick training or testing")
    label_source: Literal["classification", "metadata", "folder", "none"] = Field(
        "classification",
        description="the sample label: the first sidecar label of type 'classification' (classification), "
                    "the metadata key label_key (metadata), the item's parent folder (folder), or none")
    label_key: str = Field("label", description="metadata key holding the label when label_source = 'metadata'")
    allow_duplicates: bool = Field(
        False,
        description="upload images identical to a sample already in the project (off: Edge Impulse refuses them)")
    min_region_pixels: int = Field(
        1, ge=1, description="mask regions smaller than this many pixels get no bounding box (1 = every region)")
    ingestion_url: str = Field("https://ingestion.edgeimpulse.com", description="Edge Impulse ingestion service URL")

    @field_validator("ingestion_url")
    @classmethod
    def _strip_ingestion_slash(cls, value: str) -> str:
        return value.rstrip("/")


def _label_of(sample: dict[str, Any]) -> str | None:
    label = sample.get("label")
    return label if isinstance(label, str) and label else None


def _box_key(box: Any) -> str:
    """A comparable text for one box; whole-number floats count as ints (3.0 == 3)."""
    if not isinstance(box, dict):
        return json.dumps(box, sort_keys=True, default=str)
    values = [box.get(k) for k in BOX_FIELDS]
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    return json.dumps(values, default=str)


def same_boxes(remote: Any, wanted: list[dict[str, Any]]) -> bool:
    """Whether the sample's ``boundingBoxes`` are ``wanted``, in any order (Studio may sort)."""
    remote = remote if isinstance(remote, list) else []
    return sorted(map(_box_key, remote)) == sorted(map(_box_key, wanted))


class EdgeImpulseTarget(SharedUploads, Target):
    """Delivers items as samples of one Edge Impulse project; see the module docstring."""

    platform = "edgeimpulse"
    Settings = EdgeImpulseSettings
    create_only = True  # a re-send could create a second sample: look it up first
    label_types = payload.LABEL_TYPES  # a classification is the sample's label; masks become boxes
    single_classification = payload.SINGLE_CLASSIFICATION

    def __init__(self, name: str, settings: EdgeImpulseSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.settings: EdgeImpulseSettings = settings
        self.client = EdgeImpulseClient(name, key_env=settings.api_key_env, timeout=settings.timeout, env=self.env)

    def close(self) -> None:
        """Close the client's sessions and request threads (the target can still be used
        afterwards)."""
        self.close_requests()
        self.client.close()

    # -- helpers ------------------------------------------------------------------------------
    def studio(self, path: str) -> str:
        return f"{self.settings.api_url}/api/{self.settings.project_id}{path}"

    def label_for(self, upload: Upload) -> str | None:
        """The label the sample must carry, or None for an unlabeled sample."""
        source = self.settings.label_source
        if source == "classification":
            for label in upload.labels:
                if isinstance(label, dict) and label.get("type") in CLASS_LABEL_TYPES:
                    value = label.get("label")
                    return str(value) if value not in (None, "") else None
            return None
        if source == "metadata":
            value = upload.metadata.get(self.settings.label_key)
            if value is None or value == "":
                return None
            return value if isinstance(value, str) else json.dumps(value)
        if source == "folder":
            parts = upload.key.split("/")
            return parts[-2] if len(parts) > 1 else None
        return None

    def _receipt(self, sample_id: int, upload: Upload, *, version: str | None, image_sha256: str | None,
                 label: str | None, stale: list[int] | None = None) -> Receipt:
        extra = {"version": version, "image_sha256": image_sha256, "label": label, "name": sample_name(upload.key),
                 "project_id": self.settings.project_id, "stale_ids": stale or []}
        return Receipt(remote_id=str(sample_id), extra=extra)

    def _previous(self, upload: Upload) -> Receipt | None:
        """The previous receipt, if it is for this project (a changed project_id starts over)."""
        previous = upload.previous
        if previous is None or previous.extra.get("project_id") != self.settings.project_id:
            return None
        return previous

    # -- check ----------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """The key reads the project ``project_id`` (FatalTargetError otherwise, naming both)
        and the ingestion route exists (``_check_ingestion``); warns when the project's
        labeling method ignores what syncd would send (sample labels in an object detection
        project, boxes in a classification project)."""
        project_id = self.settings.project_id
        try:
            body = self.client.call("GET", self.studio(""), context=f"reading project {project_id}", item=True)
        except (PermanentError, FatalTargetError) as exc:
            raise FatalTargetError(f"{exc} (is project_id {project_id} right, and does the key in "
                                   f"{self.settings.api_key_env} belong to that project?)") from exc
        project = body.get("project") or {}
        warnings = []
        if project.get("id") not in (None, project_id):
            raise FatalTargetError(f"target {self.name!r}: the API key belongs to project {project.get('id')}, "
                                   f"not to project_id {project_id}")
        self._check_ingestion()
        method = project.get("labelingMethod")
        if method == "object_detection" and self.settings.label_source != "none":
            warnings.append(f"target {self.name!r}: project {self.settings.project_id} labels bounding boxes; "
                            "sample labels (label_source) are ignored by Edge Impulse there")
        elif method not in (None, "object_detection"):
            # Documented: ingestion drops boxes unless the project labels bounding boxes.
            warnings.append(f"target {self.name!r}: project {self.settings.project_id} labels whole samples "
                            f"(labeling method {method!r}); Edge Impulse keeps bounding boxes (box labels, masks) "
                            "only in projects labeled with 'Bounding boxes' (object detection)")
        return warnings

    def _check_ingestion(self) -> None:
        """The ingestion route answers: a POST without any file (it creates nothing; any
        answer but a 404 or an auth error will do; a connection failure is transient).
        Without this, a missing route (a wrong ``ingestion_url``, a service redeployed
        elsewhere) would pause the target on the first upload, pass the Studio check,
        resume, and pause again with every item."""
        url = self.ingestion_url()
        context = f"checking the ingestion service at {url}"
        response = self.client.request("POST", url, context=context,
                                       headers={"Content-Type": "multipart/form-data; boundary=syncd-check"},
                                       data=b"--syncd-check--\r\n")
        if response.status_code == 404:
            raise FatalTargetError(f"{self.client.context(context)}: HTTP 404: there is no ingestion service at this "
                                   "URL: check ingestion_url")
        if response.status_code in (401, 403):
            result(response, context=self.client.context(context), secrets=self.client.secrets)
        # Any other answer (a 400 for the missing file, even a 5xx) proves the route is there.

    def ingestion_url(self) -> str:
        return f"{self.settings.ingestion_url}/api/{self.settings.category}/files"

    # -- deliver --------------------------------------------------------------------------------
    def wanted(self, upload: Upload) -> Wanted:
        """Metadata, label and annotations for ``upload``; computed before anything is sent
        (labels the daemon validated convert without error; an ItemError here means the item's
        files are broken, and nothing was sent)."""
        return Wanted(metadata=desired_metadata(upload), label=self.label_for(upload),
                      annotations=to_edgeimpulse(upload, min_region_pixels=self.settings.min_region_pixels))

    def deliver(self, upload: Upload) -> Receipt:
        """Make the sample named after ``upload.key`` hold this image, label, metadata and
        boxes: a new image is a new sample (uploaded first, then the superseded one deleted,
        so the item is never missing); the same image is updated in place through Studio.
        A sample refused as a duplicate is adopted when it holds this image. Superseded
        samples that cannot be deleted make the outcome unknown (the next attempt does).

        One attempt is bounded: at most one upload, one lookup and one adoption (issue 10
        item 14); a sample that is listed but cannot be updated is a TransientError."""
        return self._deliver(upload, self.wanted(upload))

    def _deliver(self, upload: Upload, wanted: Wanted) -> Receipt:
        previous = self._previous(upload)
        stale = [int(i) for i in (previous.extra.get("stale_ids") or [])] if previous else []
        if previous is not None and previous.extra.get("image_sha256") == upload.image_sha256:
            try:
                receipt = self._update(int(previous.remote_id), upload, wanted)
            except RemoteNotFound:
                # Deleted in Studio meanwhile: upload the item again; that sample is not adopted.
                receipt = self._create(upload, wanted, gone=int(previous.remote_id))
            return self._cleanup(receipt, stale, upload)
        receipt = self._create(upload, wanted)
        old = stale + ([int(previous.remote_id)] if previous is not None else [])
        return self._cleanup(receipt, old, upload)

    def _cleanup(self, receipt: Receipt, old: list[int], upload: Upload) -> Receipt:
        """Delete the superseded samples ``old`` once ``receipt``'s sample is right. A failure
        here leaves two samples, so it is reported as an unknown outcome (the daemon's lookup
        then finds both, and the next delivery deletes the superseded one)."""
        try:
            self._delete_all(old, keep=int(receipt.remote_id), upload=upload)
        except (TransientError, FatalTargetError):
            raise
        except SyncdError as exc:
            raise TransientError(f"{exc} (sample {receipt.remote_id} is up to date; the superseded one is "
                                 "removed on the next attempt)") from exc
        return receipt

    def _ingest(self, form: Form, *, context: str) -> list[dict[str, Any] | None]:
        """Send one ingestion request; the result of each of its files (None: not said)."""
        body, content_type = ingest.encode(form.parts)
        reply = self.client.post_form(self.ingestion_url(), context=context, headers=form.headers, body=body,
                                      content_type=content_type)
        return ingest.file_results(reply, form.names)

    def _create(self, upload: Upload, wanted: Wanted, *, gone: int | None = None) -> Receipt:
        """Upload the image as a new sample with its label, metadata and boxes in one request;
        adopt our own sample if it is refused as a duplicate (``_refused``)."""
        form = ingest.single(upload, wanted, allow_duplicates=self.settings.allow_duplicates)
        context = f"uploading {upload.key!r} as sample {form.names[0]!r}"
        (outcome,) = self._ingest(form, context=context)
        return self._outcome(outcome, upload, wanted, form, context=context, gone=gone)

    def _outcome(self, outcome: dict[str, Any] | None, upload: Upload, wanted: Wanted, form: Form, *, context: str,
                 gone: int | None) -> Receipt:
        """The receipt for one file's result in an ingestion reply (see ``_refused``)."""
        if outcome is None:
            raise TransientError(f"{self.name}: {context}: the reply lists no result for this file; checking on the "
                                 "next attempt")
        sample_id = outcome.get("sampleId")
        if outcome.get("success") is True and isinstance(sample_id, int):
            if form.late_metadata:
                return self._update(sample_id, upload, wanted)
            return self._receipt(sample_id, upload, version=upload.version, image_sha256=upload.image_sha256,
                                 label=wanted.label)
        return self._refused(upload, wanted, str(outcome.get("error") or "no reason given"), context=context, gone=gone)

    def _refused(self, upload: Upload, wanted: Wanted, reason: str, *, context: str, gone: int | None) -> Receipt:
        """The ingestion refused the file: maybe a re-send of a sample that exists already
        (refused as a duplicate). Adopt it when a sample with this name holds this image
        (never the sample ``gone`` that Studio just did not find); otherwise a PermanentError
        with the platform's reason."""
        found = self.lookup(upload)
        if found is not None and found.extra.get("image_sha256") == upload.image_sha256:
            if int(found.remote_id) == gone:
                raise TransientError(f"{self.name}: {context}: Edge Impulse lists sample {gone} as holding this image "
                                     "but answers \"not found\" when it is updated; retried later",
                                     outcome_unknown=False)
            return self._adopt(found, upload, wanted, context=context)
        hint = ""
        if "duplicate" in reason.lower() or "already" in reason.lower():
            hint = " (another sample holds an identical image; set allow_duplicates = true to upload it anyway)"
        raise PermanentError(f"{self.name}: {context}: Edge Impulse refused the file: {reason[:300]}{hint}")

    def _adopt(self, found: Receipt, upload: Upload, wanted: Wanted, *, context: str) -> Receipt:
        """Make the sample ``found`` (holding this image) carry ``wanted``, in place; its
        leftovers (``stale_ids``) are deleted. Never uploads: a sample that vanished in
        between is a TransientError (the next attempt starts over)."""
        try:
            receipt = self._update(int(found.remote_id), upload, wanted)
        except RemoteNotFound as exc:
            raise TransientError(f"{self.name}: {context}: the sample found vanished: {exc}",
                                 outcome_unknown=False) from exc
        return self._cleanup(receipt, [int(i) for i in found.extra.get("stale_ids") or []], upload)

    def _update(self, sample_id: int, upload: Upload, wanted: Wanted) -> Receipt:
        """Make sample ``sample_id`` carry ``wanted``; metadata verified by reading it back."""
        base = f"/raw-data/{sample_id}"
        context = f"updating sample {sample_id} of {upload.key!r}"
        desired = wanted.metadata
        self.client.call("POST", self.studio(base + "/metadata"), context=context, item=True,
                         json={"metadata": desired})
        sample = self._get_sample(sample_id)
        if _label_of(sample) != wanted.label:
            self.client.call("POST", self.studio(base + "/edit-label"), context=context, item=True,
                             json={"label": wanted.label or ""})
        metadata = sample.get("metadata") or {}
        extra_keys = sorted(k for k in metadata if k not in desired)
        if extra_keys:
            # The platform merged instead of replacing: clear the keys that must go.
            for key in extra_keys:
                self.client.call("POST", self.studio("/raw-data/batch/clear-metadata-by-key"), context=context,
                          params={"category": sample.get("category") or "all", "ids": json.dumps([sample_id])},
                          json={"metadataKey": key})
            metadata = self._get_sample(sample_id).get("metadata") or {}
        if metadata != desired:
            wrong = sorted(k for k in set(metadata) | set(desired) if metadata.get(k) != desired.get(k))
            raise PermanentError(f"{self.name}: {context}: Edge Impulse did not store the metadata as sent "
                                 f"(differing keys: {wrong[:10]})")
        self._sync_annotations(sample_id, sample, wanted, context=context)
        return self._receipt(sample_id, upload, version=upload.version, image_sha256=upload.image_sha256,
                             label=wanted.label)

    def _sync_annotations(self, sample_id: int, sample: dict[str, Any], wanted: Wanted, *, context: str) -> None:
        """Replace the sample's bounding boxes with the wanted list when they differ (the route
        sets the complete list: removed boxes disappear, a re-send never duplicates)."""
        if same_boxes(sample.get("boundingBoxes"), wanted.boxes):
            return  # nothing changed (a metadata-only change): nothing to send
        self.client.call("POST", self.studio(f"/raw-data/{sample_id}/bounding-boxes"), context=context, item=True,
                  json={"boundingBoxes": wanted.boxes})

    def _get_sample(self, sample_id: int) -> dict[str, Any]:
        body = self.client.call("GET", self.studio(f"/raw-data/{sample_id}"), context=f"reading sample {sample_id}",
                                item=True,
                         params={"limitPayloadValues": 1})
        sample = body.get("sample")
        if not isinstance(sample, dict):
            raise TransientError(f"{self.name}: reading sample {sample_id}: the reply has no sample")
        return sample

    def _delete_all(self, ids: list[int], *, keep: int, upload: Upload) -> None:
        for sample_id in sorted(set(ids) - {keep}):
            try:
                self.client.call("DELETE", self.studio(f"/raw-data/{sample_id}"), item=True,
                          context=f"deleting the superseded sample {sample_id} of {upload.key!r}")
            except RemoteNotFound:
                pass  # already gone: that is what we wanted

    # -- lookup ---------------------------------------------------------------------------------
    def samples_named(self, name: str) -> list[dict[str, Any]]:
        """Every sample of the project (any category) whose name is exactly ``name``.

        The list route's ``filename`` filter matches substrings, so the exact match is ours.
        """
        found: list[dict[str, Any]] = []
        offset = 0
        for _ in range(MAX_PAGES):
            body = self.client.call("GET", self.studio("/raw-data"), context=f"looking up sample {name!r}",
                             params={"category": "all", "filename": name, "limit": PAGE, "offset": offset,
                                     "excludeSensors": "true"})
            page = body.get("samples") or []
            found += [s for s in page if isinstance(s, dict) and s.get("filename") == name and "id" in s]
            offset += len(page)
            if not page or offset >= int(body.get("totalCount") or 0):
                break
        return found

    def lookup(self, upload: Upload) -> Receipt | None:
        """The sample named after ``upload.key``, or None. With several (an interrupted image
        replacement), the one holding this image is returned and the others are listed in
        ``extra["stale_ids"]`` for the next delivery to delete. ``extra["version"]`` is the
        upload's version only when that single sample equals the upload completely (metadata,
        label and bounding boxes)."""
        samples = self.samples_named(sample_name(upload.key))
        if not samples:
            return None
        keep, stale = choose(samples, upload)
        metadata = keep.get("metadata") or {}
        wanted = self.wanted(upload)
        complete = (not stale and metadata == wanted.metadata and _label_of(keep) == wanted.label
                    and same_boxes(keep.get("boundingBoxes"), wanted.boxes))
        image = upload.image_sha256 if holds_image(keep, upload) else metadata.get(IMAGE_KEY)
        return self._receipt(int(keep["id"]), upload, version=upload.version if complete else None,
                             image_sha256=image, label=_label_of(keep), stale=stale)
