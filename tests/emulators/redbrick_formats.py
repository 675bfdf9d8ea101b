"""Pure functions of the RedBrick emulator: the ``genericTasks`` entry of a task, and the
``validateAndConvertToImportFormat`` conversion (public format -> import format)."""

from __future__ import annotations

import json

# Keys of a public-format series that carry annotations (only some are converted, see GEOMETRY).
ANNOTATION_KEYS = ("boundingBoxes", "landmarks", "polygons", "polylines", "ellipses", "cuboids", "segmentations",
                   "classifications", "instanceClassifications", "measurements", "landmarks3d")


def task_entry(task: dict) -> dict:
    """A ``genericTasks`` entry with the datapoint shard the SDK's ``tasksListSDK`` asks for."""
    series = [{"imageHeaders": None, "localToWorldTransform": None, "dataType": None, **s}
              for s in task.get("seriesInfo") or []] or None
    datapoint = {
        "dpId": task["dpId"], "name": task["name"], "items": list(task["items"]),
        "itemsPresigned": list(task["items"]), "createdAt": task["createdAt"],
        "createdByEntity": {"userId": "u-1", "email": "owner@example.com", "givenName": "Owner"},
        "metaData": task["metaData"], "seriesInfo": series, "heatMaps": task.get("heatMaps"),
        "transforms": task.get("transforms"), "centerline": task.get("centerline"),
        "storageMethod": {"storageId": task["storageId"]}, "attributes": task.get("attributes"),
        "archived": False, "cohorts": [],
    }
    return {"taskId": task["taskId"], "currentStageName": task["stage"], "createdAt": task["createdAt"],
            "updatedAt": task["updatedAt"], "priority": task.get("priority"), "datapoint": datapoint,
            "currentStageSubTask": None}


def _attributes(obj: dict) -> list[dict]:
    return [{"name": k, "value": v} for k, v in sorted((obj.get("attributes") or {}).items())]


def _xy(point: dict) -> dict:
    return {"xnorm": point["xNorm"], "ynorm": point["yNorm"]}


# Public series key -> the import-format geometry of one of its objects (the inverse of the
# SDK's export, ``dicom_rb_series``).
GEOMETRY = {
    "classifications": lambda o: {"seriesclassify": True},
    "boundingBoxes": lambda o: {"bbox2d": {**_xy(o["pointTopLeft"]), "wnorm": o["wNorm"], "hnorm": o["hNorm"]}},
    "landmarks": lambda o: {"point": _xy(o["point"])},
    "polygons": lambda o: {"polygon": [_xy(p) for p in o["points"]]},
    "polylines": lambda o: {"polyline": [_xy(p) for p in o["points"]]},
}
MASK_FLAGS = ("binaryMask", "pngMask", "semanticMask")


def _label(obj: dict, geometry: dict, volume: int) -> dict:
    label = {"category": obj["category"]} if obj.get("category") is not None else {}
    label = {**label, "attributes": _attributes(obj), **geometry}
    if volume:  # [INF] series 0 is the default; the real server's choice is not known
        label["volumeindex"] = volume
    return label


def _series_labels(series: dict, volume: int) -> tuple[list[dict], dict | None]:
    """The import-format labels of one public series and its labelsMap entry (or None)."""
    not_emulated = [k for k in ANNOTATION_KEYS if k in series and k not in GEOMETRY and k != "segmentations"]
    if not_emulated or any(series.get(flag) for flag in MASK_FLAGS):
        raise ValueError(f"{', '.join(not_emulated) or 'mask flags'} in series are not emulated by RedBrickEmulator")
    labels = [_label(obj, GEOMETRY[key](obj), volume) for key in GEOMETRY for obj in series.get(key) or []]
    segmentation = series.get("segmentations")
    if not segmentation:
        return labels, None
    if not isinstance(segmentation, str):
        raise ValueError("only one segmentation file per series is emulated")
    for instance, entry in sorted((series.get("segmentMap") or {}).items(), key=lambda kv: int(kv[0])):
        entry = entry if isinstance(entry, dict) else {"category": entry}
        labels.append({"category": entry["category"], "attributes": _attributes(entry),
                       "dicom": {"instanceid": int(instance)}, "volumeindex": volume})
    return labels, {"labelName": segmentation, "seriesIndex": volume}


def _convert(task: dict) -> dict:
    out = {k: val for k, val in task.items() if k not in ("series", "classification")}
    items, infos, labels, labels_map = [], [], [], []
    if task.get("classification"):
        labels.append(_label(task["classification"], {"studyclassify": True}, 0))
    for volume, series in enumerate(task["series"] or []):
        new = series.get("items")
        new = [new] if isinstance(new, str) else list(new or [])
        infos.append({"name": series.get("name"), "itemsIndices": list(range(len(items), len(items) + len(new))),
                      "metaData": series.get("metaData")})
        items += new
        series_labels, entry = _series_labels(series, volume)
        labels += series_labels
        if entry:
            labels_map.append(entry)
    out["items"] = items
    if any(i["name"] or i["metaData"] for i in infos):
        out["seriesInfo"] = infos
    if labels:
        out["labels"] = labels
    if labels_map:
        out["labelsMap"] = labels_map
    return out


def validate_and_convert(original: str | None) -> dict:
    """``{isValid, error, converted}`` for the JSON string of a task list.

    Import-format tasks (``items``) pass through with ``converted: null``, which the SDK
    takes as "unchanged". Public-format tasks (``series``) become ``items`` (series items
    concatenated), ``seriesInfo`` when a series has a name or metadata, ``labels`` from the
    series' classifications, boxes, landmarks, polygons, polylines and segmentMap (and the
    task's classification), and ``labelsMap`` for a series' segmentation file. Other
    annotations (ellipses, cuboids, binary/PNG masks, ...) are answered ``isValid: false``."""
    try:
        tasks = json.loads(original or "")
    except ValueError:
        return {"isValid": False, "error": "original is not JSON", "converted": None}
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        return {"isValid": False, "error": "original must be a list of tasks", "converted": None}
    if not any("series" in t for t in tasks):
        bad = [t for t in tasks if not isinstance(t.get("items"), list) or not t["items"]]
        error = f"task {bad[0].get('name')!r} has no items" if bad else None
        return {"isValid": not bad, "error": error, "converted": None}
    try:
        converted = [_convert(task) if "series" in task else task for task in tasks]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"isValid": False, "error": f"invalid annotation: {exc!r}", "converted": None}
    return {"isValid": True, "error": None, "converted": json.dumps(converted)}
