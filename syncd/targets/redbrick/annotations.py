"""Labels and masks of a RedBrick task (docs/platforms/redbrick.md).

What goes where, as the official ``redbrick-sdk`` 2.35.4 sends it:

- The labels are the converter's internal import-format labels (``payload.to_redbrick``),
  sent as ``labelsData``: one compact JSON string (the SDK's ``json.dumps(labels,
  separators=(",", ":"))``).
- A mask becomes a gzipped NIfTI instance map, uploaded with ``presignUploadsSDK`` (its
  ``presignSeg`` alias, file name ``labels/<uuid>/<uuid>/0.nii.gz``) and a PUT with
  ``Content-Type: application/octet-stream`` and ``x-ms-blob-type: BlockBlob``; it is
  referenced by ``labelsMap = [{"labelName": <filePath>, "seriesIndex": 0}]`` and one
  ``{"category", "dicom": {"instanceid": k}, "volumeindex": 0}`` label per class present.
- More than ``LABELS_ARRAY_LIMIT`` labels go as a file instead, as the SDK does: the JSON,
  gzipped, PUT through the ``presignData`` alias (``Content-Encoding: gzip``), referenced by
  ``labelsDataPath``, with ``labelsData = "[]"``.
- First delivery: the three fields go in the ``createDatapoint`` that makes the task.
  Later: ``putLabels`` (``updateTasksLabelsSDK``), which replaces the task's labels and
  segmentation as a whole, so a label removed locally disappears and a re-send never
  duplicates anything.

Change detection: ``labels_digest`` hashes what the labels are made from (the sidecar labels,
the mask bytes, the class map, the image size and whether the mask can be sent), ``EMPTY``
for an item without labels and mask. The receipt keeps it as ``labels_sha256`` (None:
unknown, e.g. after a lookup) and ``labels_written``: whether the task holds labels syncd
wrote. An update sends ``putLabels`` only when the digest differs, and never for an item
without labels onto a task syncd wrote no labels to: a metadata change, a crash or a lost
reply never overwrites the work annotators did in RedBrick on a task syncd only feeds images.

Nothing is dropped silently: a mask that cannot be sent (``nibabel`` is not installed) and
labels RedBrick refused are listed in ``Labels.not_sent`` (the receipt's ``not_sent``) and
logged; the image and metadata are delivered regardless. Label types RedBrick has no form for
(keypoints) are reported by the core (``RedBrickTarget.label_types``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from syncd.errors import ItemError, LocalError, TransientError
from syncd.targets.base import Upload
from syncd.targets.redbrick.client import PRESIGN_UPLOADS, PUT_LABELS, GraphQLRefused, RedBrickClient
from syncd.targets.redbrick.payload import to_redbrick

LABELS_ARRAY_LIMIT = 1000  # the SDK's: more labels than this go as a labelsDataPath file
EMPTY = "empty"  # the digest of an item without labels and mask
FORMAT = 1  # part of the digest: bump when the conversion changes, so labels are sent again
NIFTI_TYPE = "application/octet-stream"
SEG_HEADERS = {"x-ms-blob-type": "BlockBlob"}
DATA_HEADERS = {"Content-Encoding": "gzip", "x-ms-blob-type": "BlockBlob"}
FIX_NIBABEL = "pip install 'syncd[redbrick]'"
MASK_NEEDS_NIBABEL = f"mask: not sent, RedBrick masks need the nibabel package: {FIX_NIBABEL}"


def nibabel_available() -> bool:
    """Whether ``nibabel`` can be found, without importing it (the daemon stays small)."""
    try:
        return importlib.util.find_spec("nibabel") is not None
    except (ImportError, ValueError):  # ValueError: a module entry without a spec
        return False


def labels_digest(upload: Upload, *, mask_sent: bool) -> str:
    """A hash of everything the task's labels are made from; ``mask_sent`` says whether the
    mask (if any) is in them, so installing nibabel later makes the mask go with the next update."""
    if not upload.labels and upload.mask is None:
        return EMPTY
    source = {"format": FORMAT, "size": [upload.width, upload.height], "labels": upload.labels,
              "class_map": upload.class_map,
              "mask": None if upload.mask is None else hashlib.sha256(upload.mask).hexdigest(),
              "mask_sent": upload.mask is not None and mask_sent}
    return hashlib.sha256(json.dumps(source, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def expected_digest(upload: Upload) -> str:
    """The digest of what a delivery would send now (with the nibabel found on this machine)."""
    return labels_digest(upload, mask_sent=upload.mask is None or nibabel_available())


@dataclass(frozen=True)
class Labels:
    """A task's labels as RedBrick takes them, plus what the receipt records: ``digest``
    (None when the labels were not sent as intended), ``written`` (the task holds labels syncd
    wrote) and ``not_sent`` (what is missing, and why)."""

    data: str = "[]"
    data_path: str | None = None
    labels_map: list[dict[str, Any]] = field(default_factory=list)
    digest: str | None = None
    written: bool = False
    not_sent: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The receipt's part."""
        return {"labels_sha256": self.digest, "labels_written": self.written, "not_sent": list(self.not_sent)}

    def variables(self) -> dict[str, Any]:
        """``labelsData``, ``labelsDataPath`` and ``labelsMap`` for createDatapoint/putLabels."""
        return {"labelsData": self.data, "labelsDataPath": self.data_path,
                "labelsMap": [dict(entry) for entry in self.labels_map]}

    @property
    def empty(self) -> bool:
        return self.data == "[]" and not self.data_path and not self.labels_map

    def refused(self, message: str, *, written: bool) -> "Labels":
        """No labels, and why: RedBrick refused these (e.g. a category its taxonomy lacks);
        ``written``: the task still holds labels syncd wrote before."""
        return Labels(written=written, not_sent=(*self.not_sent, f"labels and mask: RedBrick refused them: {message}"))


class LabelWriter:
    """Builds a task's ``Labels`` (uploading the files they refer to) and writes them with
    ``putLabels`` through the target's client; ``ids`` are the org and project ids
    (``orgId``, ``projectId``) every operation carries."""

    def __init__(self, client: RedBrickClient, ids: dict[str, str]):
        self.client = client
        self.name = client.name
        self._ids = dict(ids)

    def prepare(self, upload: Upload) -> Labels:
        """The labels of ``upload``: converted, with the NIfTI (and a large label list) uploaded."""
        notes: list[str] = []
        source = upload
        if upload.mask is not None and not nibabel_available():
            source = replace(upload, mask=None, class_map=None)
            notes.append(MASK_NEEDS_NIBABEL)
        try:
            try:
                converted = to_redbrick(source)
            except LocalError as exc:  # nibabel found but not importable (a broken install)
                source = replace(upload, mask=None, class_map=None)
                notes.append(f"mask: not sent: {exc}")
                converted = to_redbrick(source)
        except ItemError as exc:
            # Item validation accepted these labels, so this is a syncd bug; the image still goes.
            return Labels(not_sent=(f"labels and mask: not sent: {exc}",))
        labels = converted.labels
        as_file = len(labels) > LABELS_ARRAY_LIMIT
        data_path, seg_path = self._upload_files(upload, converted.nifti, labels if as_file else None)
        return Labels(
            data="[]" if as_file else json.dumps(labels, separators=(",", ":")), written=bool(labels),
            data_path=data_path,
            labels_map=[{"labelName": seg_path, "seriesIndex": 0}] if seg_path else [],
            digest=labels_digest(upload, mask_sent=converted.nifti is not None),
            not_sent=tuple(notes),
        )

    def _upload_files(self, upload: Upload, nifti: bytes | None,
                      labels: list[dict[str, Any]] | None) -> tuple[str | None, str | None]:
        """Upload the NIfTI and/or the label list file; their ``filePath``s (None if not needed).

        Failures are transient with a known outcome: nothing refers to a file until the
        createDatapoint/putLabels that follows, and the next attempt asks for new URLs."""
        if nifti is None and labels is None:
            return None, None
        folder = f"labels/{uuid.uuid4()}/{uuid.uuid4()}"  # the SDK's names: random, never reused
        variables = {
            **self._ids, "filesData": [f"{folder}/data.json"] if labels is not None else [],
            "fileTypeData": "application/json", "fileEncodingData": "gzip",
            "filesSeg": [f"{folder}/0.nii.gz"] if nifti is not None else [],
            "fileTypeSeg": NIFTI_TYPE, "fileEncodingSeg": None,
        }
        api = self.client
        reply = api.execute(PRESIGN_UPLOADS, variables, context=f"asking where to upload the labels of {upload.key!r}",
                            idempotent=True)
        paths: list[str | None] = []
        for alias, body, content_type, headers, what in (
                ("presignData", None if labels is None else gzip.compress(json.dumps(labels).encode(), mtime=0),
                 "application/json", DATA_HEADERS, "label list"),
                ("presignSeg", nifti, NIFTI_TYPE, SEG_HEADERS, "mask (NIfTI)")):
            if body is None:
                paths.append(None)
                continue
            grant = (reply.get(alias) or [None])[0]
            if not grant or not grant.get("presignedUrl") or not grant.get("filePath"):
                raise TransientError(f"{self.name}: RedBrick gave no upload URL for the {what} of {upload.key!r}",
                                     outcome_unknown=False)
            api.put(grant["presignedUrl"], body, content_type, headers=headers,
                    context=f"uploading the {what} of {upload.key!r}")
            paths.append(grant["filePath"])
        return paths[0], paths[1]

    def put(self, task_id: str, labels: Labels, *, task_name: str) -> None:
        """Replace the task's labels (``putLabels``). Raises GraphQLRefused when RedBrick
        refuses them (an ``errors`` entry, or ``ok: false``)."""
        variables = {**self._ids, "taskId": task_id, **labels.variables(), "finalize": False, "timeSpentMs": None,
                     "extraData": "null"}  # the SDK sends json.dumps(None)
        context = f"writing the labels of task {task_name!r} ({task_id})"
        data = self.client.execute(PUT_LABELS, variables, context=context)
        result = data.get("putLabels") or {}
        if not result.get("ok"):
            message = str(result.get("message") or "not ok")
            raise GraphQLRefused(f"{self.name}: {context}: RedBrick answered {message}", [message])
