"""The drop-folder convention: which files form an item, its key, its version.

An item is an image plus optional companions sharing its stem in one directory::

    frame_0001.jpg        the image (.jpg .jpeg .png .tif .tiff .bmp .webp): makes the item exist
    frame_0001.json       the sidecar (syncd.sidecar)
    frame_0001.mask.png   the segmentation mask
    class_map.json        in the item's directory or a parent up to the root

The key is the path relative to the watched root without extension, plus the folder's
``key_prefix``. The version is a SHA-256 over the image bytes, the canonical sidecar, the
mask bytes and (for masked items) the class map, so a rename of whitespace in a sidecar is
not a change but any content change is.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import os
import re
import stat as stat_module
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from syncd.classmap import find_class_map
from syncd.errors import ItemError
from syncd.exports import Export, find_export, load_export
from syncd.sidecar import Sidecar, canonical, parse_sidecar
from syncd.targets.base import Receipt, Upload

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"
SIDECAR_SUFFIX = ".json"
CLASS_MAP_NAME = "class_map.json"
RESERVED_NAMES = frozenset({CLASS_MAP_NAME, "datapoint_map.json"})
# Temporary and hidden files of editors, browsers, rsync and friends are never items.
DEFAULT_IGNORES = (".*", "*~", "*.swp", "*.swx", "*.tmp", "*.part", "*.crdownload", ".goutputstream-*", "4913", "#*#")
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC: every complete PNG has it
FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP",
}


class IgnoreRules:
    """Decides which names are never items: the defaults, the daemon's and the folder's globs."""

    def __init__(self, extra: Iterable[str] = (), include: Iterable[str] = ()):
        self.patterns = tuple(DEFAULT_IGNORES) + tuple(extra)
        self.include = tuple(include)
        # One compiled alternation per rule set instead of one fnmatchcase call per pattern:
        # the same matches (fnmatchcase compiles fnmatch.translate too), ~10x faster per name,
        # which a rescan of 100,000 files notices.
        self._name = _globs(self.patterns)
        self._path = _globs(p for p in self.patterns if "/" in p)
        self._include = _globs(self.include)

    def ignored(self, name: str, relpath: str = "") -> bool:
        if self._name(name) is not None:
            return True
        return bool(relpath and self._path is not None and self._path(relpath) is not None)

    def included(self, image_name: str) -> bool:
        return self._include is None or self._include(image_name) is not None


def _globs(patterns: Iterable[str]):
    """``match`` of one regex matching any of the glob ``patterns`` (None when there are none)."""
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


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


def group_directory(root: Path, directory: Path, names: Iterable[str], rules: IgnoreRules, prefix: str,
                    export: Export | None = None) -> Iterator[ItemFiles]:
    """Group the file names of one directory into items (images with their companions).

    Inside a RedBrick ``export`` the masks come from its datapoint map instead.
    """
    by_stem: dict[str, dict[str, list[str]]] = {}
    if export is not None:
        names = [n for n in names if directory / n not in export.masks]
    for name in names:
        if rules.ignored(name):
            continue
        found = role_of(name)
        if found is None:
            continue
        stem, role = found
        by_stem.setdefault(stem, {}).setdefault(role, []).append(name)
    class_map: Path | None | bool = False  # False: not looked up yet
    for stem, roles in sorted(by_stem.items()):
        images = sorted(roles.get("image", []))
        if not images or not rules.included(images[0]):
            continue
        files = ItemFiles(root=root, key=make_key(root, directory, stem, prefix), image=directory / images[0])
        relpath = (directory / images[0]).relative_to(root).as_posix()
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


def walk(root: Path, rules: IgnoreRules, prefix: str, *, start: Path | None = None, follow_symlinks: bool = False,
         filter_listing: ListingFilter | None = None) -> Iterator[ItemFiles]:
    """All items below ``start`` (default ``root``), keyed relative to ``root``.

    Depth first; hidden and ignored directories are skipped; symlinked directories are not
    followed (they could lead outside the watched folder or loop).

    ``filter_listing(directory, entries, export)``: when given, it receives each directory's
    file entries (``os.DirEntry``, stat results cached on them) and returns the names still
    to group into items; the rescans of ``syncd.scan`` use it to drop unchanged items
    without building an ``ItemFiles`` for each.
    """
    first = start or root
    stack: list[tuple[str, Export | None]] = [(os.fspath(first), find_export(first, root))]
    while stack:
        directory, export = stack.pop()
        path = Path(directory)
        export = load_export(path) or export
        entries: list[os.DirEntry] = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=follow_symlinks):
                        if not rules.ignored(entry.name):
                            stack.append((entry.path, export))
                    else:
                        entries.append(entry)
        except OSError:
            continue  # vanished or unreadable directory: the next scan sees it again
        if filter_listing is not None:
            names = filter_listing(path, entries, export)
        else:
            names = [entry.name for entry in entries]
        if names:
            yield from group_directory(root, path, names, rules, prefix, export)


def _file_sig(path: Path | None) -> tuple[str, float]:
    if path is None:
        return "-", 0.0
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ItemError(f"{path}: a broken symlink (its target {os.readlink(path)!r} does not exist)") from None
        raise
    except PermissionError:
        raise ItemError(f"{path}: permission denied: make it readable by the syncd user") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            hint = " (a symlink loop?)" if exc.errno == errno.ELOOP else ""
            raise ItemError(f"{printable(str(path))}: {exc.strerror}{hint}") from None
        raise
    if not stat_module.S_ISREG(st.st_mode):
        raise ItemError(f"{path}: not a regular file")
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}", max(st.st_mtime, st.st_ctime)


def stat_signature(files: ItemFiles) -> tuple[str, float]:
    """``(signature, quiet_since)``: size, mtime_ns and inode of every file of the item.

    ``quiet_since`` is the latest mtime/ctime among them (wall clock). Raises OSError when a
    file vanished between listing and stat, ItemError when the item cannot be read at all.
    """
    if files.problem:
        raise ItemError(files.problem)
    sigs, quiet = [], 0.0
    for path in (files.image, files.sidecar, files.mask, files.class_map):
        sig, since = _file_sig(path)
        sigs.append(sig)
        quiet = max(quiet, since)
    return "|".join(sigs), quiet


@dataclass
class ItemContent:
    """An item's bytes as read from disk, validated."""

    image: bytes
    image_format: str
    width: int
    height: int
    sidecar: Sidecar
    mask: bytes | None
    class_map: dict | None
    version: str
    image_sha256: str
    label_errors: list[str] = field(default_factory=list)  # labels/mask left out, and why


def display_name(files: ItemFiles, path: Path) -> str:
    try:
        return f"{files.root.name}/{path.relative_to(files.root).as_posix()}"
    except ValueError:
        return str(path)


def _read(path: Path, files: ItemFiles) -> bytes:
    if path.is_symlink() and not path.resolve().is_relative_to(files.root.resolve()):
        raise ItemError(
            f"{display_name(files, path)}: a symlink leading outside the watched folder is refused: copy the file in instead"
        )
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ItemError(f"{display_name(files, path)}: the file disappeared before it could be read") from None
    except PermissionError:
        raise ItemError(
            f"{display_name(files, path)}: permission denied: make it readable by the syncd user (chmod/chown)"
        ) from None
    except IsADirectoryError:
        raise ItemError(f"{display_name(files, path)}: is a directory, not a file") from None
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise ItemError(f"{display_name(files, path)}: I/O error reading the file (failing disk?)") from None
        raise ItemError(f"{display_name(files, path)}: cannot read: {exc.strerror}") from None


# Images (by SHA-256) that decoded completely in this process, most recent last: an item is
# decoded when it settles, and its upload workers re-read the same bytes (verified against the
# version, which covers their hash) — one full decode of those bytes is enough.
_DECODED_MAX = 2048
_decoded: OrderedDict[str, tuple[str, int, int]] = OrderedDict()
_decoded_lock = threading.Lock()


def decode_image(data: bytes, *, name: str, expected_format: str, max_pixels: int,
                 sha256: str | None = None) -> tuple[str, int, int]:
    """Fully decode image bytes; return ``(format, width, height)`` or raise ItemError.

    ``sha256`` (the hash of ``data``): bytes with this hash that decoded completely before
    in this process are not decoded again.
    """
    if sha256 is not None:
        with _decoded_lock:
            known = _decoded.get(sha256)
        if known is not None and known[0] == expected_format and known[1] * known[2] <= max_pixels:
            return known
    result = _decode_image(data, name=name, expected_format=expected_format, max_pixels=max_pixels)
    if sha256 is not None:
        with _decoded_lock:
            _decoded[sha256] = result
            _decoded.move_to_end(sha256)
            while len(_decoded) > _DECODED_MAX:
                _decoded.popitem(last=False)
    return result


def _decode_image(data: bytes, *, name: str, expected_format: str, max_pixels: int) -> tuple[str, int, int]:
    if not data:
        raise ItemError(f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ItemError(
                        f"{name}: {width}x{height} pixels exceeds max_image_pixels={max_pixels} "
                        "(a decompression bomb?): raise [daemon] max_image_pixels if it is genuine"
                    )
                fmt = image.format or "?"
                if fmt == "JPEG":
                    # Decode at 1/8 scale: libjpeg still entropy-decodes every block (so a cut
                    # or corrupt file fails exactly as in a full decode: checked on 1,200
                    # fuzzed files) but skips most of the inverse DCT and colour work, which
                    # halves the cost of validating a camera frame.
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except ItemError:
        raise
    except UnidentifiedImageError:
        raise ItemError(
            f"{name}: not an image pillow can read (the content is not JPEG/PNG/TIFF/BMP/WebP): replace the file"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError(f"{name}: refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ItemError(f"{name}: the image is truncated or corrupt: {exc}") from None
    except Exception as exc:  # pillow raises odd things on hostile input
        raise ItemError(f"{name}: the image cannot be decoded: {type(exc).__name__}: {exc}") from None
    if fmt != expected_format and not (expected_format == "TIFF" and fmt == "TIFF"):
        raise ItemError(
            f"{name}: the file is a {fmt} image but its name says {expected_format}: rename it with the right extension"
        )
    # pillow decodes a PNG that lacks its last bytes (the end chunk, even some of the pixel
    # data's checksum): without this a file caught mid-write would be delivered.
    if fmt == "PNG" and data.rfind(PNG_END) == -1:
        raise ItemError(f"{name}: the image is truncated or corrupt: the PNG file has no end chunk (IEND); "
                        "it is cut short or still being written")
    return fmt, width, height


def read_item(files: ItemFiles, *, max_pixels: int, validate_labels=None, validate_mask=None) -> ItemContent:
    """Read and validate every file of an item and compute its version.

    ``validate_labels(labels, width, height, name)`` and ``validate_mask(mask, class_map_bytes,
    width, height, name)`` hook the label and mask checks in; each raises ItemError.
    """
    if files.extra_images:
        others = ", ".join(p.name for p in files.extra_images)
        raise ItemError(
            f"{display_name(files, files.image)}: other images share its stem ({others}): "
            "one item has one image; rename one of them"
        )
    image_name = display_name(files, files.image)
    image = _read(files.image, files)
    image_sha = hashlib.sha256(image).hexdigest()
    suffix = files.image.suffix.lower()
    fmt, width, height = decode_image(image, name=image_name, expected_format=FORMAT_BY_SUFFIX[suffix],
                                      max_pixels=max_pixels, sha256=image_sha)
    sidecar = Sidecar()
    if files.sidecar is not None:
        sidecar = parse_sidecar(_read(files.sidecar, files), name=display_name(files, files.sidecar))
    mask = _read(files.mask, files) if files.mask is not None else None
    class_map_bytes = _read(files.class_map, files) if (mask is not None and files.class_map) else None
    # The version covers what the user wrote (raw labels, mask, class map): fixing a bad label
    # or mask changes it, and the item is delivered again with them.
    digest = hashlib.sha256()
    for part in (image_sha.encode(), canonical(sidecar), mask or b"", class_map_bytes or b""):
        digest.update(hashlib.sha256(part).digest())
    # Bad labels or a bad mask do not hold the image back: it is delivered without them and the
    # problem is reported (status, once) until the files are fixed.
    label_errors: list[str] = []
    if validate_labels is not None and sidecar.labels:
        try:
            sidecar.labels = validate_labels(sidecar.labels, width, height, display_name(files, files.sidecar))
        except ItemError as exc:
            label_errors.append(str(exc))
            sidecar.labels = []
    class_map = None
    if mask is not None and validate_mask is not None:
        try:
            class_map = validate_mask(mask, class_map_bytes, width, height, display_name(files, files.mask))
        except ItemError as exc:
            label_errors.append(str(exc))
            mask = None
    return ItemContent(
        image=image,
        image_format=fmt,
        width=width,
        height=height,
        sidecar=sidecar,
        mask=mask,
        class_map=class_map,
        version=digest.hexdigest()[:32],
        image_sha256=image_sha,
        label_errors=label_errors,
    )


def to_upload(files: ItemFiles, content: ItemContent, previous: Receipt | None) -> Upload:
    return Upload(
        key=files.key,
        version=content.version,
        image_name=files.image.name,
        image=content.image,
        image_sha256=content.image_sha256,
        image_format=content.image_format,
        width=content.width,
        height=content.height,
        metadata=content.sidecar.metadata,
        labels=list(content.sidecar.labels),
        source_path=files.image,
        mask=content.mask,
        class_map=content.class_map,
        previous=previous,
    )
