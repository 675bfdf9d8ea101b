"""Nucleus async jobs: reading them, pinning their errors on items, and what each end means.

An append to Nucleus (``POST dataset/{id}/append?async=1``) answers with a job; its items
exist only once the job has run. A job is read with ``GET job/{id}`` (``Queued``/``Running``:
still running; the official SDK stops waiting on ``Queued``, which would ack items that were
never written) and, once it ended, ``GET job/{id}/errors`` is ALWAYS read: a ``Completed``
job can still carry per-row errors.

Error rows (``pin_errors``) are strings, each a JSON-encoded record: the SDK documents
``{"annotation": {..., "referenceId": "bad_ref_id", ...}, "error": "Item with id bad_ref_id
does not exist."}`` and its integration tests find a refused item's URL quoted in the rows.
A row is pinned on the item whose reference_id (``referenceId``/``reference_id``, at any depth
of the record) or image_url it names; failing that, on the one item whose key appears in
the row's text as a whole token. A row that names no item (or several) is unattributed.

Outcome of an ended job, per item (``job_outcomes``; ``status`` is the job's):

- ``Completed``: items with a pinned row are refused (``PermanentError`` with Nucleus'
  message), the others are written. An unattributed row: every item without a pinned row
  is sent again alone (``SendAlone``), so the bad one fails by itself.
- ``Errored_User``, ``Errored_Partial``, ``Errored`` (deprecated), ``Cancelled``: pinned
  items are refused; the others are sent again alone (``SendAlone``: they may or may not
  have been written, a re-send upserts).
- ``Errored_Server``, ``Errored_Hanging``, ``Retried`` and any status not known here:
  ``TransientError`` for every item (a re-send is safe: appends upsert by reference_id).
- A job of ONE item: every row and every refusal is that item's (never ``SendAlone``).
  Only when the job is known to carry one item: after a restart the target does not know
  how many it carried (a job's items whose files changed since are not settled with it), and
  a lone item of it with an error naming nothing is sent alone first.

``JobWaiter`` waits for one job in the calling thread (``NucleusTarget.deliver`` and the
annotation writer's deletion jobs); the daemon's engine polls jobs itself through
``NucleusTarget.job_state``. The ordering guarantee is ``ordering.JobBook``'s.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import PermanentError, SendAlone, SyncdError, TransientError

PENDING = frozenset({"Queued", "Running"})
PERMANENT = frozenset({"Errored_User", "Errored_Partial", "Errored", "Cancelled"})
TRANSIENT = frozenset({"Errored_Server", "Errored_Hanging", "Retried"})
FIRST_POLL_DELAY = 0.2  # seconds; doubled after every poll up to the configured interval
POLL_RETRIES = 4  # transient failures of one job read tolerated by JobWaiter before giving up
MAX_POLL_RETRY_WAIT = 30.0  # seconds; a longer Retry-After ends the wait (the daemon backs off)
MAX_ERRORS_IN_MESSAGE = 3
REF_FIELDS = ("referenceId", "reference_id", "refId", "ref_id")
URL_FIELDS = ("imageUrl", "image_url", "imageLocation", "image_location")


class JobPending(TransientError):
    """The job was still Queued/Running when ``job_timeout`` ran out."""


@dataclass
class JobResult:
    """The final state of a job: its last status reply and its error rows (raw)."""

    job_id: str
    status: str
    reply: dict[str, Any]
    rows: list[Any] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [error_message(row) for row in self.rows]


def status_of(reply: Any) -> str:
    return str(reply.get("status", "")) if isinstance(reply, dict) else ""


def decoded(row: Any) -> Any:
    """A row's JSON record, or the row itself when it is not JSON."""
    if isinstance(row, str):
        try:
            return json.loads(row)
        except ValueError:
            return row
    return row


def error_message(row: Any) -> str:
    """One job error row as a short sentence: the ``error`` field of a JSON-encoded
    record when there is one, else the row itself."""
    record = decoded(row)
    if isinstance(record, dict):
        message = record.get("error") or record.get("message")
        if message:
            return str(message)
    return row if isinstance(row, str) else json.dumps(row)


def _named(record: Any, fields: tuple[str, ...], depth: int = 0) -> set[str]:
    """Every string value of ``fields`` in a decoded record (nested up to 3 levels)."""
    found: set[str] = set()
    if isinstance(record, dict) and depth <= 3:
        for name, value in record.items():
            if name in fields and isinstance(value, str):
                found.add(value)
            elif isinstance(value, (dict, list)):
                found |= _named(value, fields, depth + 1)
    elif isinstance(record, list) and depth <= 3:
        for value in record:
            found |= _named(value, fields, depth + 1)
    return found


def pin_errors(rows: Sequence[Any], keys: Sequence[str],
               urls: Sequence[str]) -> tuple[dict[int, list[str]], list[str]]:
    """Attribute job error rows to items (by position in ``keys``; ``urls`` are their
    image_url values): returns (position -> messages, messages of unattributed rows)."""
    by_key = {key: i for i, key in enumerate(keys)}
    by_url = {url: i for i, url in enumerate(urls)}
    pinned: dict[int, list[str]] = {}
    loose: list[str] = []
    for row in rows:
        record = decoded(row)
        hits = {by_key[r] for r in _named(record, REF_FIELDS) if r in by_key}
        hits |= {by_url[u] for u in _named(record, URL_FIELDS) if u in by_url}
        if not hits:
            text = row if isinstance(row, str) else json.dumps(row)
            hits = {i for key, i in by_key.items() if _mentions(text, key)}
        if len(hits) == 1:
            pinned.setdefault(hits.pop(), []).append(error_message(row))
        else:
            loose.append(error_message(row))
    return pinned, loose


def _mentions(text: str, key: str) -> bool:
    """``key`` occurs in ``text`` as a whole token (``a/1`` is not in ``a/10``)."""
    return re.search(rf"(?<![\w/.-]){re.escape(key)}(?![\w/.-])", text) is not None


def _shown(messages: list[str]) -> str:
    shown = "; ".join(messages[:MAX_ERRORS_IN_MESSAGE])
    if len(messages) > MAX_ERRORS_IN_MESSAGE:
        shown += f" (and {len(messages) - MAX_ERRORS_IN_MESSAGE} more)"
    return shown


def job_outcomes(result: JobResult, keys: Sequence[str], urls: Sequence[str], whats: Sequence[str], *,
                 size: int | None, others: Sequence[str] = ()) -> list[SyncdError | None]:
    """Per item of an ended job (see the module docstring): None (written) or the error
    instance for it. ``whats`` prefix the messages (``"target: item 'key'"``).

    ``size`` is how many items the job carried (None: unknown, e.g. after a restart); only a
    job known to carry one item has every row pinned on it. ``others`` are keys the job also
    carried that are not settled here (their files changed since): rows naming them are
    theirs, not unattributed."""
    job, status = result.job_id, result.status
    if size == 1 and len(keys) == 1:  # every row is this item's
        pinned, loose = ({0: result.errors} if result.rows else {}), []
    else:
        everyone = list(keys) + [key for key in others if key not in keys]
        pinned, loose = pin_errors(result.rows, everyone, list(urls) + [""] * (len(everyone) - len(keys)))
        pinned = {i: messages for i, messages in pinned.items() if i < len(keys)}
    alone = size == 1 and len(keys) == 1
    message = result.reply.get("message") if isinstance(result.reply, dict) else None
    detail = _shown(loose) or (json.dumps(message) if isinstance(message, (dict, list))
                               else str(message or "no message"))
    outcomes: list[SyncdError | None] = []
    for i, what in enumerate(whats):
        if status != "Completed" and status not in PERMANENT:
            known = "ended" if status in TRANSIENT else "has an unknown status"
            shown = status if status in TRANSIENT else repr(status)
            outcomes.append(TransientError(f"{what}: Nucleus job {job} {known} {shown}: {detail}"))
        elif i in pinned:
            ended = "completed with errors" if status == "Completed" else f"ended {status}"
            outcomes.append(PermanentError(
                f"{what}: Nucleus rejected the item (job {job} {ended}): {_shown(pinned[i])}"))
        elif status == "Completed" and not loose:
            outcomes.append(None)
        elif alone:
            outcomes.append(PermanentError(f"{what}: Nucleus job {job} ended {status}: {detail}"))
        else:
            ended = "completed with an error naming no item" if status == "Completed" else f"ended {status}"
            outcomes.append(SendAlone(f"{what}: Nucleus job {job} of {size or 'several'} items {ended} ({detail}); "
                                      "the item is sent again by itself"))
    return outcomes


def fresh_items(counts: Any, written: int) -> bool:
    """Did the job create every item it wrote (its ``message`` counts, or a synchronous
    reply's)? False when unknown: the shape of a job's message is not documented."""
    return (isinstance(counts, dict) and written > 0 and counts.get("new_items") == written
            and not counts.get("updated_items") and not counts.get("ignored_items"))


def counted(counts: Any) -> int | None:
    """How many items a finished job's ``message`` counts (None when it does not: its shape
    is not documented)."""
    if not isinstance(counts, dict):
        return None
    values = [counts.get(k) for k in ("new_items", "updated_items", "ignored_items", "upload_errors")]
    return sum(values) if all(isinstance(v, int) for v in values) else None


def classify(result: JobResult, *, what: str) -> None:
    """A job of one item (or an annotation deletion): return when it succeeded, raise the
    matching syncd error otherwise."""
    outcome = job_outcomes(result, [""], [""], [what], size=1)[0]
    if outcome is not None:
        raise outcome


class JobWaiter:
    """Polls one job to its end in the calling thread. ``get(route, context)`` is the
    client's JSON GET (``NucleusClient.get_json``: it raises syncd errors); ``sleep`` and
    ``clock`` are parameters so tests need no patching."""

    def __init__(self, get: Callable[[str, str], Any], *, interval: float, timeout: float,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self._get = get
        self.interval = interval
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock

    def wait_status(self, job_id: str, *, what: str) -> dict[str, Any]:
        """Poll ``job/{job_id}`` until it leaves Queued/Running; return its last reply.
        Raises JobPending after ``timeout`` seconds, TransientError when reads keep failing."""
        deadline = self._clock() + self.timeout
        delay = min(FIRST_POLL_DELAY, self.interval)
        while True:
            reply = self.read(f"job/{job_id}", f"{what}: reading job {job_id}")
            status = status_of(reply)
            if status not in PENDING:
                return reply if isinstance(reply, dict) else {}
            if self._clock() + delay > deadline:
                raise JobPending(
                    f"{what}: job {job_id} is still {status} after {self.timeout:g}s; "
                    "the item is sent again later (re-sending is safe: Nucleus upserts by reference_id)"
                )
            self._sleep(delay)
            delay = min(delay * 2, self.interval)

    def wait(self, job_id: str, *, what: str) -> JobResult:
        """``wait_status``, then the job's error rows."""
        reply = self.wait_status(job_id, what=what)
        rows = self.read(f"job/{job_id}/errors", f"{what}: reading the errors of job {job_id}")
        return JobResult(job_id=job_id, status=status_of(reply), reply=reply,
                         rows=rows if isinstance(rows, list) else [])

    def read(self, route: str, context: str) -> Any:
        """One GET, retried in place on transient failures (job reads are idempotent)."""
        for attempt in range(POLL_RETRIES + 1):
            try:
                return self._get(route, context)
            except TransientError as exc:
                wait = exc.retry_after if exc.retry_after is not None else min(self.interval, 2.0 ** attempt)
                if attempt == POLL_RETRIES or wait > MAX_POLL_RETRY_WAIT:
                    raise
                self._sleep(wait)
        raise AssertionError("unreachable")
