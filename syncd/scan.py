"""Rescans that cost little more than listing the tree and stat'ing each file once.

A scan must stat every file (a file rewritten in place changes only its size, mtime or
inode), but on an unchanged tree it need not build an ``ItemFiles`` per item nor read the
journal row by row. Two fast paths, both decided from one ``DirEntry.stat()`` per file:

1. **Directory digests.** When a scan finds every item of a directory unchanged, it stores
   the directory's digest: a hash of each file's name, size, mtime_ns and inode, of the
   class map that applies there and of the folder's rules. A later scan whose listing gives
   the same digest skips the directory whole. The journal forgets a directory's digest
   whenever one of its items changes state, signature or image (a trigger: migration 3 in
   syncd.journal.schema), so a digest only ever vouches for items that are settled at exactly
   those files. RedBrick export folders (whose items depend on a map file) never use digests.
2. **Listing signatures.** In any other directory, each plain item's stat signature is
   built from the listing (the same string ``items.content.stat_signature`` gives) and compared with
   the journal's; only items that differ — or that are unusual in any way — are yielded for
   the daemon to observe with its full checks.

Vanished items: in each listed directory, the journal's live items that were neither
accepted unchanged nor yielded are gone. Items of directories that were not listed at all
(removed, now ignored) are looked for only when the journal's count of live items exceeds
what the listed directories account for.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_module
from array import array
from collections.abc import Iterator
from pathlib import Path

from syncd.errors import ItemError
from syncd.items.content import file_signature
from syncd.items.convention import IgnoreRules, ItemFiles, printable, role_of, unsafe_name, walk
from syncd.items.redbrick_export import Export
from syncd.journal.store import Store
from syncd.labels.classmap import find_class_map

SETTLED = ("ready", "invalid")


class Scan:
    """One scan of a folder (or of a subtree, ``start``) against the journal.

    ``items()`` yields the items the caller must observe; afterwards ``finish()`` stores the
    digests of directories found unchanged, and ``vanished()`` (full scans) lists the live
    journal items that were not found. Memory stays proportional to one directory and to
    what changed, not to the tree: unchanged items leave no trace but a per-directory count.
    """

    def __init__(self, store: Store, folder: str, root: Path, rules: IgnoreRules, prefix: str,
                 settling_keys: set[str] | frozenset[str] = frozenset()):
        self.store = store
        self.folder = folder
        self.root = root
        self.rules = rules
        self.prefix = prefix
        self.settling_keys = settling_keys
        self.digests = store.dir_digests(folder)
        self.salt = repr((rules.patterns, rules.include, prefix)).encode()
        self.skipped: dict[str, int] = {}  # base key of a directory skipped by its digest -> items
        self.visited: set[str] = set()  # base keys of every directory listed
        self.accounted = 0  # live journal items in the directories listed
        self.candidates: dict[str, int] = {}  # live journal items listed but not found unchanged: key -> id
        self.yielded: set[str] = set()  # keys of the items yielded
        self._save: list[tuple[str, str, str, int]] = []
        self.unreadable: dict[str, str] = {}  # directories that could not be listed -> why
        self.late: dict[str, tuple[Path, str, int]] = {}  # companions of deleted items: key -> (dir, stem, id)

    def _unreadable(self, directory: Path, error: OSError) -> None:
        self.unreadable[str(directory)] = error.strerror or str(error)

    # -- walking --------------------------------------------------------------------------
    def items(self, start: Path | None = None) -> Iterator[ItemFiles]:
        for files in walk(self.root, self.rules, self.prefix, start=start, filter_listing=self._filter,
                          unreadable=self._unreadable):
            self.yielded.add(files.key)
            yield files

    def _base(self, directory: Path) -> str:
        rel = directory.relative_to(self.root).as_posix()
        rel = "" if rel == "." else rel + "/"
        return (self.prefix.rstrip("/") + "/" if self.prefix else "") + rel

    def _filter(self, directory: Path, entries: list[os.DirEntry], export: Export | None) -> list[str]:
        base = self._base(directory)
        self.visited.add(base)
        if export is None:
            dir_key = str(directory) + "/"  # as the journal's trigger derives it from image paths
            digest = self._digest(directory, entries) if base.isprintable() else None
            stored = self.digests.get(dir_key)
            if digest is not None and stored is not None and stored[0] == digest:
                self.skipped[base] = stored[1]
                self.accounted += stored[1]
                return []
        rows = self.store.dir_signatures(self.folder, base)
        live = {key: row for key, row in rows.items() if row[2] not in ("gone", "deleted")}
        self.accounted += len(live)
        if export is None and len(rows) > len(live):
            self._late_companions(directory, base, entries, rows)
        if export is not None:
            rest, accepted = [entry.name for entry in entries], set()
        else:
            rest, accepted = _changed_names(self.root, directory, base, entries, self.rules, live, self.settling_keys)
        for key, row in live.items():
            if key not in accepted:
                self.candidates[key] = row[0]
        if export is None and digest is not None and not rest and len(accepted) == len(live):
            self._save.append((dir_key, base, digest, len(accepted)))
        return rest

    def _late_companions(self, directory: Path, base: str, entries: list[os.DirEntry],
                         rows: dict[str, tuple[int, str | None, str]]) -> None:
        """Note the companions without an image whose key is an item deleted after upload
        (syncd.companions decides what to do with them)."""
        stems: dict[str, bool] = {}  # stem -> has an image
        for entry in entries:
            found = role_of(entry.name)
            if found is not None and not self.rules.ignored(entry.name):
                stems[found[0]] = stems.get(found[0], False) or found[1] == "image"
        for stem, has_image in stems.items():
            row = None if has_image else rows.get(printable(base + stem))
            if row is not None and row[2] == "deleted":
                self.late[printable(base + stem)] = (directory, stem, row[0])

    def _digest(self, directory: Path, entries: list[os.DirEntry]) -> str | None:
        """The directory's digest (see the module docstring), or None when a file cannot be
        stat'ed or a name is not printable (such directories always take the slow path)."""
        try:
            stats = [entry.stat() for entry in entries]  # cached on the entries: reused below
            class_map = find_class_map(directory, self.root)
            class_sig = file_signature(class_map)[0] if class_map is not None else "-"
        except (OSError, ItemError):
            return None
        joined = "/".join([entry.name for entry in entries])
        if not joined.isprintable():
            return None
        digest = hashlib.blake2b(self.salt, digest_size=16)
        digest.update(class_sig.encode())
        digest.update(joined.encode())
        # One column at a time: list comprehensions over the stat results are the cheapest
        # way through 100,000 files (this loop is most of a rescan's Python time).
        for column in ([st.st_size for st in stats], [st.st_mtime_ns for st in stats], [st.st_ino for st in stats],
                       [st.st_mode for st in stats]):
            try:
                digest.update(array("q", column).tobytes())
            except OverflowError:  # an inode number beyond 2**63 (some network filesystems)
                digest.update(repr(column).encode())
        return digest.hexdigest()

    # -- after the walk -------------------------------------------------------------------
    def finish(self) -> None:
        """Store the digests of the directories whose items were all found unchanged."""
        self.store.save_dir_digests(self.folder, self._save)
        self._save = []

    def vanished(self) -> list[tuple[str, int]]:
        """``(key, id)`` of live journal items this (full) scan did not find. Items below a
        directory that could not be read are not among them: they may well be there."""
        missing = [(key, item_id) for key, item_id in self.candidates.items() if key not in self.yielded]
        if self.store.live_count(self.folder) == self.accounted:
            return missing  # every live item is in a directory that was listed
        # Some live items are in directories that were not listed (removed, now ignored, unreadable).
        visited = self.visited
        hidden = tuple(self._base(Path(path)) for path in self.unreadable)
        return missing + [(key, item_id) for key, item_id in self.store.live_items(self.folder)
                          if key[: key.rfind("/") + 1] not in visited and not key.startswith(hidden)]


def _changed_names(root: Path, directory: Path, base: str, entries: list[os.DirEntry], rules: IgnoreRules,
                   known: dict[str, tuple[int, str | None, str]], settling_keys) -> tuple[list[str], set[str]]:
    """The names in ``entries`` that still need the full rules (``group_directory``): all but
    those of plain items whose listing signature equals the journal's settled one. Returns
    them and the keys of the items accepted unchanged."""
    rel = directory.relative_to(root).as_posix()
    rel = "" if rel == "." else rel + "/"
    ignored = rules._name
    by_path = rules.has_path_globs  # rare: only then is a file's path (drafts/*) asked too
    by_stem: dict[str, list] = {}
    for entry in entries:
        name = entry.name
        found = role_of(name)
        if found is None or ignored(name) is not None or (by_path and rules.ignored(name, rel + name)):
            continue  # never part of an item
        stem, role = found
        slot = by_stem.get(stem)
        if slot is None:
            by_stem[stem] = slot = [None, None, None, []]  # image, sidecar, mask; the names of a clash
        index = 0 if role == "image" else 1 if role == "sidecar" else 2
        if slot[index] is not None:
            slot[3].append(slot[index].name)  # two images (sidecars, masks) for one stem: the full rules decide
        slot[index] = entry
    rest: list[str] = []
    accepted: set[str] = set()
    class_map: object = False  # False: not looked up yet
    for stem, (image, sidecar, mask, clash) in by_stem.items():
        if image is None:
            continue  # companions without an image are not items
        parts = None
        if not clash and rules.included(image.name) and unsafe_name(rel + image.name) is None:
            try:
                parts = [_entry_sig(image), "-" if sidecar is None else _entry_sig(sidecar), "-", "-"]
                if mask is not None:
                    parts[2] = _entry_sig(mask)
                    if class_map is False:
                        found_map = find_class_map(directory, root)
                        class_map = file_signature(found_map)[0] if found_map is not None else "-"
                    parts[3] = class_map
            except (OSError, ItemError):
                parts = None  # vanished, special or unreadable: stat_signature reports it properly
        if parts is not None:
            key = printable(base + stem)
            row = known.get(key)
            if row is not None and row[1] == "|".join(parts) and row[2] in SETTLED and key not in settling_keys:
                accepted.add(key)
                continue
        rest += [e.name for e in (image, sidecar, mask) if e is not None] + clash
    return rest, accepted


def _entry_sig(entry: os.DirEntry) -> str:
    """``items.content.file_signature`` of a listed file from its DirEntry (follows symlinks, like os.stat)."""
    st = entry.stat()
    if not stat_module.S_ISREG(st.st_mode):
        raise ItemError("not a regular file")
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
