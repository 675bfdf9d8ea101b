"""Waiting for a Nucleus async job and turning its outcome into a syncd result.

An append to Nucleus (``POST dataset/{id}/append?async=1``) answers with a job; the item
exists only once the job has run. ``JobWaiter.wait`` polls ``GET job/{id}`` while the
status is ``Queued`` or ``Running`` (the official SDK stops polling on ``Queued``, which
would ack items that were never written), then ALWAYS reads ``GET job/{id}/errors``:
a ``Completed`` job can still carry per-row errors.

Outcome classification (``classify``):

- ``Completed`` without errors: success.
- ``Completed`` with errors, ``Errored_User``, ``Errored_Partial``, ``Errored`` (deprecated)
  and ``Cancelled``: ``PermanentError`` carrying the server's row messages (one item per
  job, so every row error is this item's).
- ``Errored_Server``, ``Errored_Hanging``, ``Retried`` and any status this module does not
  know: ``TransientError``; a re-send is safe because appends upsert by reference_id.

Job reads are idempotent GETs of work that is already committed, so a transient failure
of one poll is retried here a few times (honouring ``Retry-After``) instead of failing the
delivery, which would re-upload the image.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import PermanentError, TransientError

PENDING = frozenset({"Queued", "Running"})
PERMANENT = frozenset({"Errored_User", "Errored_Partial", "Errored", "Cancelled"})
TRANSIENT = frozenset({"Errored_Server", "Errored_Hanging", "Retried"})
FIRST_POLL_DELAY = 0.2  # seconds; doubled after every poll up to the configured interval
POLL_RETRIES = 4  # transient failures of one job read tolerated before giving up
MAX_POLL_RETRY_WAIT = 30.0  # seconds; a longer Retry-After ends the wait (the daemon backs off)
MAX_ERRORS_IN_MESSAGE = 3


class JobPending(TransientError):
    """The job was still Queued/Running when ``job_timeout`` ran out."""


@dataclass
class JobResult:
    """The final state of a job: its last status reply and its error rows (decoded)."""

    job_id: str
    status: str
    reply: dict[str, Any]
    errors: list[str] = field(default_factory=list)


def error_message(row: Any) -> str:
    """One job error row as a short sentence: the ``error`` field of a JSON-encoded
    record when there is one, else the row itself."""
    record = row
    if isinstance(row, str):
        try:
            record = json.loads(row)
        except ValueError:
            return row
    if isinstance(record, dict):
        message = record.get("error") or record.get("message")
        if message:
            return str(message)
    return row if isinstance(row, str) else json.dumps(row)


class JobWaiter:
    """Polls one job to its end. ``get(route, context)`` is the client's JSON GET
    (``NucleusClient.get_json``: it raises syncd errors); ``sleep`` and ``clock`` are
    parameters so tests need no patching."""

    def __init__(
        self,
        get: Callable[[str, str], Any],
        *,
        interval: float,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._get = get
        self.interval = interval
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock

    def wait(self, job_id: str, *, what: str) -> JobResult:
        """Poll ``job/{job_id}`` until it leaves Queued/Running, then read its errors.

        Raises TransientError (outcome unknown) when the job is still pending after
        ``timeout`` seconds or a job read keeps failing.
        """
        deadline = self._clock() + self.timeout
        delay = min(FIRST_POLL_DELAY, self.interval)
        while True:
            reply = self._read(f"job/{job_id}", f"{what}: reading job {job_id}")
            status = str(reply.get("status", "")) if isinstance(reply, dict) else ""
            if status not in PENDING:
                break
            if self._clock() + delay > deadline:
                raise JobPending(
                    f"{what}: job {job_id} is still {status} after {self.timeout:g}s; "
                    "the item is sent again later (re-sending is safe: Nucleus upserts by reference_id)"
                )
            self._sleep(delay)
            delay = min(delay * 2, self.interval)
        rows = self._read(f"job/{job_id}/errors", f"{what}: reading the errors of job {job_id}")
        errors = [error_message(row) for row in rows] if isinstance(rows, list) else []
        return JobResult(job_id=job_id, status=status, reply=reply, errors=errors)

    def _read(self, route: str, context: str) -> Any:
        for attempt in range(POLL_RETRIES + 1):
            try:
                return self._get(route, context)
            except TransientError as exc:
                wait = exc.retry_after if exc.retry_after is not None else min(self.interval, 2.0 ** attempt)
                if attempt == POLL_RETRIES or wait > MAX_POLL_RETRY_WAIT:
                    raise
                self._sleep(wait)
        raise AssertionError("unreachable")


class ItemJobs:
    """The jobs of each item: a job this process stopped waiting for (timeout, failing
    polls) may still run later and would then write an older version over a newer one, so
    it is remembered per item key and waited for before the item's next request.
    Thread-safe (items are delivered from several workers)."""

    def __init__(self, waiter: JobWaiter):
        self.waiter = waiter
        self._lock = threading.Lock()
        self._unfinished: dict[str, str] = {}  # item key -> id of its last job not seen to end

    def wait(self, key: str, job_id: str, what: str) -> JobResult:
        """Wait for a job about item ``key``; if this raises, the job is remembered and
        ``finish_previous`` waits for it before the item's next request."""
        with self._lock:
            self._unfinished[key] = job_id
        result = self.waiter.wait(job_id, what=what)
        with self._lock:
            self._unfinished.pop(key, None)
        return result

    def finish_previous(self, key: str, what: str) -> None:
        """Wait for the item's remembered job, if any. Raises JobPending when it is still
        queued (appending now could be overtaken by it); a job that cannot be read (gone,
        server trouble) is forgotten: there is nothing to wait for."""
        with self._lock:
            job_id = self._unfinished.get(key)
        if job_id is None:
            return
        try:
            self.waiter.wait(job_id, what=f"{what} (an earlier upload)")
        except JobPending:
            raise
        except TransientError:
            pass
        with self._lock:
            if self._unfinished.get(key) == job_id:
                del self._unfinished[key]


def classify(result: JobResult, *, what: str) -> None:
    """Return when the job wrote the item; raise the matching syncd error otherwise."""
    shown = "; ".join(result.errors[:MAX_ERRORS_IN_MESSAGE])
    if len(result.errors) > MAX_ERRORS_IN_MESSAGE:
        shown += f" (and {len(result.errors) - MAX_ERRORS_IN_MESSAGE} more)"
    message = result.reply.get("message") if isinstance(result.reply, dict) else None
    detail = shown or (json.dumps(message) if isinstance(message, (dict, list)) else str(message or "no message"))
    status = result.status
    if status == "Completed":
        if result.errors:
            raise PermanentError(
                f"{what}: Nucleus rejected the item (job {result.job_id} completed with errors): {shown}")
        return
    if status in PERMANENT:
        raise PermanentError(f"{what}: Nucleus job {result.job_id} ended {status}: {detail}")
    if status in TRANSIENT:
        raise TransientError(f"{what}: Nucleus job {result.job_id} ended {status}: {detail}")
    raise TransientError(f"{what}: Nucleus job {result.job_id} has an unknown status {status!r}: {detail}")
