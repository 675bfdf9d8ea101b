"""One delivery attempt around a target: verify, (recover), send, classify.

``attempt`` runs in an upload worker thread. It never touches the journal: the coordinator
records the intent before submitting it and records the returned ``Outcome`` afterwards.
It re-reads the item's files and checks them against the version the intent named, so
what is sent is exactly that version; a file changed meanwhile gives a ``stale`` outcome
and the item settles again.

Recovery: when the previous attempt's outcome is unknown (crash or transient error after
the request may have been committed) and the target is create-only, the remote item is
looked up first; if it already holds this version it is adopted without sending.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Any

from syncd import limits
from syncd.errors import FatalTargetError, ItemError, LocalError, PermanentError, SyncdError, TransientError
from syncd.items.content import read_item, to_upload
from syncd.items.convention import ItemFiles
from syncd.journal.store import DueDelivery
from syncd.targets.base import Receipt, Target

log = logging.getLogger("syncd.delivery")

# Outcome kinds and what the coordinator does with them.
ACKED = "acked"  # record the receipt
TRANSIENT = "transient"  # back off and retry
PERMANENT = "permanent"  # the platform refused the item: failed until it changes
INVALID = "invalid"  # the local files are bad: failed until they change
STALE = "stale"  # files changed since the intent: settle again
FATAL = "fatal"  # the target cannot work: pause it


MAX_RETRY_AFTER = 3600.0


@dataclass
class Outcome:
    due: DueDelivery
    kind: str
    receipt: Receipt | None = None
    message: str = ""
    retry_after: float | None = None
    outcome_unknown: bool = False
    adopted: bool = False


def backoff_delay(attempts: int, retry_after: float | None, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter, never sooner than the server's ``Retry-After``.

    The server's hint is honoured even beyond ``cap`` (up to an hour): it knows its limits.
    """
    ceiling = min(cap, base * (2 ** min(max(0, attempts - 1), 30)))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def attempt(due: DueDelivery, files: ItemFiles, target: Target, *, read_options: dict[str, Any]) -> Outcome:
    """Make one delivery attempt of ``due`` to ``target``; never raises."""
    try:
        content = read_item(files, **read_options)
    except ItemError as exc:
        return Outcome(due, INVALID, message=str(exc))
    if content.version != due.version:
        return Outcome(due, STALE, message="the files changed since the delivery was planned")
    upload = to_upload(files, content, Receipt.from_json(due.receipt))
    with limits.serving(target.name):
        return _send(due, upload, target)


def _send(due: DueDelivery, upload, target: Target) -> Outcome:
    try:
        if due.outcome_unknown and target.create_only:
            found = target.lookup(upload)
            if found is not None and found.extra.get("version") == upload.version:
                return Outcome(due, ACKED, receipt=found, adopted=True)
            upload = replace(upload, previous=found)
        receipt = target.deliver(upload)
        return Outcome(due, ACKED, receipt=receipt)
    except TransientError as exc:
        return Outcome(due, TRANSIENT, message=str(exc), retry_after=exc.retry_after,
                       outcome_unknown=exc.outcome_unknown)
    except PermanentError as exc:
        return Outcome(due, PERMANENT, message=str(exc))
    except ItemError as exc:
        return Outcome(due, INVALID, message=str(exc))
    except (FatalTargetError, LocalError) as exc:
        return Outcome(due, FATAL, message=str(exc), outcome_unknown=True)
    except SyncdError as exc:
        return Outcome(due, PERMANENT, message=str(exc))
    except Exception as exc:  # a bug in an adapter must not kill the worker or loop forever
        log.exception("unexpected error delivering %s to %s", due.key, target.name)
        return Outcome(
            due,
            TRANSIENT,
            message=f"internal error: {type(exc).__name__}: {exc} (please report this)",
            outcome_unknown=True,
        )
