"""The error classes of syncd.

Every failure is raised as one of these and caught once, at the per-item boundary
(delivery.py) or at the command boundary (cli.py). The class decides what happens:

- ``ConfigError``: the configuration is wrong; the command exits 2 before doing anything.
- ``ItemError``: this item's local files are bad (undecodable image, bad sidecar, mask of the
  wrong size). The item is failed until its files change or ``syncd retry``.
- ``TransientError``: try again later (network, timeout, 408/425/429/5xx). ``retry_after``
  is the server's hint in seconds, if it gave one.
- ``PermanentError``: the platform refused this item (4xx for that item, per-item error in a
  200 body). The item is failed until its files change or ``syncd retry``.
- ``FatalTargetError``: the whole target cannot work (401/403, unknown dataset). The target
  is paused with a loud error; other targets go on.
- ``LocalError``: the machine is in the way (disk full, unreadable state dir); the message
  says how to fix it. ``JournalBusy``: another process holds the journal's write lock.
- ``JournalLost``: the journal was deleted, replaced, truncated or damaged. Nothing more is
  written to it; the command exits 4 and the message says how to go on.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence."""


class ConfigError(SyncdError):
    """The configuration file or environment is invalid."""


class ItemError(SyncdError):
    """The item's own files are invalid; fixing or replacing them retries the item."""


class TransientError(SyncdError):
    """A failure that may go away by itself; retried with backoff.

    ``outcome_unknown`` is True when the request may have reached the platform (timeout,
    connection reset after sending, 5xx): before re-sending, create-only targets look the
    item up remotely.

    ``throttled`` is True when the platform said it is overloaded or rate-limiting (429, or
    503 with ``Retry-After``): that is about the target as a whole, not this item, so the
    daemon slows the target (syncd.health) instead of backing this item off.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, outcome_unknown: bool = True,
                 throttled: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.throttled = throttled


class PermanentError(SyncdError):
    """The platform rejected this item; not retried until the item changes."""


class SendAlone(SyncdError):
    """A batch failed in a way that cannot be pinned on one of its items (the platform refused
    the request as a whole, or a job's error names no item): each item is sent again by itself,
    so a bad one fails alone. Not counted as an attempt."""


class FatalTargetError(SyncdError):
    """The target as a whole cannot work (bad credentials, unknown dataset)."""


class LocalError(SyncdError):
    """A local resource problem (disk full, permissions); the message names the fix."""


class JournalBusy(LocalError):
    """Another process holds the journal's write lock (a transaction left open); the message
    names it where it can be told."""


class JournalLost(SyncdError):
    """The journal file is not the one syncd recorded its deliveries in any more (deleted,
    replaced, truncated, damaged). Going on would deliver everything again: syncd stops, and an
    operator restores the journal or starts afresh (the message says how). ``kind``: deleted,
    replaced, truncated, damaged or missing."""

    def __init__(self, message: str, *, kind: str = "damaged"):
        super().__init__(message)
        self.kind = kind
