"""Labels in the RedBrick emulator: what ``createDatapoint`` and ``putLabels`` accept and keep.

Strict on purpose (platform reference Part 2 §2.2, §2.4(b)/(c), §2.5):
- ``labelsData`` is a JSON string of a list of import-format labels. Each label has a
  ``category`` and exactly one of ``bbox2d``, ``point``, ``polygon``, ``polyline``,
  ``dicom``, ``seriesclassify``/``studyclassify`` (true); coordinates are numbers in 0..1;
  ``attributes`` is a list of ``{name, value}``; no other keys than those and ``labelid``,
  ``classid``, ``linkid``, ``readonly``, ``volumeindex``.
- ``labelsMap`` entries (or None) are ``{labelName, seriesIndex}`` whose ``labelName`` was
  uploaded through ``presignUploads`` (``presignSeg``) as a gzipped NIfTI-1; every ``dicom``
  label needs the entry of its ``volumeindex`` (default 0), instance ids unique per volume.
- ``labelsDataPath`` names a label list uploaded through ``presignData`` (gunzipped when it
  was PUT with ``Content-Encoding: gzip``); its labels are checked the same way.
- Presigned label uploads must carry ``x-ms-blob-type: BlockBlob`` (Azure's required header;
  the SDK sends it), else HTTP 400 ``MissingRequiredHeader``.
- ``known_categories``: when set, labels whose category is not in it are refused (how a real
  project treats categories missing from its taxonomy is not known; tests opt in).

``putLabels`` replaces a task's labels and segmentations as a whole. Tasks keep ``labels``
(the parsed list, from ``labelsData`` or the file), ``labelsMap`` and ``segmentations``
(series index -> the NIfTI bytes), so tests can assert them.
"""

from __future__ import annotations

import gzip
import json
import struct
from numbers import Real

KINDS = ("bbox2d", "point", "polygon", "polyline", "dicom", "seriesclassify", "studyclassify")
OPTIONAL = frozenset({"category", "attributes", "labelid", "classid", "linkid", "readonly", "volumeindex"})
BLOB_HEADER = ("x-ms-blob-type", "BlockBlob")


class GraphQLFailure(Exception):
    """Answer the operation with an ``errors`` entry (HTTP 200) and ``data.<field> = null``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def json_string(field: str, value, kind: type, what: str):
    """Parse a JSON-string variable; GraphQLFailure when it is not ``kind``."""
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        raise GraphQLFailure(field, f"{what} must be a JSON string") from None
    if not isinstance(parsed, kind):
        raise GraphQLFailure(field, f"{what} must be a JSON {getattr(kind, '__name__', 'object')}")
    return parsed


def _norm(value, where: str) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{where} must be a number in 0..1, got {value!r}")


def _xy(point, where: str) -> None:
    if not isinstance(point, dict) or set(point) != {"xnorm", "ynorm"}:
        raise ValueError(f"{where} must be {{xnorm, ynorm}}, got {point!r}")
    _norm(point["xnorm"], f"{where}.xnorm")
    _norm(point["ynorm"], f"{where}.ynorm")


def check_label(label, where: str) -> None:
    """Raise ValueError naming ``where`` when ``label`` is not an import-format label."""
    if not isinstance(label, dict):
        raise ValueError(f"{where} must be an object")
    kinds = [k for k in KINDS if k in label]
    unknown = sorted(set(label) - OPTIONAL - set(KINDS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}")
    if len(kinds) != 1:
        raise ValueError(f"{where} needs exactly one of {', '.join(KINDS)}, has {kinds or 'none'}")
    category = label.get("category")
    if not (isinstance(category, str) and category) and not (isinstance(category, list) and category):
        raise ValueError(f"{where}.category must be a non-empty string or list")
    attributes = label.get("attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, dict) and set(a) == {"name", "value"}
                                                   and isinstance(a["name"], str) for a in attributes):
        raise ValueError(f"{where}.attributes must be a list of {{name, value}}")
    kind = kinds[0]
    value = label[kind]
    if kind == "bbox2d":
        if not isinstance(value, dict) or set(value) != {"xnorm", "ynorm", "wnorm", "hnorm"}:
            raise ValueError(f"{where}.bbox2d must be {{xnorm, ynorm, wnorm, hnorm}}")
        for key in value:
            _norm(value[key], f"{where}.bbox2d.{key}")
        if value["xnorm"] + value["wnorm"] > 1 + 1e-9 or value["ynorm"] + value["hnorm"] > 1 + 1e-9:
            raise ValueError(f"{where}.bbox2d ends outside the image")
    elif kind == "point":
        _xy(value, f"{where}.point")
    elif kind in ("polygon", "polyline"):
        least = 3 if kind == "polygon" else 2
        if not isinstance(value, list) or len(value) < least:
            raise ValueError(f"{where}.{kind} needs at least {least} points")
        for n, point in enumerate(value):
            _xy(point, f"{where}.{kind}[{n}]")
    elif kind == "dicom":
        instance = value.get("instanceid") if isinstance(value, dict) else None
        if not isinstance(instance, int) or isinstance(instance, bool) or instance < 1:
            raise ValueError(f"{where}.dicom.instanceid must be an integer >= 1")
    elif value is not True:
        raise ValueError(f"{where}.{kind} must be true")
    volume = label.get("volumeindex", 0)
    if not isinstance(volume, int) or isinstance(volume, bool) or volume < 0:
        raise ValueError(f"{where}.volumeindex must be an integer >= 0")


def check_nifti(data: bytes, name: str) -> None:
    """A gzipped NIfTI-1 file (header size 348, magic ``n+1``), or ValueError."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError):
        raise ValueError(f"segmentation {name} is not gzipped") from None
    if len(raw) < 352 or struct.unpack("<i", raw[:4])[0] != 348 or raw[344:348] != b"n+1\0":
        raise ValueError(f"segmentation {name} is not a NIfTI-1 file")


class LabelsMixin:
    """The label side of ``RedBrickEmulator`` (it provides ``blobs``, ``_project``, ``_task``
    and ``_presign``; every method runs under the emulator's lock)."""

    known_categories: set[str] | None = None

    def _read_blob(self, field: str, path, kind: str) -> bytes:
        blob = self.blobs.get(path) if isinstance(path, str) else None
        if blob is None or blob.get("kind") != kind:
            raise GraphQLFailure(field, f"Label file {path!r} was not uploaded")
        data = blob["data"]
        if (blob["headers"].get("content-encoding") or "").lower() == "gzip":
            data = gzip.decompress(data)
        return data

    def task_labels(self, field: str, v: dict) -> dict:
        """The label state a createDatapoint/putLabels call asks for: ``labels``, ``labelsData``,
        ``labelsDataPath``, ``labelsMap``, ``segmentations``; GraphQLFailure when it is invalid."""
        labels = []
        if v.get("labelsData") is not None:
            labels = json_string(field, v["labelsData"], list, "labelsData")
        if v.get("labelsDataPath") is not None:
            labels = labels + json_string(field, self._read_blob(field, v["labelsDataPath"], "data").decode(), list,
                                          "the labels file")
        segmentations: dict[int, bytes] = {}
        labels_map = v.get("labelsMap") or []
        if not isinstance(labels_map, list):
            raise GraphQLFailure(field, "labelsMap must be a list")
        try:
            for n, entry in enumerate(labels_map):
                if entry is None:
                    continue
                index = entry.get("seriesIndex") if isinstance(entry, dict) else None
                if not isinstance(index, int) or index < 0 or not isinstance(entry.get("labelName"), str):
                    raise ValueError(f"labelsMap[{n}] must be {{labelName, seriesIndex}}")
                data = self._read_blob(field, entry["labelName"], "seg")
                check_nifti(data, entry["labelName"])
                segmentations[index] = data
            instances: set[tuple[int, int]] = set()
            for n, label in enumerate(labels):
                check_label(label, f"labels[{n}]")
                category = label["category"]
                if self.known_categories is not None and isinstance(category, str) \
                        and category not in self.known_categories:
                    raise ValueError(f"Category {category!r} does not exist in the project's taxonomy")
                if "dicom" in label:
                    key = (label.get("volumeindex", 0), label["dicom"]["instanceid"])
                    if key[0] not in segmentations:
                        raise ValueError(f"labels[{n}] is a segment of series {key[0]}, which has no labelsMap entry")
                    if key in instances:
                        raise ValueError(f"labels[{n}]: instance {key[1]} appears twice in series {key[0]}")
                    instances.add(key)
        except ValueError as exc:
            raise GraphQLFailure(field, f"Invalid labels: {exc}") from None
        return {"labels": labels, "labelsData": v.get("labelsData"), "labelsDataPath": v.get("labelsDataPath"),
                "labelsMap": labels_map, "segmentations": segmentations}

    def op_presignUploadsSDK(self, v: dict, key_org: str) -> dict:
        project = self._project("presignData", v, key_org)
        out = {}
        for alias, files, kind in (("presignData", "filesData", "data"), ("presignSeg", "filesSeg", "seg")):
            file_type = v.get("fileTypeData" if kind == "data" else "fileTypeSeg")
            if not isinstance(file_type, str) or not isinstance(v.get(files), list):
                raise GraphQLFailure(alias, f"{files} and its fileType are required")
            out[alias] = [self._presign(project, f, file_type, kind=kind, required=dict([BLOB_HEADER]))
                          for f in v[files]]
        return out

    def op_updateTasksLabelsSDK(self, v: dict, key_org: str) -> dict:
        field = "putLabels"
        project = self._project(field, v, key_org)
        task = self._task(field, project, v.get("taskId"))
        if v.get("finalize") is not None and not isinstance(v["finalize"], bool):
            raise GraphQLFailure(field, "finalize must be a boolean")
        if v.get("extraData") is not None:
            json_string(field, v["extraData"], (dict, type(None)), "extraData")
        task.update(self.task_labels(field, v))  # replaces labels and segmentations as a whole
        task["labelsVersion"] = task.get("labelsVersion", 0) + 1
        return {field: {"ok": True, "message": None}}
