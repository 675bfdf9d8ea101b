"""What a scan or an event did not find where the journal has it, and what came late.

``Settler`` (syncd.settle) inherits these: an item whose files are gone is journaled gone
once (``_vanished``: unless its files are only hidden by an unreadable directory, were
removed by after_upload, or now fall under an ignore rule); the directories a scan could not
list are journaled when that changed (``_unreadable``); a companion of an item delivered and
deleted after upload is handed to syncd.companions (``_late``); items another process made
settle again (``syncd retry``) are followed (``follow_requeued``). They share the settler's
journal (``store``), its settling items and its pass transaction.
"""

from __future__ import annotations

import logging
from pathlib import Path

from syncd.folders import Folder, may_exist
from syncd.items.convention import probe_item, relative_path

log = logging.getLogger("syncd.settle")


class Disappearances:
    """Mixed into ``syncd.settle.Settler`` (see the module docstring)."""

    def follow_requeued(self, now: float) -> None:
        """Another process (``syncd retry``) made items settle again: follow those not followed."""
        assert self.store is not None
        for item_id, folder_name, key in self.store.settling_rows():
            folder = self.folders.named(folder_name)
            if item_id in self.settling or folder is None or folder.missing:
                continue
            files = folder.probe(key)
            if files is None:
                self._vanished(folder, key, item_id, now)
            else:
                self.observe(folder, files, now, None)

    def _unreadable(self, folder: Folder, start: Path, found: dict[str, str], now: float) -> None:
        """Journal the directories below ``start`` a scan could not list, when that changed."""
        assert self.store is not None
        if folder.note_unreadable(start, found) or folder.name in self._unreadable_unsaved:
            self.store.set_unreadable_dirs(folder.name, folder.unreadable, now)
            self._unreadable_unsaved.discard(folder.name)

    def _late(self, folder: Folder, key: str, item_id: int, directory: Path, stem: str, now: float) -> None:
        """A companion of an item delivered and deleted after upload (syncd.companions)."""
        assert self.store is not None
        image = self.companions.arrived(self.store, folder, key, item_id, directory, stem)
        files = image and probe_item(folder.root, image.parent, stem, folder.rules, folder.settings.key_prefix)
        if files:
            self.observe(folder, files, now, self.store.observed_item(folder.name, files.key))

    def _vanished(self, folder: Folder, key: str, item_id: int, now: float) -> None:
        """The live item ``key`` was not found: it is gone (once), unless its files are only
        hidden (an unreadable directory) or after_upload removed them."""
        assert self.store is not None
        if item_id in self.deleting:
            return  # after_upload removed its files: the dispatcher journals it as deleted
        image = self.store.item_image(item_id)
        if image is not None and may_exist(image):
            rel = relative_path(folder.root, Path(image))
            if rel is None or not folder.rules.ignored_path(rel):
                return  # unreadable directory or a race: not gone
            log.info("item %s is now ignored in %s (ignore/exclude); it stays where it was delivered", key, folder.root)
            self.on_gone(item_id)
            self.store.gone(item_id, now)
            return
        self.on_gone(item_id)
        if folder.settings.after_upload == "delete" and self.store.fully_acked(item_id, folder.targets):
            # Delivered everywhere and its files removed (by after_upload before a crash kept it
            # from being journaled, or by the user): it counts as delivered and deleted.
            log.info("item %s was delivered and its files are gone: counted as deleted after upload", key)
            self.store.gone(item_id, now, state="deleted")
            return
        log.info("item %s is gone from %s", key, folder.root)
        self.store.gone(item_id, now)
