"""The watched folders: present or not (unmounted, removed), path -> folder, key <-> files.

A folder that disappears, or whose mount goes away leaving the empty mount point behind, is
*missing*: it is paused, never read as "every item was deleted"; when it comes back it is
watched afresh and rescanned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from syncd.config import FolderSettings
from syncd.items.convention import IgnoreRules, ItemFiles, make_key, probe_item, walk
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
    unreadable: dict[str, str] = field(default_factory=dict)  # subdirectories that cannot be listed -> why

    @property
    def name(self) -> str:
        return str(self.root)

    def key_for(self, directory: Path, stem: str) -> str:
        """The item key of ``stem`` in ``directory``."""
        return make_key(self.root, directory, stem, self.settings.key_prefix)

    def note_unreadable(self, start: Path, found: dict[str, str]) -> bool:
        """A scan below ``start`` could not list the directories ``found`` (path -> why): each
        new one is named once in the log, one readable again too. True when ``unreadable``
        changed."""
        below = os.path.join(start, "")
        known = self.unreadable
        current = {path: why for path, why in known.items() if path != str(start) and not path.startswith(below)}
        current.update(found)
        for path, reason in found.items():
            if path not in known:
                log.warning("cannot read the directory %s: %s; skipped, nothing in it is delivered: give the user "
                            "syncd runs as read access to it, or add its name to the folder's exclude", path, reason)
        for path in known.keys() - current.keys():
            log.info("the directory %s can be read again", path)
        self.unreadable = current
        return current != known

    def locate(self, key: str) -> tuple[Path, str]:
        """The directory and stem of the item ``key``."""
        prefix = self.settings.key_prefix
        rel = key[len(prefix.rstrip("/")) + 1:] if prefix else key
        directory, _, stem = rel.rpartition("/")
        return self.root / directory, stem

    def probe(self, key: str) -> ItemFiles | None:
        """The item ``key`` as it is on disk now (probing its possible names), or None."""
        directory, stem = self.locate(key)
        return probe_item(self.root, directory, stem, self.rules, self.settings.key_prefix)

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


def may_exist(path: str) -> bool:
    """False only when ``path`` is certainly not there (a directory that cannot be read hides
    its files: they are not gone)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def unreadable_dirs(root: Path, rules: IgnoreRules) -> dict[str, str]:
    """``path -> reason`` of the directories below ``root`` that cannot be listed (``syncd
    check``; the daemon's scans find the same). One listing per directory, no stat per file."""
    found: dict[str, str] = {}

    def note(path: Path, error: OSError) -> None:
        found[str(path)] = error.strerror or str(error)

    for _ in walk(root, rules, "", filter_listing=lambda directory, entries, export: [], unreadable=note):
        pass
    return found


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
            present = os.path.isdir(folder.root)  # False, not an error, when it cannot be reached
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
