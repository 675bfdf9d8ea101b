"""The state of the Nucleus emulator: datasets, items keyed by reference_id, async jobs.

Kept apart from the HTTP routes (tests/emulators/nucleus.py) so the rules are in one place:

- ``apply_row`` is what the server does with one item payload: validate it (row errors,
  not HTTP errors: the request was accepted, the row failed), then create, replace
  (``update=true``: metadata replaced wholesale, image overwritten) or ignore
  (``update=false`` on an existing reference_id).
- A ``Job`` holds the rows of one append until it runs. It is created in the first status
  of ``job_script``; the n-th poll of ``GET job/{id}`` shows the n-th status of the script
  and the poll after the last one runs it (with the default ``["Queued", "Running"]``:
  Queued, Queued, Running, Completed). An empty script runs jobs at creation. Jobs of one
  dataset run in creation order: running a job first runs every older pending job of the
  dataset (a FIFO queue), so an append whose reply was lost still lands before a later
  re-send.
"""

from __future__ import annotations

import copy
import heapq
import io
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://")
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}emu"


CAMEL = {"reference_id": "referenceId", "image_url": "imageUrl", "embedding_info": "embeddingInfo"}


def job_error_row(payload: dict, error: str) -> str:
    """One row of ``GET job/{id}/errors`` for a refused item: a JSON-encoded record in the
    shape the SDK documents for job errors (``AsyncJob.errors``: ``{"annotation": {...,
    "referenceId": ..., "annotationId": ...}, "error": "..."}``, camelCase keys), with the
    item under ``item`` (the item's record name is not documented: inferred)."""
    record = {CAMEL.get(key, key): value for key, value in payload.items()}
    return json.dumps({"item": record, "error": error}, separators=(",", ":"))


class BadRequest(Exception):
    """A malformed request: answered 400 with the message."""


def json_object(request) -> dict:
    """The request's JSON object body ({} when empty); BadRequest otherwise."""
    try:
        body = request.json() if request.body else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def update_flag(obj: dict) -> bool:
    value = obj.get("update", False)
    if not isinstance(value, bool):
        raise BadRequest(f"update must be a boolean, got {value!r}")
    return value


def item_list(value) -> list[dict]:
    """Validate a list of item payloads (400 on the first problem)."""
    if not isinstance(value, list) or not value:
        raise BadRequest("items must be a non-empty JSON list")
    for index, payload in enumerate(value):
        if not isinstance(payload, dict):
            raise BadRequest(f"items[{index}] must be an object")
        ref = payload.get("reference_id")
        if not isinstance(ref, str) or not ref:
            raise BadRequest(f"items[{index}]: reference_id is required")
        if not isinstance(payload.get("image_url"), str) or not payload["image_url"]:
            raise BadRequest(f"items[{index}] ({ref}): image_url is required")
        if not isinstance(payload.get("metadata", {}), dict):
            raise BadRequest(f"items[{index}] ({ref}): metadata must be an object")
        for dim in ("width", "height"):
            if dim in payload and (not isinstance(payload[dim], int) or payload[dim] <= 0):
                raise BadRequest(f"items[{index}] ({ref}): {dim} must be a positive integer")
    return value


def new_row(payload: dict, image: bytes | None, update: bool) -> Row:
    """A row of an append: its own copy of ``payload``, its image decoded as it arrives.

    The decode is the costly part of a row (a full JPEG decode), and it is done here, in the
    append's request, not when the row's job runs: a real server ingests an upload on its
    workers, and a job read is a cheap lookup. Run at the job's end, under the emulator's
    lock, the decodes of every job that came due in the same instant stalled the first
    request after it (0.5-0.7 s when 32 jobs of 10 rows ended together): a cost the
    real service does not have. The CPU spent per row is the same either way."""
    return Row(payload=copy.deepcopy(payload), image=image, update=update, decoded=decode_upload(image))


def decode_upload(image: bytes | None) -> tuple[int, int] | str | None:
    """An uploaded image's size, or why it cannot be decoded (None: no upload, a remote URL)."""
    if image is None:
        return None
    try:
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            return img.size
    except Exception as exc:  # pillow raises many types for bad data
        return str(exc)


def value_kind(value: Any) -> str | None:
    """The searchable type Nucleus gives a metadata value: number or string (else None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


@dataclass
class Row:
    """One item payload of an append, with its image bytes (None for remote URLs)."""

    payload: dict[str, Any]
    image: bytes | None
    update: bool
    decoded: tuple[int, int] | str | None = None  # decode_upload(image)


@dataclass
class Job:
    job_id: str
    dataset_id: str
    seq: int
    rows: list[Row]
    job_type: str = "uploadDatasetItems"
    status: str = "Queued"
    polls: int = 0
    errors: list[str] = field(default_factory=list)
    message: Any = ""
    counts: dict[str, int] = field(default_factory=lambda: {"new": 0, "updated": 0, "ignored": 0, "errors": 0})
    # A scripted end instead of running the rows: (status, message, apply rows?), and
    # error rows it adds (which name no item).
    forced: tuple[str, str, bool] | None = None
    forced_rows: list[str] = field(default_factory=list)
    # A job that is not an item upload (e.g. deleting annotations): run instead of the rows,
    # returns the job's error rows.
    action: Callable[[], list[str]] | None = None
    created: str = "2026-01-01T00:00:00.000Z"
    due: float | None = None  # with job_seconds: when the job runs (NucleusState.clock)

    @property
    def done(self) -> bool:
        return self.status not in ("Queued", "Running")

    def status_json(self) -> dict[str, Any]:
        total = max(1, len(self.rows))
        completed = total if self.done else 0
        return {"job_id": self.job_id, "status": self.status, "message": self.message,
                "job_progress": f"{completed / total:.2f}", "completed_steps": completed, "total_steps": total}

    def info_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "job_last_known_status": self.status, "job_type": self.job_type,
                "job_creation_time": self.created}


class NucleusState:
    """Datasets, items and jobs; every method is called under the emulator's lock."""

    def __init__(self, base_url: str = ""):
        self.base_url = base_url
        self.datasets: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, dict[str, Any]]] = {}  # dataset id -> reference_id -> item
        self.images: dict[str, bytes] = {}  # item id -> image bytes
        self.key_kinds: dict[str, dict[str, str]] = {}  # dataset id -> metadata key -> number|string
        self.jobs: dict[str, Job] = {}
        self.reject: dict[str, str] = {}  # reference_id -> row error message (test hook)
        self.forced: list[tuple[str, str, bool, list[str]]] = []  # scripted ends of the next jobs
        self.job_script: list[str] = ["Queued", "Running"]
        self.job_seconds: float | None = None  # a job's time Running (None: follow job_script)
        self.clock: Callable[[], float] = time.monotonic  # replaceable by tests
        self.due: list[tuple[float, int, Job]] = []  # heap of jobs waiting for their time
        self.fifo = True  # False: a job runs alone, older pending jobs of its dataset may run later
        self._seq = itertools.count(1)

    # -- datasets -----------------------------------------------------------------------------
    def add_dataset(self, name: str, *, is_scene: bool = False, use_privacy_mode: bool = False) -> str:
        dataset_id = new_id("ds")
        self.datasets[dataset_id] = {"id": dataset_id, "name": name, "is_public": False, "is_scene": is_scene,
                                     "use_privacy_mode": use_privacy_mode}
        self.items[dataset_id] = {}
        self.key_kinds[dataset_id] = {}
        return dataset_id

    def delete_dataset(self, dataset_id: str) -> None:
        for item in self.items.pop(dataset_id, {}).values():
            self.images.pop(item["id"], None)
        self.datasets.pop(dataset_id, None)
        self.key_kinds.pop(dataset_id, None)

    # -- rows ---------------------------------------------------------------------------------
    def row_error(self, dataset_id: str, row: Row) -> str | None:
        """Why the server refuses this row (a per-row job error), or None."""
        payload = row.payload
        ref = payload["reference_id"]
        if ref in self.reject:
            return self.reject[ref]
        metadata = payload.get("metadata") or {}
        kinds = self.key_kinds[dataset_id]
        for key, value in metadata.items():
            kind, known = value_kind(value), kinds.get(key)
            if kind and known and kind != known:
                return f"Metadata key {key!r} has {kind} values but {known} values elsewhere in the dataset"
        if self.datasets[dataset_id]["use_privacy_mode"] and not (payload.get("width") and payload.get("height")):
            return "Items in a privacy-mode dataset need width and height"
        if row.image is not None:
            size = row.decoded
            if not isinstance(size, tuple):
                return f"Could not decode image {payload['image_url']!r}: {size}"
            sent = (payload.get("width"), payload.get("height"))
            if sent != (None, None) and sent != size:
                return f"width/height {sent} do not match the image size {size}"
        elif not str(payload.get("image_url", "")).startswith(REMOTE_SCHEMES):
            return f"image_url {payload.get('image_url')!r} is neither uploaded nor a remote URL"
        return None

    def apply_row(self, dataset_id: str, row: Row) -> tuple[str, str | None]:
        """Apply one row; returns (new|updated|ignored|error, error message)."""
        error = self.row_error(dataset_id, row)
        if error:
            return "error", error
        payload = row.payload
        ref = payload["reference_id"]
        existing = self.items[dataset_id].get(ref)
        if existing is not None and not row.update:
            return "ignored", None
        item_id = existing["id"] if existing else new_id("di")
        metadata = json.loads(json.dumps(payload.get("metadata") or {}))
        width, height = payload.get("width"), payload.get("height")
        if row.image is not None:
            width, height = row.decoded
            self.images[item_id] = row.image
            url = f"{self.base_url}/images/{item_id}"
        else:
            self.images.pop(item_id, None)
            url = payload["image_url"]
        self.items[dataset_id][ref] = {
            "id": item_id, "dataset_item_id": item_id, "reference_id": ref, "metadata": metadata,
            "original_image_url": payload["image_url"], "image_url": url, "width": width, "height": height,
        }
        for key, value in metadata.items():
            if value_kind(value):
                self.key_kinds[dataset_id].setdefault(key, value_kind(value))
        return ("updated" if existing else "new"), None

    def run_rows(self, dataset_id: str, rows: list[Row]) -> tuple[dict[str, int], list[tuple[dict, str]]]:
        """Apply the rows of one append, each on its own (a refused row does not stop the
        others); returns the counts and the refused rows' payloads with their errors."""
        counts = {"new": 0, "updated": 0, "ignored": 0, "errors": 0}
        refused = []
        for row in rows:
            kind, error = self.apply_row(dataset_id, row)
            if error:
                counts["errors"] += 1
                refused.append(({k: v for k, v in row.payload.items() if k != "update"}, error))
            else:
                counts[kind] += 1
        return counts, refused

    # -- jobs ---------------------------------------------------------------------------------
    def unfinished(self, dataset_id: str | None, job_types: list[str] | None) -> list[Job]:
        """Jobs not Completed (``POST jobs/`` with ``show_completed: false``), oldest first."""
        return sorted((j for j in self.jobs.values() if j.status != "Completed"
                       and (dataset_id is None or j.dataset_id == dataset_id)
                       and (not job_types or j.job_type in job_types)), key=lambda j: j.seq)

    def new_job(self, dataset_id: str, rows: list[Row], job_type: str = "uploadDatasetItems", *,
                action: Callable[[], list[str]] | None = None) -> Job:
        job = Job(job_id=new_id("job"), dataset_id=dataset_id, seq=next(self._seq), rows=rows, job_type=job_type,
                  action=action)
        if self.forced:
            status, message, apply, rows = self.forced.pop(0)
            job.forced, job.forced_rows = (status, message, apply), rows
        self.jobs[job.job_id] = job
        if self.job_seconds is not None and self.job_seconds > 0:
            job.status, job.due = "Running", self.clock() + self.job_seconds
            heapq.heappush(self.due, (job.due, job.seq, job))
        elif self.job_script and self.job_seconds is None:
            job.status = self.job_script[0]
        else:
            self.run_job(job)
        return job

    def poll(self, job: Job) -> Job:
        """One ``GET job/{id}``: the job moves one step along ``job_script`` or runs (with
        ``job_seconds``: runs once it is due, else stays Running)."""
        if job.done:
            return job
        job.polls += 1
        if job.due is not None:
            if self.clock() >= job.due:
                self.run_job(job)
        elif job.polls <= len(self.job_script):
            job.status = self.job_script[job.polls - 1]
        else:
            self.run_job(job)
        return job

    def run_job(self, job: Job) -> None:
        """Run ``job`` after every older pending job of its dataset (FIFO, unless ``fifo`` is off)."""
        older = sorted((j for j in self.jobs.values() if j.dataset_id == job.dataset_id and not j.done
                        and j.seq < job.seq and self.fifo), key=lambda j: j.seq)
        for other in older + [job]:
            self._run(other)

    def run_due(self) -> None:
        """Run every job whose ``job_seconds`` are over (the server works unpolled too).

        In order of due time, which is creation order while ``job_seconds`` stays the same:
        no scan for older jobs per job (a bench makes thousands)."""
        now = self.clock()
        while self.due and self.due[0][0] <= now:
            job = heapq.heappop(self.due)[2]
            if not job.done and job.job_id in self.jobs:
                self._run(job)

    def run_all(self) -> None:
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if not job.done:
                self._run(job)

    def _run(self, job: Job) -> None:
        if job.dataset_id not in self.datasets:
            job.status, job.message = "Errored_User", f"Dataset {job.dataset_id} was deleted"
            return
        if job.forced is not None:
            status, message, apply = job.forced
            if apply and job.action is not None:
                job.errors = job.action()
            elif apply:
                job.counts, refused = self.run_rows(job.dataset_id, job.rows)
                job.errors = [job_error_row(payload, error) for payload, error in refused]
            job.errors += job.forced_rows
            job.status, job.message = status, message
            return
        if job.action is not None:
            job.errors = job.action()
            job.status, job.message = "Completed", {"errors": len(job.errors)}
            return
        job.counts, refused = self.run_rows(job.dataset_id, job.rows)
        job.errors = [job_error_row(payload, error) for payload, error in refused]
        job.status = "Completed"
        job.message = {"new_items": job.counts["new"], "updated_items": job.counts["updated"],
                       "ignored_items": job.counts["ignored"], "upload_errors": job.counts["errors"]}
