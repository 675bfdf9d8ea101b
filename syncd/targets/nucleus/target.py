"""The Scale Nucleus target: every item becomes one dataset item, keyed by reference_id.

Wire protocol (docs/platforms/nucleus.md, from the official ``scale-nucleus`` SDK): HTTP
Basic auth with the API key as user name and an empty password (``client``); up to 10 items
and their images in one multipart ``POST dataset/{id}/append?async=1``, exactly as the SDK
sends a batch of local files (``append``). The reply is an async job: the daemon's engine
reads it with ``job_state`` and settles its items with ``finish_job`` (``jobs`` pins the
job's error rows on items); ``deliver`` does all of it for one item, waiting in place.

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
- Because appends upsert, a job that runs late writes an older version over a newer one:
  ``ordering`` makes sure no item is appended while an earlier job that may write it
  could still run (in this process: by item; after a restart, for an item whose outcome
  was unknown at the start: the dataset's jobs from before the start are waited for first).

``upload.metadata`` is sent unchanged (any JSON). Labels and masks become ground-truth
annotations once the append's job has ended (``_deliver_annotations``, see
``annotations`` for how they are replaced, never duplicated); the receipt keeps
``annotations_sha256`` so that unchanged labels are not sent again. When writing them
fails transiently after the job wrote the item, the process remembers that version as
written (``_written_at``): its next attempt writes only the annotations (probing first, as
every attempt does), without a new append and job, unless the item is appended again
meanwhile, the annotations found it missing (``ItemMissing``) or the process restarted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator

from syncd.errors import FatalTargetError, PermanentError, SendAlone, SyncdError, TransientError
from syncd.targets.base import ItemResult, JobState, Receipt, Submitted, Target, TargetSettings, Upload
from syncd.targets.nucleus import payload
from syncd.targets.nucleus.annotations import AnnotationWriter, ItemMissing, Plan, plan
from syncd.targets.nucleus.append import MAX_FILES, item_json, multipart
from syncd.targets.nucleus.client import NucleusClient
from syncd.targets.nucleus.jobs import PENDING, JobResult, JobWaiter, counted, fresh_items, job_outcomes, status_of
from syncd.targets.nucleus.ordering import JobBook, StartupJobs
from syncd.targets.nucleus.payload import image_url

MAX_REMEMBERED = 10_000  # versions written whose annotations are still to write (oldest forgotten)


class NucleusSettings(TargetSettings):
    platform: str = "nucleus"
    dataset_id: str = Field(min_length=1, description='id of the Nucleus dataset, e.g. "ds_bwkezj6g5c4g05gqp1eg"')
    api_key_env: str = Field("NUCLEUS_API_KEY", description="environment variable holding the Scale API key")
    base_url: str = Field("https://api.scale.com/v1/nucleus", description="Nucleus API base URL")
    # The official SDK allows 120 s per request; an image upload over a slow uplink needs it.
    timeout: float = Field(120.0, gt=0, description="seconds for each HTTP request")
    job_poll_interval: float = Field(2.0, gt=0, description="longest pause between polls of an upload job")
    job_timeout: float = Field(600.0, gt=0, description="seconds to wait for an upload job before retrying later")
    max_jobs: int = Field(128, ge=1, le=1000, description="upload jobs outstanding at once (more batches wait)")
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


class NucleusTarget(Target):
    """Delivers items to one Nucleus dataset; see the module docstring."""

    platform = "nucleus"
    Settings = NucleusSettings
    create_only = False  # appends upsert by reference_id
    max_batch = MAX_FILES  # local files per append, as the SDK enforces
    has_jobs = True
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
        # key -> (version, plan) made when the item was appended, for finish_job (no masks:
        # their PNG would sit in memory while the job runs; they are converted again).
        self._plans: dict[str, tuple[str, Plan]] = {}
        # key -> (version, job id): written by that job of this process, its annotations not (a
        # transient failure): the next attempt at that version writes only the annotations.
        self._written_at: dict[str, tuple[str, str | None]] = {}
        self.book = JobBook()
        self.startup = StartupJobs(settings.dataset_id, list_jobs=self._list_jobs, read_job=self._read_startup_job,
                                   hold=settings.job_timeout, interval=settings.job_poll_interval)
        self.waiter = JobWaiter(self.client.get_json, interval=settings.job_poll_interval,
                                timeout=settings.job_timeout)
        self.annotations = AnnotationWriter(self.client, self._wait_job, settings.taxonomy_name)

    def close(self) -> None:
        """Close the client's sessions (the target can still be used afterwards)."""
        self.client.close()

    def _what(self, key: str) -> str:
        return f"{self.name}: item {key!r}"

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

    # -- deliver a batch ----------------------------------------------------------------------
    def deliver_batch(self, uploads: Sequence[Upload]) -> list[ItemResult]:
        """One multipart append carrying every upload that can go (``append``), answering
        ``Submitted(job_id)`` for each (or a ``Receipt`` when the server answered synchronously).

        Per item, without sending it: ``PermanentError`` for metadata JSON cannot carry (NaN)
        or an empty key, ``ItemError`` for a mask that cannot be converted, and
        ``TransientError`` (retry later, nothing sent) while an earlier job that may write the
        item still runs: one of this process's, or, for an item whose outcome was unknown at
        the start (``outcome_unknown_at_start``), the dataset's jobs from before the start
        (``ordering.StartupJobs``). The request as a whole: raises ``TransientError``/``FatalTargetError``
        when every upload was in it (else each sent item gets the error); a refusal (4xx) is
        that item's ``PermanentError`` in a request of one, ``SendAlone`` for each otherwise.
        An upload of a version a job of this process wrote, whose annotations failed since
        (``_written_at``), is not appended: its annotations are written, and its result is
        a ``Receipt`` or their error."""
        results: list[ItemResult | None] = [None] * len(uploads)
        # Only an item whose outcome was unknown at the start can be in a job of an earlier process.
        waiting = self.startup.wait() if any(u.outcome_unknown_at_start for u in uploads) else None
        items: list[str] = [""] * len(uploads)
        for i, upload in enumerate(uploads):
            if waiting and upload.outcome_unknown_at_start:
                results[i] = TransientError(f"{self._what(upload.key)}: {waiting}",
                                            retry_after=self.settings.job_poll_interval, outcome_unknown=False)
                continue
            try:
                items[i] = self._prepare(upload)
            except SyncdError as exc:
                results[i] = exc
                continue
            with self._lock:
                written = self._written_at.get(upload.key)
                again = written is not None and written[0] == upload.version
                cached = self._plans.pop(upload.key, None) if again else None
            if again:  # a job of this process wrote this version: only its annotations are left
                results[i] = self._annotated(upload, written[1], cached, fresh=False)
        send = [i for i, result in enumerate(results) if result is None]
        if not send:
            return results  # type: ignore[return-value]
        batch = [uploads[i] for i in send]
        with self._lock:
            for upload in batch:
                self._written_at.pop(upload.key, None)
        try:
            job_id, counts = self._append(batch, [items[i] for i in send])
        except (TransientError, FatalTargetError) as exc:
            if len(send) == len(uploads):
                raise
            for i in send:
                results[i] = exc
            return results  # type: ignore[return-value]
        except PermanentError as exc:  # refused as a whole: which item is to blame is unknown
            for i in send:
                results[i] = exc if len(send) == 1 else SendAlone(
                    f"{self._what(uploads[i].key)}: the append of {len(send)} items was refused ({exc}); "
                    "the item is sent again by itself")
            return results  # type: ignore[return-value]
        if job_id is not None:
            self.book.submitted(job_id, [u.key for u in batch])
            self.startup.own(job_id)
            for i in send:
                results[i] = Submitted(job_id)
        else:
            rows = counts.get("error_payload") or ([counts] if counts.get("upload_errors") else [])
            result = JobResult(job_id="(synchronous)", status="Completed", reply={"message": counts}, rows=list(rows))
            for i, outcome in zip(send, self._settle(result, batch, job_id=None, size=len(batch))):
                results[i] = outcome
        return results  # type: ignore[return-value]

    def _prepare(self, upload: Upload) -> str:
        """Check one upload before it is sent and plan its annotations; its item JSON."""
        what = self._what(upload.key)
        if not upload.key:
            raise PermanentError(f"{what}: an empty item key cannot be a Nucleus reference_id")
        earlier = self.book.earlier(upload.key)
        if earlier is not None:
            state = self._read_job(earlier, f"{what}: reading its earlier upload job {earlier}")
            if state.status != "running":
                self._ended(earlier)  # nobody will finish it: the engine gave up on it
            else:
                raise TransientError(
                    f"{what}: an earlier upload of this item (job {earlier}) is still "
                    f"{state.reply.get('status')} on Nucleus; the item is sent once that job has ended "
                    "(else the older version could be written last)",
                    retry_after=self.settings.job_poll_interval, outcome_unknown=False)
        with self._lock:
            unsure = upload.key in self._unsure
        todo = plan(upload, self.settings.taxonomy_name, unsure=unsure)  # a bad mask fails here, before sending
        try:
            item = item_json(upload)
        except (ValueError, TypeError) as exc:
            raise PermanentError(f"{what}: the metadata is not valid JSON for Nucleus: {exc}") from None
        if todo.converted is None or todo.converted.mask_png is None:
            with self._lock:
                self._plans[upload.key] = (upload.version, todo)
        return item

    def _append(self, uploads: Sequence[Upload], items: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
        """Send the multipart append; return the job id, or None and the counts when the
        server answered synchronously (as Nucleus did before SDK 0.19)."""
        body, content_type = multipart(uploads, items)
        keys = ", ".join(repr(u.key) for u in uploads[:3])
        keys += f" and {len(uploads) - 3} more" if len(uploads) > 3 else ""
        context = f"appending {keys} to dataset {self.settings.dataset_id}"
        response = self.client.request("POST", f"{self.client.dataset_route}/append", params={"async": "1"},
                                       data=body, headers={"Content-Type": content_type}, context=context)
        if response.status_code == 404:
            self.client.not_found(response, context)  # raises when the dataset is gone
            raise TransientError(f"{self.client.context(context)}: Nucleus answered 404 although the dataset "
                                 "exists; retrying later", outcome_unknown=False)
        self.client.raise_for_status(response, context)
        reply = self.client.json(response, context)
        if isinstance(reply, dict) and reply.get("job_id"):
            return str(reply["job_id"]), {}
        if isinstance(reply, dict) and "upload_errors" in reply:  # synchronous count reply
            return None, reply
        raise TransientError(f"{self.client.context(context)}: the reply has neither a job id nor counts: "
                             f"{str(reply)[:200]}")

    # -- jobs ---------------------------------------------------------------------------------
    def job_state(self, job_id: str) -> JobState:
        """``GET job/{id}``: running while Queued/Running, done otherwise, lost on 404."""
        return self._read_job(job_id, f"{self.name}: reading job {job_id}")

    def _read_startup_job(self, job_id: str) -> str:
        return self._read_job(job_id, f"{self.name}: reading job {job_id} (from before the start)").status

    def _list_jobs(self, body: dict) -> Any:
        context = "listing the dataset's unfinished jobs"
        response = self.client.request("POST", "jobs/", json=body, context=context)
        self.client.raise_for_status(response, context)
        return self.client.json(response, context)

    def _read_job(self, job_id: str, context: str) -> JobState:
        response = self.client.request("GET", f"job/{quote(job_id, safe='')}", context=context)
        if response.status_code == 404:
            self._ended(job_id)  # whatever it was, it will write nothing now
            return JobState("lost", {})
        try:
            self.client.raise_for_status(response, context)
        except PermanentError as exc:  # a job read refused: try again later, the append is committed
            raise TransientError(str(exc), outcome_unknown=False) from None
        reply = self.client.json(response, context)
        reply = reply if isinstance(reply, dict) else {}
        if status_of(reply) in PENDING:
            return JobState("running", reply)
        # It writes nothing more; its keys stay booked until finish_job (it needs them).
        self.startup.ended(job_id)
        return JobState("done", reply)

    def _ended(self, job_id: str) -> None:
        self.book.ended(job_id)
        self.startup.ended(job_id)

    def finish_job(self, job_id: str, state: JobState, uploads: Sequence[Upload]) -> list[ItemResult]:
        """Read ``job/{id}/errors``, pin them on items (``jobs.job_outcomes``), then write the
        labels and masks of the items that were written and need it. ``uploads`` must carry
        the labels, mask and class map of the versions sent (``image`` may be empty).
        Raises TransientError when the errors cannot be read now."""
        return self._settle_job(job_id, state.reply, uploads, read=self.client.get_json)

    def _settle_job(self, job_id: str, reply: dict, uploads: Sequence[Upload],
                    read: Callable[[str, str], Any]) -> list[ItemResult]:
        job_keys = self.book.keys_of(job_id)  # None after a restart
        rows = read(f"job/{quote(job_id, safe='')}/errors", f"reading the errors of job {job_id}")
        self._ended(job_id)
        result = JobResult(job_id=job_id, status=status_of(reply), reply=reply,
                           rows=rows if isinstance(rows, list) else [])
        size = len(job_keys) if job_keys is not None else counted(reply.get("message"))
        return self._settle(result, uploads, job_id=job_id, size=size, others=job_keys or ())

    def _settle(self, result: JobResult, uploads: Sequence[Upload], *, job_id: str | None, size: int | None,
                others: Sequence[str] = ()) -> list[ItemResult]:
        """Per item of an ended job (or a synchronous reply, ``job_id`` None) of ``size``
        items: its error, or its annotations written and its receipt."""
        outcomes = job_outcomes(result, [u.key for u in uploads], [image_url(u) for u in uploads],
                                [self._what(u.key) for u in uploads], size=size, others=others)
        fresh = fresh_items(result.reply.get("message"), sum(o is None for o in outcomes))
        results: list[ItemResult] = []
        for upload, outcome in zip(uploads, outcomes):
            with self._lock:
                cached = self._plans.pop(upload.key, None)
            results.append(outcome if outcome is not None else self._annotated(upload, job_id, cached, fresh=fresh))
        return results

    def _annotated(self, upload: Upload, job_id: str | None, cached: tuple[str, Plan] | None, *,
                   fresh: bool) -> ItemResult:
        """``_written``, or its error; after a transient one the version is remembered as
        written (``_written_at``), unless the item was found missing."""
        try:
            receipt = self._written(upload, job_id, cached, fresh=fresh)
        except SyncdError as exc:
            with self._lock:
                if isinstance(exc, TransientError) and not isinstance(exc, ItemMissing):
                    self._written_at[upload.key] = (upload.version, job_id)
                    if len(self._written_at) > MAX_REMEMBERED:
                        del self._written_at[next(iter(self._written_at))]
                else:
                    self._written_at.pop(upload.key, None)
            return exc
        with self._lock:
            self._written_at.pop(upload.key, None)
        return receipt

    def _written(self, upload: Upload, job_id: str | None, cached: tuple[str, Plan] | None, *,
                 fresh: bool) -> Receipt:
        """The item was written: its labels and mask, then its receipt."""
        what = self._what(upload.key)
        if cached is not None and cached[0] == upload.version:
            todo = cached[1]
        else:
            with self._lock:
                unsure = upload.key in self._unsure
            todo = plan(upload, self.settings.taxonomy_name, unsure=unsure)
        extra = {"version": upload.version, "image_sha256": upload.image_sha256,
                 "dataset_id": self.settings.dataset_id, "job_id": job_id}
        extra.update(self._deliver_annotations(upload, todo, what, fresh=fresh))
        return Receipt(remote_id=upload.key, extra=extra)

    def _wait_job(self, key: str, job_id: str, what: str) -> JobResult:
        """Wait in place for a job that writes ``key`` (an annotation deletion); while it may
        still run (timeout, failing reads), the item is not appended again."""
        self.book.submitted(job_id, [key])
        self.startup.own(job_id)
        result = self.waiter.wait(job_id, what=what)
        self.book.ended(job_id)
        return result

    # -- one item -----------------------------------------------------------------------------
    def deliver(self, upload: Upload) -> Receipt:
        """``deliver_batch`` of one, waiting in place for its job (polls after 0.2 s, doubling
        up to ``job_poll_interval``; ``TransientError`` after ``job_timeout``; failed reads
        retried in place), then ``finish_job``."""
        result: ItemResult = self.deliver_batch([upload])[0]
        if isinstance(result, Submitted):
            reply = self.waiter.wait_status(result.job_id, what=self._what(upload.key))
            result = self._settle_job(result.job_id, reply, [upload], read=self.waiter.read)[0]
        if isinstance(result, SyncdError):
            raise result
        assert isinstance(result, Receipt)
        return result

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
