"""Pure functions of the RedBrick emulator: the ``genericTasks`` entry of a task, and the
``validateAndConvertToImportFormat`` conversion (public format -> import format)."""

from __future__ import annotations

import json

# Keys of a public-format series that carry annotations (not converted by this emulator).
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


def validate_and_convert(original: str | None) -> dict:
    """``{isValid, error, converted}`` for the JSON string of a task list.

    Import-format tasks (``items``) pass through with ``converted: null``, which the SDK
    takes as "unchanged". Public-format tasks (``series``) become ``items`` (series items
    concatenated) plus ``seriesInfo`` when a series has a name or metadata; annotations in
    a series are answered ``isValid: false`` (not emulated)."""
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
    converted = []
    for task in tasks:
        if "series" not in task:
            converted.append(task)
            continue
        out = {k: val for k, val in task.items() if k not in ("series", "classification")}
        items, infos = [], []
        for series in task["series"] or []:
            if any(key in series for key in ANNOTATION_KEYS):
                return {"isValid": False, "converted": None,
                        "error": "annotations in series are not emulated by RedBrickEmulator"}
            new = series.get("items")
            new = [new] if isinstance(new, str) else list(new or [])
            infos.append({"name": series.get("name"), "itemsIndices": list(range(len(items), len(items) + len(new))),
                          "metaData": series.get("metaData")})
            items += new
        out["items"] = items
        if any(i["name"] or i["metaData"] for i in infos):
            out["seriesInfo"] = infos
        converted.append(out)
    return {"isValid": True, "error": None, "converted": json.dumps(converted)}
