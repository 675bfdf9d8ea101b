"""Settling: hints and scans -> observe -> settled (a version every target wants) | invalid.

An item is *observed* when a file event (a hint) or a scan finds its files new or changed: the journal records it as
settling and ``Settler`` follows it. It is complete when its files' stat signature has not changed for
``settle_seconds`` (or their mtime/ctime is that old), the image decodes completely and the sidecar parses; then one
read validates it, hashes it into its version, journals ``settled`` and keeps the bytes in the content cache for the
upload workers (read once). Bad files make it ``invalid``; a file still changing after ``max_settle_seconds`` is
reported, not sent half-written.

Cheap per item: a pass stats only the items whose deadline came (syncd.deadlines), not those a scan stat'ed less
than ``FRESH`` ago; reading is bounded per pass (``SETTLE_SLICE``) and by the room in the content cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from syncd.companions import LateCompanions
from syncd.config import DaemonSettings
from syncd.deadlines import Deadlines, Settling
from syncd.errors import ItemError
from syncd.folders import Folder, Folders
from syncd.items.content import ContentCache, ItemContent, cached_size, invalid_signature, stat_signature
from syncd.items.convention import ItemFiles, printable, probe_item, relative_path, role_of
from syncd.journal.store import Store
from syncd.labels.classmap import CLASS_MAP_NAME, DATAPOINT_MAP_NAME
from syncd.readers import READERS, Readers
from syncd.scan import Scan
from syncd.settle_gone import Disappearances
from syncd.targets import Target
from syncd.watcher import FolderWatcher

log = logging.getLogger("syncd.settle")

SETTLE_SLICE = 0.005  # seconds of reading per pass: the pass then dispatches, so sending keeps up with reading
READ_CHUNK = 4 * READERS  # complete items read together
FRESH = 1.0  # seconds: an item stat'ed this recently (by the scan that found it) is not stat'ed again


class Settler(Disappearances):
    """Observes items and settles them (see the module docstring). Every journal write goes
    into the coordinator's pass transaction; nothing here survives a failed pass but what a
    rescan finds again (``forget``)."""

    def __init__(self, cfg: DaemonSettings, folders: Folders, targets: dict[str, Target], watcher: FolderWatcher,
                 cache: ContentCache, read_options: dict, wake: threading.Event, rng):
        self.cfg = cfg
        self.folders = folders
        self.targets = targets
        self.watcher = watcher
        self.cache = cache
        self.read_options = read_options
        self.wake = wake
        self.rng = rng
        self.store: Store | None = None  # set by the daemon once the journal is open
        self.deadlines = Deadlines()
        self.settling = self.deadlines.settling
        self._last_now = 0.0
        self.next_rescan = 0.0
        self.newly_due: set[str] = set()  # targets with deliveries made due since the dispatcher looked
        self.invalid_deliveries = 0  # deliveries failed because their item's files are bad (progress lines)
        self.on_gone: Callable[[int], None] = lambda item_id: None  # the dispatcher forgets its cached content
        # An item settled at a version every target has (a file delivered and deleted came back
        # the same): the dispatcher applies after_upload to it again.
        self.on_delivered: Callable[[Folder, int, str], None] = lambda folder, item_id, key: None
        self.deleting: set[int] = set()  # items whose files after_upload removed, not journaled yet
        self.companions = LateCompanions(targets)
        self.readers = Readers(read_options)
        self._unreadable_unsaved = {folder.name for folder in folders}  # folder.unreadable not journaled yet
        self.stopping: Callable[[], bool] = lambda: False  # set by the daemon: scans end early (syncd.scan.Stopped)
        # Whether deliveries are on their way (the dispatcher says): while they are and the
        # content cache is full, complete items wait to be read (``held``) -- read once, sent
        # from memory, instead of read ahead, pushed out of the cache and read again.
        self.sending: Callable[[], bool] = lambda: False
        self.held, self.room_needed = False, 0  # room_needed: bytes the next complete item waits for

    # -- scans and hints --------------------------------------------------------------------
    def scan(self, now: float) -> None:
        """Full rescan of every folder: the truth behind the event hints."""
        self.watcher.rescan_needed.clear()
        self.next_rescan = now + self.cfg.rescan_seconds * self.rng.uniform(0.9, 1.1)
        for folder in self.folders:
            if folder.missing or not os.path.isdir(folder.root):
                continue
            self._scan_tree(folder, folder.root, now, full=True)

    def rescan_due(self, now: float) -> bool:
        # A deadline further ahead than its period was set under a clock since set back.
        return self.watcher.rescan_needed.is_set() or not 0 < self.next_rescan - now <= self.cfg.rescan_seconds * 1.1

    def _scan_tree(self, folder: Folder, start: Path, now: float, *, full: bool) -> None:
        """Observe every new or changed item below ``start``; with ``full`` (``start`` is the
        folder) also mark the journal's items that are no longer there. Unchanged items and
        directories cost one stat per file (see syncd.scan)."""
        assert self.store is not None
        settling_keys = {entry.files.key for entry in self.settling.values() if entry.folder is folder}
        scan = Scan(self.store, folder.name, folder.root, folder.rules, folder.settings.key_prefix, settling_keys,
                    stopping=self.stopping)
        for files in scan.items(start):
            self.observe(folder, files, now, self.store.observed_item(folder.name, files.key))
        scan.finish()
        self._unreadable(folder, start, scan.unreadable, now)
        for key, (directory, stem, item_id) in scan.late.items():
            self._late(folder, key, item_id, directory, stem, now)
        if not full:
            return
        for key, _ in self.store.late_companions(folder.name):  # noted before: still there?
            if key not in scan.late and (item_id := self.store.item_id(folder.name, key)) is not None:
                self._late(folder, key, item_id, *folder.locate(key), now)
        for key, item_id in scan.vanished():
            if item_id not in self.settling:
                self._vanished(folder, key, item_id, now)

    def hint(self, path: Path, now: float) -> None:
        """A file event named ``path``: observe what it may have changed."""
        folder = self.folders.of(path)
        if folder is None or folder.missing:
            return
        rel = relative_path(folder.root, path)
        if rel is None or folder.rules.ignored_path(rel):
            return  # the scans' rules: in .Trash-1000/, .git/, an excluded directory... (no stat even)
        if os.path.isdir(path):
            self._scan_tree(folder, path, now, full=False)
            return
        if path.name in (CLASS_MAP_NAME, DATAPOINT_MAP_NAME):
            self._scan_tree(folder, path.parent, now, full=False)
            return
        if folder.rules.ignored(path.name):
            return
        found = role_of(path.name)
        if found is None:
            return
        stem, role = found
        files = probe_item(folder.root, path.parent, stem, folder.rules, folder.settings.key_prefix)
        assert self.store is not None
        if files is None:
            key = folder.key_for(path.parent, stem)
            known = self.store.observed_item(folder.name, key)
            if known is not None:
                self.settling.pop(known[0], None)
                if known[2] == "deleted" and role != "image":
                    self._late(folder, key, known[0], path.parent, stem, now)
                elif known[2] not in ("gone", "deleted"):  # (one event per file: said once)
                    self._vanished(folder, key, known[0], now)
            return
        self.observe(folder, files, now, self.store.observed_item(folder.name, files.key))

    # -- observing --------------------------------------------------------------------------
    def observe(self, folder: Folder, files: ItemFiles, now: float, known: tuple[int, str | None, str] | None) -> None:
        """The item's files may have changed: follow them until they settle."""
        self._last_now = max(self._last_now, now)  # for settle() to notice a clock set back
        try:
            sig, quiet = stat_signature(files)
        except ItemError as exc:
            self._observed_invalid(folder, files, str(exc), now, known)
            return
        except OSError:
            return  # vanished meanwhile; the next event or scan decides
        if known is not None:
            item_id, old_sig, state = known
            current = self.settling.get(item_id)
            if current is not None:
                current.files, current.observed_at = files, now
                if sig != current.sig:
                    current.sig, current.since, current.quiet = sig, now, quiet
                    self._schedule(current, now)
                return
            if state == "ready" and old_sig == sig:
                return  # unchanged since it was settled: nothing to re-hash
            if state == "invalid" and old_sig and old_sig.startswith(sig + "#") \
                    and old_sig == invalid_signature(files, sig):
                return  # unchanged since it was found invalid, its mode and owner too
        assert self.store is not None
        item_id = self.store.observe(folder.name, files.key, str(files.image), _opt(files.sidecar), _opt(files.mask),
                                     sig, now)
        entry = Settling(folder, item_id, files, sig, now, quiet, now, now,
                         was_deleted=known is not None and known[2] == "deleted")
        self.settling[item_id] = entry
        self._schedule(entry, now)

    def _observed_invalid(self, folder: Folder, files: ItemFiles, error: str, now: float, known) -> None:
        """A file of the item cannot even be stat'ed (broken symlink, no permission)."""
        assert self.store is not None
        if known is not None and known[2] == "invalid":
            return  # already reported; retried when it changes or on `syncd retry`
        item_id = self.store.observe(folder.name, files.key, _opt(files.image), _opt(files.sidecar),
                                     _opt(files.mask), "", now)
        self.settling.pop(item_id, None)
        log.warning("item %s is invalid: %s", files.key, error)
        self.store.invalid(item_id, error, folder.targets, now)
        self.invalid_deliveries += len(folder.targets)

    def forget(self) -> None:
        """A pass failed (its journal writes were rolled back): drop what it may have added;
        the rescan that follows observes every unsettled item again."""
        self.deadlines.clear()
        self.newly_due.clear()
        self.held, self.room_needed = False, 0
        self._unreadable_unsaved = {folder.name for folder in self.folders}  # journaled again by the next scans

    # -- deadlines ---------------------------------------------------------------------------
    def _schedule(self, entry: Settling, now: float) -> None:
        self.deadlines.schedule(entry, now, self.cfg.settle_seconds, self.cfg.max_settle_seconds)

    def next_deadline(self) -> float | None:
        """When the next settling item must be looked at (None: nothing is settling, or
        reading waits for room in the content cache)."""
        return None if self.held else self.deadlines.next()

    # -- settling -----------------------------------------------------------------------------
    def settle(self, now: float) -> None:
        """Look at the settling items whose deadline came; read those that are complete and
        whose content fits in the content cache (``after_dispatch`` decides about the rest)."""
        assert self.store is not None
        if now < self._last_now - 1.0:  # the clock was set back: quiet from now on, every deadline again
            for entry in self.settling.values():
                entry.since, entry.first = min(entry.since, now), min(entry.first, now)
                self._schedule(entry, now)
        self._last_now = now
        # Reading (decoding, hashing) items is the expensive part: a pass reads for at most
        # SETTLE_SLICE seconds, so a burst of thousands of files is delivered while the rest
        # of it is still being read instead of after all of it.
        deadline = time.monotonic() + SETTLE_SLICE
        later: list[Settling] = []  # looked at again by the next pass
        self.held, self.room_needed = False, 0
        while self.deadlines.due(now):
            if time.monotonic() > deadline:
                self.wake.set()  # more is due: the next pass goes on right after dispatching
                break
            ready = self._complete(now, READ_CHUNK, later, free=self.cache.free())
            if ready:
                self._read_all(ready, now)
            if self.room_needed:  # the content cache is full
                break
        for entry in later:
            self.deadlines.push(entry, now)

    def after_dispatch(self, now: float) -> None:
        """A complete item waits for room in the content cache: while deliveries are on their
        way it waits (``held``: a claim freeing room wakes the coordinator); if none is even
        after this pass's dispatch (a paused target's content fills the cache), read on, the
        oldest content goes. (Before dispatching, a batch done and the next not sent yet
        would look like nothing on its way, and the read would push out what it sends.)"""
        need, self.room_needed = self.room_needed, 0
        if not need or self.stopping():
            return
        if self.sending():
            if self.cache.want_room(need):
                self.wake.set()  # a claim freed room since: read on in the next pass
            else:
                self.held = True
            return
        later: list[Settling] = []
        self._read_all(self._complete(now, READ_CHUNK, later, free=None), now)
        for entry in later:
            self.deadlines.push(entry, now)
        self.wake.set()  # what was read is dispatched by the next pass

    def _complete(self, now: float, limit: int, later: list[Settling], *, free: int | None) -> list[Settling]:
        """Up to ``limit`` due items whose files are complete (no longer settling) and whose
        content fits in ``free`` bytes of the content cache (None: pushing the oldest out); the
        other due items get their next deadline; one that does not fit stays due (``room_needed``)."""
        assert self.store is not None
        settle = self.cfg.settle_seconds
        ready: list[Settling] = []
        while len(ready) < limit and (entry := self.deadlines.pop_due(now)) is not None:
            item_id = entry.item_id
            if entry.folder.missing:
                self.deadlines.push(entry, now + settle)
                continue
            if not 0 <= now - entry.observed_at < FRESH:  # stat'ed just now: that is its latest look
                try:
                    sig, quiet = stat_signature(entry.files)
                except ItemError as exc:
                    del self.settling[item_id]
                    self._observed_invalid(entry.folder, entry.files, str(exc), now, None)
                    continue
                except OSError:
                    self._refind(entry, now, later)
                    continue
                entry.observed_at = now
                if sig != entry.sig:
                    entry.sig, entry.since, entry.quiet = sig, now, quiet
            if entry.since > now:  # the clock was set back: quiet from now on
                entry.since, entry.first = now, min(entry.first, now)
            if now - entry.since >= settle or (entry.quiet <= now and now - entry.quiet >= settle):
                if free is not None:
                    size = cached_size(entry.sig)
                    if not self.cache.fits(size, free):
                        self.deadlines.push(entry, entry.check_at)  # still due, first in line
                        self.room_needed = size
                        break
                    free -= size if size <= self.cache.max_bytes else 0
                del self.settling[item_id]
                ready.append(entry)
                continue
            if now - entry.first >= self.cfg.max_settle_seconds and not entry.reported:
                message = (f"{entry.files.image}: still being written after {now - entry.first:.0f}s; "
                           "it is delivered once it stops changing")
                log.warning(message)
                self.store.settling_error(item_id, message, now)
                entry.reported = True
            self._schedule(entry, now)
        return ready

    def _refind(self, entry: Settling, now: float, later: list[Settling]) -> None:
        """A file of the settling item vanished: find what it is now, or mark it gone."""
        assert self.store is not None
        files = entry.files
        fresh = probe_item(entry.folder.root, files.image.parent, files.image.stem, entry.folder.rules,
                           entry.folder.settings.key_prefix)
        if fresh is None:
            del self.settling[entry.item_id]
            self.store.gone(entry.item_id, now)
            self.on_gone(entry.item_id)
            return
        entry.files, entry.sig, entry.since = fresh, "", now  # observed again by the next pass
        later.append(entry)

    def _read_all(self, ready: list[Settling], now: float) -> None:
        """Read, validate and hash ``ready`` items (in parallel), then journal each one's outcome in order."""
        for entry, result in zip(ready, self.readers.read([entry.files for entry in ready])):
            self._settled(entry, result, now)

    def close(self) -> None:
        self.readers.close()

    def _settled(self, entry: Settling, content: ItemContent | ItemError, now: float) -> None:
        assert self.store is not None
        item_id, folder = entry.item_id, entry.folder
        if isinstance(content, ItemError):
            log.warning("item %s is invalid: %s", entry.files.key, content)
            self.store.invalid(item_id, str(content), folder.targets, now)
            self.invalid_deliveries += len(folder.targets)
            self.store.record_stat_sig(item_id, invalid_signature(entry.files, entry.sig))
            return
        label_error = "; ".join(content.label_errors) or None
        if label_error:
            log.warning("item %s is delivered without its labels/mask: %s", entry.files.key, label_error)
        sends = self.store.settled(item_id, content.version, folder.targets, now, label_error=label_error,
                                   notes=self._unrepresentable(folder, content), stat_sig=entry.sig)
        restored = item_id in self.companions.restored  # its image put back for a late companion
        self.companions.restored.discard(item_id)
        if entry.was_deleted and not restored:  # a name used again after deletion
            if self.store.fully_acked(item_id, folder.targets):
                self.on_delivered(folder, item_id, entry.files.key)  # the same again: nothing to send
                return
            log.warning("%s was delivered and deleted before: this new file replaces it on %s (the same key); "
                        "give new files new names to keep both", entry.files.key, ", ".join(folder.targets))
        if sends:
            self.cache.put(item_id, entry.sig, content, entry.files, uses=sends)
        self.newly_due.update(folder.targets)
        log.debug("item %s settled at version %s", entry.files.key, content.version)

    def _unrepresentable(self, folder: Folder, content) -> dict[str, str | None]:
        """Per target: what its platform cannot represent of this item (reported, not hidden)."""
        return {name: self.targets[name].representation_note(content.sidecar.labels, has_mask=content.mask is not None)
                for name in folder.targets}


def _opt(path: Path | None) -> str | None:
    # printable: a file name that is not UTF-8 must not break the journal (the item is invalid).
    return None if path is None else printable(str(path))
