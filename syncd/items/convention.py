"""The drop-folder convention: which files form an item, and its key.

An item is an image plus optional companions sharing its stem in one directory::

    frame_0001.jpg        the image (.jpg .jpeg .png .tif .tiff .bmp .webp): makes the item exist
    frame_0001.json       the sidecar (syncd.labels.sidecar)
    frame_0001.mask.png   the segmentation mask
    class_map.json        in the item's directory or a parent up to the root

The key is the path relative to the watched root without extension, plus the folder's
``key_prefix``. Names syncd refuses (not UTF-8, control characters, backslashes) make the
item invalid rather than breaking keys, journal rows or log lines (``unsafe_name``).

This module finds items (``role_of``, ``group_directory``, ``probe_item``, ``walk``); what
they contain, and their version, is ``syncd.items.content``. Inside a RedBrick export folder
the masks come from its datapoint map (``syncd.items.redbrick_export``).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from syncd.items.redbrick_export import Export, find_export, load_export
from syncd.labels.classmap import CLASS_MAP_NAME, DATAPOINT_MAP_NAME, find_class_map

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"
SIDECAR_SUFFIX = ".json"
RESERVED_NAMES = frozenset({CLASS_MAP_NAME, DATAPOINT_MAP_NAME})
# Temporary and hidden files of editors, browsers, rsync and friends are never items.
# lost+found: what fsck recovered on a mounted drive (root's alone; never a drop).
DEFAULT_IGNORES = (".*", "*~", "*.swp", "*.swx", "*.tmp", "*.part", "*.crdownload", ".goutputstream-*", "4913", "#*#",
                   "lost+found")


class IgnoreRules:
    """Decides which paths are never items: the defaults, the daemon's and the folder's globs.

    One set of rules for every path, whether a scan lists it or an event names it. Paths are
    relative to the watched folder (``cam1/.Trash-1000/files/c.jpg``); the globs are shell
    globs, case-sensitive, in two kinds:

    - a **name glob** (no ``/``: ``.*``, ``*.raw``, ``drafts``) is matched against every
      component of the path, directories and the file name alike: a directory it matches is
      skipped with everything below it, at any depth;
    - a **path glob** (a ``/`` inside: ``drafts/*``, ``cam*/raw``, ``**/tmp``) is matched
      against the path from the folder's root, a leading ``/`` optional; ``*``, ``?`` and
      ``[...]`` stay within one component and ``**`` spans any number of them. It is tried on
      every directory on the way down as well as on the file, so ``drafts/*`` ignores
      ``drafts/a.jpg`` and ``drafts/old/b.jpg`` alike.

    A trailing ``/`` only says the glob names a directory (``drafts/`` is ``drafts``).
    ``include`` globs are matched against the image's file name.
    """

    def __init__(self, extra: Iterable[str] = (), include: Iterable[str] = ()):
        self.patterns = tuple(DEFAULT_IGNORES) + tuple(extra)
        self.include = tuple(include)
        names, paths = [], []
        for pattern in self.patterns:
            pattern = pattern.rstrip("/") if pattern.strip("/") else pattern
            if "/" in pattern:
                paths.append(_path_glob(pattern.lstrip("/")))
            else:
                names.append(pattern)
        # One compiled alternation per rule set instead of one fnmatchcase call per pattern:
        # the same matches (fnmatchcase compiles fnmatch.translate too), ~10x faster per name,
        # which a rescan of 100,000 files notices.
        self._name = _globs(names)
        self._paths = tuple(paths)
        self._include = _globs(self.include)

    def ignored(self, name: str, relpath: str = "") -> bool:
        """True when the name ``name`` is ignored, or ``relpath`` (its path from the folder's
        root, when given) matches a path glob. Its parent directories are not looked at:
        ``ignored_path`` does that."""
        if self._name(name) is not None:
            return True
        return bool(relpath and self._paths and self._path_matches(relpath.split("/")))

    def ignored_path(self, relpath: str) -> bool:
        """True when ``relpath`` (from the folder's root, ``/``-separated) or any directory on
        the way to it is ignored: what an event's path is asked before anything is read."""
        if not relpath or relpath == ".":
            return False
        parts = relpath.strip("/").split("/")
        name = self._name
        if any(name(part) is not None for part in parts):
            return True
        return bool(self._paths) and any(self._path_matches(parts[:n]) for n in range(1, len(parts) + 1))

    def _path_matches(self, parts: list[str]) -> bool:
        return any(_match_parts(glob, 0, parts, 0) for glob in self._paths)

    @property
    def has_path_globs(self) -> bool:
        """Whether any glob is a path (with a ``/``): only then does a file's path matter."""
        return bool(self._paths)

    def included(self, image_name: str) -> bool:
        return self._include is None or self._include(image_name) is not None


def _globs(patterns: Iterable[str]):
    """``match`` of one regex matching any of the glob ``patterns`` (None when there are none)."""
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


_ANY_DEPTH = None  # a ``**`` component of a path glob


def _path_glob(pattern: str) -> tuple:
    """A path glob as one matcher per component (``_ANY_DEPTH`` for ``**``)."""
    return tuple(_ANY_DEPTH if part == "**" else re.compile(fnmatch.translate(part)).match
                 for part in pattern.split("/") if part)


def _match_parts(glob: tuple, g: int, parts: list[str], p: int) -> bool:
    """Whether ``glob[g:]`` matches ``parts[p:]`` exactly (``**`` takes zero or more parts)."""
    while g < len(glob):
        matcher = glob[g]
        if matcher is _ANY_DEPTH:
            return any(_match_parts(glob, g + 1, parts, q) for q in range(p, len(parts) + 1))
        if p == len(parts) or matcher(parts[p]) is None:
            return False
        g, p = g + 1, p + 1
    return p == len(parts)


def role_of(name: str) -> tuple[str, str] | None:
    """``(stem, role)`` for a file name, role in image/sidecar/mask; None for anything else.

    Image suffixes match in any case (``photo.JPG``); the companions' suffixes are exact
    (``.json``, ``.mask.png``), so a scan and a probe of one stem always agree.
    """
    lower = name.lower()
    if name.endswith(MASK_SUFFIX):
        return name[: -len(MASK_SUFFIX)], "mask"
    if name in RESERVED_NAMES:
        return None
    if name.endswith(SIDECAR_SUFFIX):
        return name[: -len(SIDECAR_SUFFIX)], "sidecar"
    suffix = os.path.splitext(lower)[1]
    if suffix in IMAGE_SUFFIXES:
        return name[: -len(suffix)], "image"
    return None


@dataclass
class ItemFiles:
    """The files of one item as found on disk (absolute paths)."""

    root: Path
    key: str
    image: Path
    sidecar: Path | None = None
    mask: Path | None = None
    class_map: Path | None = None
    extra_images: list[Path] = field(default_factory=list)
    problem: str | None = None  # a name syncd refuses (see unsafe_name); the item is invalid

    def paths(self) -> list[Path]:
        return [p for p in (self.image, self.sidecar, self.mask) if p is not None]


def printable(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes) and control characters as ``\\xNN``.

    File names are bytes on Linux; keys, journal rows and log lines must be valid, single-line
    text, so a name that is not is shown (and keyed) this way and refused (``unsafe_name``).
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 32 or code == 127:
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    return "".join(out)


def unsafe_name(relpath: str) -> str | None:
    """Why a relative path cannot become an item key, or None when it can."""
    if relpath.isprintable() and "\\" not in relpath:
        return None  # the common case: surrogates and control characters are not printable
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in relpath):
        return "is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in relpath):
        return "contains a control character (a newline, a tab...)"
    if "\\" in relpath:
        # ``..\\..\\x`` or ``C:\\x``: some platforms read a backslash as a folder separator.
        return "contains a backslash, which some platforms read as a folder separator"
    return None


def make_key(root: Path, directory: Path, stem: str, prefix: str) -> str:
    rel = directory.relative_to(root).as_posix()
    key = stem if rel == "." else f"{rel}/{stem}"
    return printable(f"{prefix.rstrip('/')}/{key}" if prefix else key)


def relative_path(root: Path, directory: Path) -> str | None:
    """``directory`` (or any path) relative to ``root``, ``/``-separated ("" for the root
    itself), None when outside it. By string when it can: this runs for every event."""
    root_text, text = os.fspath(root), os.fspath(directory)
    if text == root_text:
        return ""
    if text.startswith(root_text) and text[len(root_text):len(root_text) + 1] == "/":
        return text[len(root_text) + 1:].rstrip("/")
    try:
        rel = directory.relative_to(root).as_posix()
    except ValueError:
        return None
    return "" if rel == "." else rel


def _through_symlink(root: Path, rel: str) -> bool:
    """Whether a directory on the way from ``root`` down ``rel`` is a symlink (as walk never
    follows one, a hint for a path through one is not followed either; reading refuses what
    is outside the folder anyway, syncd.items.confined)."""
    path = os.fspath(root)
    for part in rel.split("/") if rel else ():
        path = f"{path}/{part}"
        if os.path.islink(path):
            return True
    return False


def group_directory(root: Path, directory: Path, names: Iterable[str], rules: IgnoreRules, prefix: str,
                    export: Export | None = None) -> Iterator[ItemFiles]:
    """Group the file names of one directory into items (images with their companions).

    Inside a RedBrick ``export`` the masks come from its datapoint map instead.
    """
    by_stem: dict[str, dict[str, list[str]]] = {}
    rel = relative_path(root, directory)
    if rel is None or rules.ignored_path(rel):
        return  # outside the folder, or in an ignored directory (.Trash-1000/, .git/, drafts/...)
    if export is not None:
        names = [n for n in names if directory / n not in export.masks]
    base = f"{rel}/" if rel else ""
    for name in names:
        if rules.ignored(name, base + name):
            continue
        found = role_of(name)
        if found is None:
            continue
        stem, role = found
        by_stem.setdefault(stem, {}).setdefault(role, []).append(name)
    class_map: Path | None | bool = False  # False: not looked up yet
    rel = directory.relative_to(root).as_posix()  # once per directory (as make_key derives it)
    rel = "" if rel == "." else rel + "/"
    key_base = (prefix.rstrip("/") + "/" if prefix else "") + rel
    for stem, roles in sorted(by_stem.items()):
        images = sorted(roles.get("image", []))
        if not images or not rules.included(images[0]):
            continue
        files = ItemFiles(root=root, key=printable(key_base + stem), image=directory / images[0])
        relpath = rel + images[0]
        reason = unsafe_name(relpath)
        if reason:
            files.problem = f"{root.name}/{printable(relpath)}: the file name {reason}: rename it"
        files.extra_images = [directory / n for n in images[1:]]
        if "sidecar" in roles:
            files.sidecar = directory / roles["sidecar"][0]
        if "mask" in roles:
            files.mask = directory / roles["mask"][0]
            if class_map is False:
                class_map = find_class_map(directory, root)
            files.class_map = class_map or None
        if export is not None and files.image in export.mask_of:
            files.mask = export.mask_of[files.image]
            files.class_map = export.class_map
        yield files


_PROBED_SUFFIXES = (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES), SIDECAR_SUFFIX, MASK_SUFFIX)


def probe_item(root: Path, image_dir: Path, stem: str, rules: IgnoreRules, prefix: str) -> ItemFiles | None:
    """Find the item with ``stem`` in ``image_dir`` by probing its possible names (no listing)."""
    base = os.path.join(image_dir, "")
    isfile = os.path.isfile
    present = [stem + suffix for suffix in _PROBED_SUFFIXES if isfile(base + stem + suffix)]
    if not any(role_of(name) == (stem, "image") for name in present):
        # An image suffix in mixed case (photo.Png) is not among the probed names: list the
        # directory, only in this rare case, rather than treat the item as gone.
        try:
            names = [n for n in os.listdir(image_dir) if n.startswith(stem)]
        except OSError:
            names = []
        present = sorted({*present, *(n for n in names if (role_of(n) or ("",))[0] == stem and isfile(base + n))})
    for item in group_directory(root, image_dir, present, rules, prefix, find_export(image_dir, root)):
        if item.key.rsplit("/", 1)[-1] == stem:
            return item
    return None


ListingFilter = Callable[[Path, list[os.DirEntry], "Export | None"], list[str]]
Unreadable = Callable[[Path, OSError], None]


def walk(root: Path, rules: IgnoreRules, prefix: str, *, start: Path | None = None, follow_symlinks: bool = False,
         filter_listing: ListingFilter | None = None, unreadable: Unreadable | None = None) -> Iterator[ItemFiles]:
    """All items below ``start`` (default ``root``), keyed relative to ``root``.

    Depth first; ignored directories (``IgnoreRules``: hidden ones, ``drafts/*``...) are
    skipped with everything below them, ``start`` included; symlinked directories are not
    followed (they could lead outside the watched folder or loop), nor is a ``start`` reached
    through one.

    ``filter_listing(directory, entries, export)``: when given, it receives each directory's
    file entries (``os.DirEntry``, stat results cached on them) and returns the names still
    to group into items; the rescans of ``syncd.scan`` use it to drop unchanged items
    without building an ``ItemFiles`` for each.

    A directory that cannot be listed (no permission: a root-owned ``lost+found``) is skipped;
    ``unreadable(directory, error)`` hears about it. One that vanished is skipped silently.
    """
    first = start or root
    first_rel = relative_path(root, first)
    if first_rel is None or rules.ignored_path(first_rel) or _through_symlink(root, first_rel):
        return  # a hint for a directory that is ignored, outside the folder or reached by a symlink
    stack: list[tuple[str, str, Export | None]] = [(os.fspath(first), first_rel, find_export(first, root))]
    while stack:
        directory, rel, export = stack.pop()
        path = Path(directory)
        export = load_export(path) or export
        base = f"{rel}/" if rel else ""
        entries: list[os.DirEntry] = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=follow_symlinks):
                        if not rules.ignored(entry.name, base + entry.name):
                            stack.append((entry.path, base + entry.name, export))
                    else:
                        entries.append(entry)
        except OSError as exc:
            if unreadable is not None and exc.errno in (errno.EACCES, errno.EPERM):
                unreadable(path, exc)
            continue  # vanished or unreadable directory: the next scan sees it again
        if filter_listing is not None:
            names = filter_listing(path, entries, export)
        else:
            names = [entry.name for entry in entries]
        if names:
            yield from group_directory(root, path, names, rules, prefix, export)
