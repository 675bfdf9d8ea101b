"""The disk guard: keep ``[daemon] min_free_space`` free, for the journal and the drop folders.

- **The state directory.** When its filesystem has less free than ``min_free_space``, the
  daemon stops taking new work *before* SQLite fails: no scan, no settling, no new intents;
  the outcomes of batches already on the wire are still recorded (a few pages), so nothing
  is sent twice. It says why (the log, ``status``, /healthz) and resumes by itself, with a
  rescan, once there is room again.
- **Retention** (a folder with ``retention = "acknowledged"``): when the watched folder's
  filesystem has less free than ``min_free_space``, the local files of its oldest items
  (first seen first) that EVERY target of the folder acknowledged at their current version,
  unchanged since, are removed until it has enough again (syncd.cleanup decides, item by
  item). Nothing else is ever removed: an item not yet delivered everywhere, failed, changed
  or paused stays, however low the space. The journal counts what was removed
  (``retention`` table: status and metrics).

Free space is what an unprivileged process may still use (``f_bavail``). Filesystems are
looked at most every ``CHECK_EVERY`` seconds (a ``statvfs`` each), and retention removes at
most ``BATCH`` items per pass, so a pass stays short.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from syncd import cleanup
from syncd.folders import Folder, Folders
from syncd.journal.store import Store
from syncd.sizes import format_size

log = logging.getLogger("syncd.diskguard")

CHECK_EVERY = 1.0  # seconds between looks at the free space
STUCK_EVERY = 30.0  # seconds between retention rounds of a folder where nothing could be removed
BATCH = 200  # items retention removes at most per pass


def free_bytes(path: Path, *, statvfs: Callable = os.statvfs) -> int | None:
    """Bytes an unprivileged process may still write on ``path``'s filesystem (None: unknown)."""
    try:
        fs = statvfs(path)
    except OSError:
        return None
    return fs.f_bavail * fs.f_frsize


class DiskGuard:
    """See the module docstring. ``low`` is why the daemon holds its work (None: it does not)."""

    def __init__(self, state_dir: Path, min_free: int, folders: Folders):
        self.state_dir = state_dir
        self.min_free = min_free
        self.retained = [folder for folder in folders if folder.settings.retention == "acknowledged"]
        self.low: str | None = None
        self.state_free: int | None = None
        self._looked = float("-inf")
        self._stuck: dict[str, float] = {}  # folder -> when it was found with nothing to remove

    @property
    def enabled(self) -> bool:
        return self.min_free > 0

    def step(self, store: Store, now: float) -> None:
        """Retention where a watched filesystem is low, then the state directory's verdict.
        Journal writes (what retention removed) go into the caller's transaction."""
        if not self.enabled or 0 <= now - self._looked < CHECK_EVERY:  # (a clock set back: look now)
            return
        self._looked = now
        for folder in self.retained:
            if not folder.missing:
                self._retain(store, folder, now)
        self.state_free = free_bytes(self.state_dir)
        low = None
        if self.state_free is not None and self.state_free < self.min_free:
            low = (f"the filesystem of the state directory {self.state_dir} has {format_size(self.state_free)} free, "
                   f"below min_free_space {format_size(self.min_free)}")
        if low and not self.low:
            log.error("%s: new deliveries paused before the journal runs out of space; free some space "
                      "(syncd resumes by itself)", low)
        elif self.low and not low:
            log.info("the state directory has %s free again: resuming", format_size(self.state_free or 0))
        self.low = low

    def _retain(self, store: Store, folder: Folder, now: float) -> None:
        free = free_bytes(folder.root)
        if free is None or free >= self.min_free:
            self._stuck.pop(folder.name, None)
            return
        if 0 <= now - self._stuck.get(folder.name, float("-inf")) < STUCK_EVERY:
            return  # nothing could be removed a moment ago: the candidates are not read every second
        removed, freed, cursor = 0, 0, None
        while free < self.min_free and removed < BATCH:
            batch = store.retention_candidates(folder.name, folder.targets, BATCH, after=cursor)
            if not batch:
                break
            for item_id, key, first_seen in batch:
                cursor = (first_seen, item_id)
                size = cleanup.delete_acked(store, folder, item_id, key)
                if size is None:
                    continue
                store.removed_by_retention(folder.name, item_id, key, size, now)
                removed, freed = removed + 1, freed + size
                free = free_bytes(folder.root) or 0
                if free >= self.min_free or removed >= BATCH:
                    break
        if removed:
            self._stuck.pop(folder.name, None)
            log.warning("retention removed %d items (%s) every target had acknowledged from %s: %s free now "
                        "(min_free_space %s)", removed, format_size(freed), folder.root, format_size(free),
                        format_size(self.min_free))
        else:
            if folder.name not in self._stuck:
                    log.error("%s has %s free, below min_free_space %s, and no item there is acknowledged by every "
                          "target (%s): nothing may be removed", folder.root, format_size(free),
                          format_size(self.min_free), ", ".join(folder.targets))
            self._stuck[folder.name] = now
