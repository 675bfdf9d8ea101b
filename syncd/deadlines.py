"""The items being settled and when each must be looked at next (syncd.settle).

A heap of deadlines: every (re)schedule pushes a fresh ticket, and an entry whose ticket is
not its item's latest is superseded and skipped when it comes up, so rescheduling costs
O(log n) and never searches the heap.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from syncd.folders import Folder
from syncd.items.convention import ItemFiles


@dataclass
class Settling:
    """An item whose files are being watched until they are complete."""

    folder: Folder
    item_id: int
    files: ItemFiles
    sig: str
    since: float  # when the signature was last seen to change
    quiet: float  # the files' latest mtime/ctime
    first: float  # when it started settling
    observed_at: float  # when its files were last stat'ed
    reported: bool = False  # "still being written" was reported
    was_deleted: bool = False  # its key is that of an item delivered and deleted after upload
    check_at: float = field(default=0.0)  # its next look
    ticket: int = -1  # its live entry in the deadline heap (older ones are superseded)


class Deadlines:
    """The settling items (``settling``, by item id) ordered by their next look."""

    def __init__(self) -> None:
        self.settling: dict[int, Settling] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()

    def push(self, entry: Settling, at: float) -> None:
        """Look at ``entry`` at ``at`` (its earlier deadline, if any, is superseded)."""
        entry.check_at, entry.ticket = at, next(self._seq)
        heapq.heappush(self._heap, (at, entry.ticket, entry.item_id))

    def schedule(self, entry: Settling, now: float, settle_seconds: float, max_settle_seconds: float) -> None:
        """Its next look: when its files will have been quiet for ``settle_seconds``, or when it
        has been settling for ``max_settle_seconds`` (reported once then)."""
        at = entry.since + settle_seconds
        if entry.quiet <= now:
            at = min(at, entry.quiet + settle_seconds)
        if not entry.reported:
            at = min(at, entry.first + max_settle_seconds)
        self.push(entry, at)

    def next(self) -> float | None:
        """The earliest live deadline (None: nothing is settling)."""
        while self._heap:
            at, ticket, item_id = self._heap[0]
            entry = self.settling.get(item_id)
            if entry is not None and entry.ticket == ticket:
                return at
            heapq.heappop(self._heap)  # superseded
        return None

    def due(self, now: float) -> bool:
        """Some deadline (perhaps a superseded one) came."""
        return bool(self._heap) and self._heap[0][0] <= now

    def pop_due(self, now: float) -> Settling | None:
        """The next live entry whose deadline came, taken off the heap; None when there is none."""
        while self.due(now):
            _, ticket, item_id = heapq.heappop(self._heap)
            entry = self.settling.get(item_id)
            if entry is not None and entry.ticket == ticket:
                return entry
        return None

    def clear(self) -> None:
        self.settling.clear()
        self._heap.clear()
