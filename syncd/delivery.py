"""The upload workers' side of a delivery: prepare a batch, send it, read jobs; classify.

These functions run in a target's worker threads and never touch the journal: the
coordinator (syncd.dispatch) records the intents before it hands a batch over and records
the returned ``Outcome``s afterwards, one per item.

- ``prepare``: each item's files are stat'ed; content that settling read and cached at the
  same stat signature is sent after its bytes are hashed again and found to be the
  journaled version; otherwise the files are read and hashed again (``stale`` when they are
  another version now: the item settles again; no second decode when they are not).
- ``send_batch``: recovery first (after an unknown outcome a create-only target looks each
  item up, and an item already holding this version is adopted without sending), then one
  ``deliver_batch`` for the rest; each item gets its own outcome.
- ``poll_jobs`` / ``finish_job``: one read of each due job; the end of a job, per item.

Outcome kinds (what the coordinator does with them): ``acked`` record the receipt;
``submitted`` a remote job holds the item (poll it); ``transient`` retry later (a
``throttled`` one slows the target instead of backing the item off); ``alone`` send it again
by itself; ``permanent``/``invalid`` failed until it changes; ``stale`` settle again;
``fatal`` pause the target; ``held`` not sent, the operator paused the target meanwhile.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from syncd import limits
from syncd.errors import FatalTargetError, ItemError, LocalError, PermanentError, SendAlone, SyncdError, TransientError
from syncd.items.content import Changed, ContentCache, read_item, stat_signature, to_upload, verified
from syncd.items.convention import ItemFiles
from syncd.journal.store import DueDelivery
from syncd.targets.base import JobState, Receipt, Submitted, Target, Upload

log = logging.getLogger("syncd.delivery")

ACKED = "acked"  # record the receipt
SUBMITTED = "submitted"  # a remote job holds it: poll the job
TRANSIENT = "transient"  # back off and retry (throttled: the target slows instead)
ALONE = "alone"  # send it again by itself (its batch failed without naming an item)
PERMANENT = "permanent"  # the platform refused the item: failed until it changes
INVALID = "invalid"  # the local files are bad: failed until they change
STALE = "stale"  # files changed since the intent: settle again
FATAL = "fatal"  # the target cannot work: pause it
HELD = "held"  # not sent: the operator paused the target before the batch left (due again, no attempt)

MAX_RETRY_AFTER = 3600.0


@dataclass
class Outcome:
    """What one attempt did to one delivery (``due``)."""

    due: DueDelivery
    kind: str
    receipt: Receipt | None = None
    message: str = ""
    retry_after: float | None = None
    outcome_unknown: bool = False
    adopted: bool = False
    throttled: bool = False
    job_id: str | None = None  # submitted: the job holding it
    upload: Upload | None = None  # submitted: what was sent, without the image bytes (for finish_job)
    bytes: int = 0  # image and mask bytes this attempt carried (0: nothing was sent)
    duration_ms: float | None = None  # how long the request carrying it took (None: no request)

    def log_extra(self) -> dict[str, Any]:
        """The structured fields of this outcome's log line (``extra=``; JSON logs show them):
        key, target, outcome, attempt (1 for the first), duration_ms, bytes."""
        due = self.due
        return {"fields": {"key": due.key, "target": due.target, "outcome": self.kind, "attempt": due.attempts + 1,
                           "duration_ms": self.duration_ms, "bytes": self.bytes}}


def backoff_delay(attempts: int, retry_after: float | None, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter, never sooner than the server's ``Retry-After``.

    The server's hint is honoured even beyond ``cap`` (up to an hour): it knows its limits.
    """
    ceiling = min(cap, base * (2 ** min(max(0, attempts - 1), 30)))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def prepare(due: DueDelivery, files: ItemFiles | None, *, cache: ContentCache | None,
            read_options: dict[str, Any], files_for: Callable[[DueDelivery], ItemFiles | None] | None = None
            ) -> Upload | Outcome:
    """The ``Upload`` of exactly the journaled version of ``due``, or its outcome (stale, invalid).

    ``files``: the item's files, or None to take those its content was cached with (else
    ``files_for(due)``: from the paths the journal has)."""
    content = None
    entry = cache.claim(due.item_id) if cache is not None else None
    if entry is not None and entry[1].version == due.version:
        files = files or entry[2]
        try:
            sig = stat_signature(files)[0] if files is not None else None
        except (OSError, ItemError):
            sig = None  # the read below says what is wrong
        if sig == entry[0]:
            content = entry[1]
            if not verified(content, due.version):
                log.warning("cached content of %s does not hash to version %s: reading it again", due.key, due.version)
                content = None
    if files is None and files_for is not None:
        files = files_for(due)
    if files is None:
        return Outcome(due, INVALID, message=f"{due.key}: its image is gone")
    if content is None:
        try:
            content = read_item(files, **read_options, expect_version=due.version)
        except Changed:
            return Outcome(due, STALE, message="the files changed since the delivery was planned")
        except ItemError as exc:
            return Outcome(due, INVALID, message=str(exc))
    return to_upload(files, content, Receipt.from_json(due.receipt), outcome_unknown_at_start=due.unknown_at_start)


def send_batch(batch: Sequence[tuple[DueDelivery, ItemFiles | None]], target: Target, *,
               cache: ContentCache | None, read_options: dict[str, Any],
               files_for: Callable[[DueDelivery], ItemFiles | None] | None = None) -> list[Outcome]:
    """One attempt for each item of ``batch`` (at most ``target.max_batch``); never raises.
    Returns one outcome per item, in order."""
    outcomes: list[Outcome | None] = []
    ready: list[tuple[DueDelivery, Upload]] = []
    for due, files in batch:
        prepared = prepare(due, files, cache=cache, read_options=read_options, files_for=files_for)
        outcomes.append(prepared if isinstance(prepared, Outcome) else None)
        if not isinstance(prepared, Outcome):
            ready.append((due, prepared))
    if ready:
        started = time.monotonic()
        with limits.serving(target.name):
            results = send_uploads(ready, target)
        took = round((time.monotonic() - started) * 1000, 1)
        for (_, upload), outcome in zip(ready, results):
            outcome.duration_ms = took
            if not outcome.adopted:
                outcome.bytes = upload_bytes(upload)
        sent = iter(results)
        outcomes = [outcome if outcome is not None else next(sent) for outcome in outcomes]
    return outcomes  # type: ignore[return-value]


def upload_bytes(upload: Upload) -> int:
    """The bytes an upload carries that count for progress and bandwidth: image and mask."""
    return len(upload.image) + len(upload.mask or b"")


def _send(due: DueDelivery, upload: Upload, target: Target) -> Outcome:
    """One attempt of one prepared upload (recovery, send, classify); never raises."""
    return send_uploads([(due, upload)], target)[0]


def send_uploads(items: Sequence[tuple[DueDelivery, Upload]], target: Target) -> list[Outcome]:
    """Recover, then send the rest in one ``deliver_batch``; one outcome per item, in order."""
    outcomes: dict[int, Outcome] = {}
    to_send: list[tuple[int, DueDelivery, Upload]] = []
    for index, (due, upload) in enumerate(items):
        if due.outcome_unknown and target.create_only:
            try:
                found = target.lookup(upload)
            except Exception as exc:  # noqa: BLE001 - classified per item
                outcomes[index] = error_outcome(due, exc, target)
                continue
            if found is not None and found.extra.get("version") == upload.version:
                outcomes[index] = Outcome(due, ACKED, receipt=found, adopted=True)
                continue
            upload = replace(upload, previous=found)
        to_send.append((index, due, upload))
    if to_send:
        uploads = [upload for _, _, upload in to_send]
        try:
            results = target.deliver_batch(uploads)
            if len(results) != len(uploads):
                raise RuntimeError(f"deliver_batch answered {len(results)} results for {len(uploads)} uploads")
        except Exception as exc:  # noqa: BLE001 - the request as a whole: each item gets the outcome
            for index, due, _ in to_send:
                outcomes[index] = whole_request_outcome(due, exc, target, batch_size=len(to_send))
        else:
            for (index, due, upload), result in zip(to_send, results):
                outcomes[index] = result_outcome(due, result, upload, target)
    return [outcomes[index] for index in range(len(items))]


def result_outcome(due: DueDelivery, result: Any, upload: Upload | None, target: Target, *,
                   jobs_allowed: bool = True) -> Outcome:
    """The outcome of one item's result (a ``Receipt``, ``Submitted`` or error instance)."""
    if isinstance(result, Receipt):
        return Outcome(due, ACKED, receipt=result)
    if isinstance(result, Submitted) and jobs_allowed and target.has_jobs:
        kept = replace(upload, image=b"") if upload is not None else None
        return Outcome(due, SUBMITTED, job_id=result.job_id, upload=kept)
    if isinstance(result, BaseException):
        return error_outcome(due, result, target)
    return error_outcome(due, RuntimeError(f"{type(target).__name__} answered {result!r} for an item"), target)


def whole_request_outcome(due: DueDelivery, exc: BaseException, target: Target, *, batch_size: int) -> Outcome:
    """One item's outcome when a request for ``batch_size`` items failed as a whole."""
    if batch_size > 1 and isinstance(exc, (SendAlone, PermanentError)):
        return Outcome(due, ALONE, message=str(exc))
    if isinstance(exc, SendAlone):  # a lone item refused: that item is the bad one
        return Outcome(due, PERMANENT, message=str(exc))
    return error_outcome(due, exc, target)


def error_outcome(due: DueDelivery, exc: BaseException, target: Target) -> Outcome:
    """The outcome of an error that concerns this one item."""
    if isinstance(exc, SendAlone):
        return Outcome(due, ALONE, message=str(exc), outcome_unknown=True)
    if isinstance(exc, TransientError):
        return Outcome(due, TRANSIENT, message=str(exc), retry_after=exc.retry_after,
                       outcome_unknown=exc.outcome_unknown, throttled=exc.throttled)
    if isinstance(exc, PermanentError):
        return Outcome(due, PERMANENT, message=str(exc))
    if isinstance(exc, ItemError):
        return Outcome(due, INVALID, message=str(exc))
    if isinstance(exc, (FatalTargetError, LocalError)):
        return Outcome(due, FATAL, message=str(exc), outcome_unknown=True)
    if isinstance(exc, SyncdError):
        return Outcome(due, PERMANENT, message=str(exc))
    # A bug in an adapter must not kill the worker or loop forever.
    log.error("unexpected error delivering %s to %s", due.key, target.name, exc_info=exc)
    return Outcome(due, TRANSIENT, message=f"internal error: {type(exc).__name__}: {exc} (please report this)",
                   outcome_unknown=True)


# -- remote jobs ------------------------------------------------------------------------------
def poll_jobs(target: Target, job_ids: Sequence[str]) -> list[tuple[str, JobState | SyncdError]]:
    """One read of each job; a job that cannot be read now gets its error. Stops at a
    ``FatalTargetError`` (the jobs not read are left out: they are polled again later)."""
    states: list[tuple[str, JobState | SyncdError]] = []
    with limits.serving(target.name):
        for job_id in job_ids:
            try:
                state: JobState | SyncdError = target.job_state(job_id)
                if not isinstance(state, JobState) or state.status not in ("running", "done", "lost"):
                    raise RuntimeError(f"job_state answered {state!r}")
            except SyncdError as exc:
                state = exc
            except Exception as exc:  # noqa: BLE001 - an adapter bug: read it again later
                log.error("unexpected error reading job %s of %s", job_id, target.name, exc_info=exc)
                state = TransientError(f"internal error reading job {job_id}: {type(exc).__name__}: {exc}")
            states.append((job_id, state))
            if isinstance(state, FatalTargetError):
                break
    return states


def finish_job(target: Target, job_id: str, state: JobState,
               items: Sequence[tuple[DueDelivery, Upload | None, ItemFiles]], *,
               read_options: dict[str, Any]) -> list[Outcome] | SyncdError:
    """The job ended: one outcome per item, in order, or the error that kept it from being
    read now (``TransientError``: try again later; ``FatalTargetError``: pause).

    An item whose upload was not kept (the daemon restarted since) is read again and checked
    against the version the job carried; an item whose files changed since is ``stale``."""
    outcomes: list[Outcome | None] = []
    kept: list[tuple[DueDelivery, Upload]] = []
    for due, upload, files in items:
        if upload is None:
            if files is None:
                outcomes.append(Outcome(due, STALE, message=f"{due.key}: its folder is not configured any more"))
                continue
            prepared = prepare(due, files, cache=None, read_options=read_options)
            if isinstance(prepared, Outcome):
                outcomes.append(replace(prepared, kind=STALE) if prepared.kind == INVALID else prepared)
                continue
            upload = replace(prepared, image=b"")
        outcomes.append(None)
        kept.append((due, upload))
    if kept:
        try:
            with limits.serving(target.name):
                results = target.finish_job(job_id, state, [upload for _, upload in kept])
            if len(results) != len(kept):
                raise RuntimeError(f"finish_job answered {len(results)} results for {len(kept)} uploads")
        except (TransientError, FatalTargetError) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - each item gets the outcome
            results = [exc] * len(kept)
        finished = iter([result_outcome(due, result, upload, target, jobs_allowed=False)
                         for (due, upload), result in zip(kept, results)])
        outcomes = [outcome if outcome is not None else next(finished) for outcome in outcomes]
    return outcomes  # type: ignore[return-value]


# -- the tasks a worker runs: each reports once, on the coordinator's inbox (``put``) -----------
@dataclass
class SendReport:
    """A batch was sent: one outcome per item."""

    target: str
    outcomes: list[Outcome]


@dataclass
class PollReport:
    """Jobs were read: each one's state, or the error that kept it from being read."""

    target: str
    states: list[tuple[str, JobState | SyncdError]]
    asked: list[str] = field(default_factory=list)  # every job the task was given (read or not)


@dataclass
class FinishReport:
    """A job's end was read: one outcome per item, or the error to try again after."""

    target: str
    job_id: str
    result: list[Outcome] | SyncdError


def send_task(put: Callable[[object], None], target: Target, items: list, cache: ContentCache | None,
              read_options: dict[str, Any], files_for: Callable[[DueDelivery], ItemFiles | None],
              held: Callable[[str], bool] = lambda name: False) -> None:
    """Send one batch and report it; a batch of a target the operator paused after it was
    handed over (``held``) is not sent: each item comes back ``held``."""
    if held(target.name):
        put(SendReport(target.name, [Outcome(due, HELD, message="paused by operator") for due, _ in items]))
        return
    try:
        outcomes = send_batch(items, target, cache=cache, read_options=read_options, files_for=files_for)
    except Exception as exc:  # a bug: each item is retried, its outcome unknown
        log.exception("unexpected error sending a batch to %s", target.name)
        outcomes = [error_outcome(due, exc, target) for due, _ in items]
    put(SendReport(target.name, outcomes))


def poll_task(put: Callable[[object], None], target: Target, job_ids: list[str]) -> None:
    try:
        states = poll_jobs(target, job_ids)
    except Exception:  # a bug: the jobs are polled again later
        log.exception("unexpected error polling the jobs of %s", target.name)
        states = [(job_id, TransientError("internal error polling the job")) for job_id in job_ids]
    put(PollReport(target.name, states, list(job_ids)))


def finish_task(put: Callable[[object], None], target: Target, job_id: str, state: JobState, items: list,
                read_options: dict[str, Any]) -> None:
    try:
        result = finish_job(target, job_id, state, items, read_options=read_options)
    except Exception as exc:  # a bug: the job is finished again later
        log.exception("unexpected error finishing job %s of %s", job_id, target.name)
        result = TransientError(f"internal error finishing job {job_id}: {exc}")
    put(FinishReport(target.name, job_id, result))
