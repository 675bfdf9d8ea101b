"""The watched folders: present or not (unmounted, removed), path -> folder, key <-> files.

A folder that disappears, or whose mount goes away leaving the empty mount point behind, is
*missing*: it is paused, never read as "every item was deleted"; when it comes back it is
watched afresh and rescanned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from syncd.config import FolderSettings
from syncd.items.convention import IgnoreRules, ItemFiles, make_key, probe_item
from syncd.labels.classmap import find_class_map
from syncd.watcher import FolderWatcher

log = logging.getLogger("syncd.folders")


@dataclass
class Folder:
    settings: FolderSettings
    root: Path
    rules: IgnoreRules
    targets: list[str]
    missing: bool = False
    mount_point: bool | None = None  # whether the folder itself is a mount point (once seen)

    @property
    def name(self) -> str:
        return str(self.root)

    def key_for(self, directory: Path, stem: str) -> str:
        """The item key of ``stem`` in ``directory``."""
        return make_key(self.root, directory, stem, self.settings.key_prefix)

    def probe(self, key: str) -> ItemFiles | None:
        """The item ``key`` as it is on disk now (probing its possible names), or None."""
        prefix = self.settings.key_prefix
        rel = key[len(prefix.rstrip("/")) + 1:] if prefix else key
        directory, _, stem = rel.rpartition("/")
        return probe_item(self.root, self.root / directory, stem, self.rules, prefix)

    def files(self, key: str, image: str | None, sidecar: str | None, mask: str | None) -> ItemFiles | None:
        """The item's files as the journal last saw them settle (no probing: what is read is
        checked against the journaled version anyway), or None without an image."""
        if not image:
            return None
        files = ItemFiles(root=self.root, key=key, image=Path(image), sidecar=Path(sidecar) if sidecar else None,
                          mask=Path(mask) if mask else None)
        if files.mask is not None:
            files.class_map = find_class_map(files.image.parent, self.root)
        return files


class Folders:
    """Every configured folder (see the module docstring)."""

    def __init__(self, settings: list[FolderSettings], ignore: list[str]):
        self.all = [Folder(f, f.path, IgnoreRules([*ignore, *f.exclude], f.include), list(f.targets)) for f in settings]
        self._by_name = {folder.name: folder for folder in self.all}

    def __iter__(self):
        return iter(self.all)

    def __getitem__(self, index: int) -> Folder:
        return self.all[index]

    def __len__(self) -> int:
        return len(self.all)

    def named(self, name: str) -> Folder | None:
        return self._by_name.get(name)

    def of(self, path: Path) -> Folder | None:
        """The folder holding ``path`` (the innermost, when folders nest)."""
        best = None
        for folder in self.all:
            if path == folder.root or folder.root in path.parents:
                if best is None or len(folder.name) > len(best.name):
                    best = folder
        return best

    def create_missing(self) -> None:
        """At start-up: create the folders that do not exist and may be created."""
        for folder in self.all:
            if not folder.root.exists() and folder.settings.create:
                try:
                    folder.root.mkdir(parents=True, exist_ok=True)
                    log.info("created missing folder %s", folder.root)
                except OSError as exc:
                    log.error("cannot create folder %s: %s", folder.root, exc.strerror)

    def check_presence(self, watcher: FolderWatcher, *, watching: bool) -> None:
        """Notice folders that went missing or came back (a rescan is requested for those)."""
        for folder in self.all:
            present = folder.root.is_dir()
            if present:
                # An unmounted folder usually leaves its mount point behind: an empty directory
                # that must not be read as "every item was deleted".
                mounted = os.path.ismount(folder.root)
                if folder.mount_point is None or (mounted and not folder.mount_point):
                    if folder.mount_point is False and watching:
                        log.info("folder %s is now a mount point: watching the mounted filesystem", folder.root)
                        watcher.restart(folder.root)
                    folder.mount_point = mounted
                elif folder.mount_point and not mounted:
                    present = False
            if folder.missing and present:
                log.info("folder %s is back; rescanning it", folder.root)
                folder.missing = False
                if watching:
                    watcher.restart(folder.root)  # the old watch, if any, is on another directory
                watcher.rescan_needed.set()
            elif not present and not folder.missing:
                # Unmounted or removed: pause it; never read this as "every item was deleted".
                log.error("folder %s is missing (unmounted or removed?): paused until it comes back", folder.root)
                folder.missing = True
