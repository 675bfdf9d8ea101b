"""An item's content: cheap change detection, then its bytes read, decoded, validated and versioned.

``stat_signature`` is size, mtime and inode of every file of an item (and the names of other
images sharing its stem): what a scan compares before reading anything. An item found invalid
is recorded at its ``invalid_signature``, which adds the files' ctimes: a change of their mode,
owner or ACL alone (``chmod 644`` on an unreadable image) reads it again. ``read_item`` reads
the files of an ``ItemFiles`` (syncd.items.convention), fully decodes the image
(syncd.items.image), parses the sidecar, runs the label and mask checks it is given
(syncd.labels.validate) and returns an ``ItemContent``; every problem with the input is an
``ItemError`` naming the file and what to do.

The version is a SHA-256 over the image bytes, the canonical sidecar, the mask bytes and (for
masked items) the class map, so a change of whitespace in a sidecar is not a change but any
content change is. ``to_upload`` turns files and content into the ``Upload`` a target sends.

The read path (read once): what settling read is kept in a ``ContentCache`` (bounded by
bytes, keyed by item and stat signature) for the upload workers; ``verified`` re-hashes the
cached bytes against the journaled version before they are sent. On a miss (a restart, an
eviction, a file changed since) ``read_item(..., expect_version=v)`` reads and hashes the
files again and raises ``Changed`` when they are not version ``v`` any more; when they are,
the image is not decoded a second time (those very bytes were decoded when they settled).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from syncd.errors import ItemError
from syncd.items.confined import NotRegular, OutsideFolder, read_inside
from syncd.items.convention import ItemFiles, printable
from syncd.items.image import check_image, image_header
from syncd.labels.sidecar import Sidecar, canonical, parse_sidecar
from syncd.targets.base import Receipt, Upload

FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP",
}


def file_signature(path: Path | None) -> tuple[str, float]:
    """``(size:mtime_ns:inode, latest of mtime and ctime)`` of one file; ``("-", 0.0)`` for None."""
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
        sig, since = file_signature(path)
        sigs.append(sig)
        quiet = max(quiet, since)
    if files.extra_images:  # a clash (invalid): removing the other image must change the signature
        sigs.append("+" + ",".join(sorted(path.name for path in files.extra_images)))
    return "|".join(sigs), quiet


def cached_size(sig: str) -> int:
    """The bytes an item's content will hold in the ``ContentCache`` (``ItemContent.size``:
    image and mask), known from its ``stat_signature`` before it is read: at most the image's
    and the mask's file sizes (a mask found invalid is left out). 0 when ``sig`` says nothing."""
    parts = sig.split("|")
    total = 0
    for part in (parts[0], parts[2] if len(parts) > 2 else "-"):
        size = part.split(":", 1)[0]
        total += int(size) if size.isdigit() else 0
    return total


def invalid_signature(files: ItemFiles, sig: str) -> str:
    """``sig`` (the files' ``stat_signature``) with the ctimes of the image, sidecar and mask:
    what an invalid item is recorded at and compared with. A chmod, chown or ACL change
    touches only the ctime, and may be what makes the item readable; a ready item is compared
    without them (a chmod of a delivered file is no new version). ``#?`` when a file cannot be
    stat'ed: never equal, so the next look reads it again."""
    return sig + "#" + ctimes(files.image, files.sidecar, files.mask)


def ctimes(*paths: Path | None) -> str:
    """The ctimes (ns) of ``paths`` as ``invalid_signature`` writes them."""
    parts = []
    for path in paths:
        if path is None:
            parts.append("-")
            continue
        try:
            parts.append(str(os.stat(path).st_ctime_ns))
        except OSError:
            return "?"
    return ",".join(parts)


class Changed(Exception):
    """The files are no longer the version the caller expected (``read_item``)."""


@dataclass
class ItemContent:
    """An item's bytes as read from disk, validated.

    ``parts``: SHA-256 digests of the canonical sidecar, the raw mask and the class map;
    with ``image_sha256`` they make the version (``item_version``), so cached content can
    be verified by re-hashing only the bytes that are sent (``verified``).
    """

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
    parts: tuple[bytes, bytes, bytes] = (b"", b"", b"")
    orientation: int = 1  # a JPEG's EXIF orientation; width and height are as displayed

    @property
    def size(self) -> int:
        """Bytes held in memory (for the cache's bound)."""
        return len(self.image) + len(self.mask or b"")


def item_version(image_sha256: str, parts: tuple[bytes, bytes, bytes]) -> str:
    """The version of an item from its image hash and the digests of its other parts."""
    digest = hashlib.sha256(hashlib.sha256(image_sha256.encode()).digest())
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:32]


def verified(content: ItemContent, version: str) -> bool:
    """True when ``content`` is exactly ``version``: its image and mask bytes are hashed
    again now (a cached copy must never send the bytes of another version)."""
    if content.version != version or item_version(content.image_sha256, content.parts) != version:
        return False
    if hashlib.sha256(content.image).hexdigest() != content.image_sha256:
        return False
    return content.mask is None or hashlib.sha256(content.mask).digest() == content.parts[1]


class ContentCache:
    """Settled content waiting to be sent, by item id and stat signature, most recent last,
    bounded by ``max_bytes`` (the oldest go first). Shared by the coordinator (``put``,
    ``drop``, ``room``) and the upload workers (``claim``).

    Read once, sent once: an entry is put with the number of targets that will send it
    (``uses``) and leaves when the last of them claimed it, so what waits to be sent is what
    the cache holds. Settling reads an item only when its content fits in what is ``free``
    (its size is known from its stat signature before it is read: ``cached_size``), so
    ``put`` pushes nothing out while deliveries are on their way; only when nothing is on its
    way (a paused target) does settling read on and the oldest entries go. ``want_room``
    asks for ``on_room`` to be called (from a worker's ``claim``) once an entry leaves."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, tuple[str, ItemContent, ItemFiles | None]] = OrderedDict()
        self._uses: dict[int, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.wanted = False  # settling waits for room: call on_room when an entry leaves
        self.hits = self.misses = 0  # claims that found the item's content, and that did not
        self.on_room: Callable[[], None] = lambda: None

    def put(self, item_id: int, sig: str, content: ItemContent, files: ItemFiles | None = None, *,
            uses: int = 1) -> None:
        """Keep ``content`` read from ``files`` at stat signature ``sig`` for ``uses`` sends."""
        if content.size > self.max_bytes:
            return
        with self._lock:
            self._pop(item_id)
            self._entries[item_id] = (sig, content, files)
            self._uses[item_id] = uses
            self._bytes += content.size
            while self._bytes > self.max_bytes:
                self._pop(next(iter(self._entries)))

    def free(self) -> int:
        """Bytes that can be put without pushing anything out."""
        with self._lock:
            return max(0, self.max_bytes - self._bytes)

    def fits(self, size: int, free: int) -> bool:
        """Whether content of ``size`` bytes can be read now, ``free`` bytes being left: it
        fits, or it is too large to be kept at all (``put`` ignores it: it takes no room)."""
        return size <= free or size > self.max_bytes

    def want_room(self, size: int) -> bool:
        """True when ``size`` bytes fit now; else ``on_room`` is called when an entry leaves
        (checked and asked for at once: a claim on a worker cannot slip in between)."""
        with self._lock:
            if self.fits(size, self.max_bytes - self._bytes):
                return True
            self.wanted = True
            return False

    def claim(self, item_id: int) -> tuple[str, ItemContent, ItemFiles | None] | None:
        """``entry``, for a send: the last of its ``uses`` takes it out of the cache."""
        with self._lock:
            entry = self._entries.get(item_id)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._uses[item_id] -= 1
            if self._uses[item_id] > 0:
                return entry
            self._pop(item_id)
            wake, self.wanted = self.wanted, False
        if wake:
            self.on_room()
        return entry

    def entry(self, item_id: int) -> tuple[str, ItemContent, ItemFiles | None] | None:
        """``(sig, content, files)`` cached for the item, whatever its signature, or None."""
        with self._lock:
            return self._entries.get(item_id)

    def drop(self, item_id: int) -> None:
        with self._lock:
            wake = self._pop(item_id) and self.wanted
            if wake:
                self.wanted = False
        if wake:
            self.on_room()

    def _pop(self, item_id: int) -> bool:
        entry = self._entries.pop(item_id, None)
        if entry is not None:
            self._bytes -= entry[1].size
            del self._uses[item_id]
        return entry is not None

    def __len__(self) -> int:
        return len(self._entries)


def display_name(files: ItemFiles, path: Path) -> str:
    """``path`` as messages show it: from the watched folder's name down (``inbox/cam1/f.png``)."""
    root, text = str(files.root), str(path)  # strings: this runs for every file read
    if text.startswith(root) and text[len(root):len(root) + 1] == "/":
        return f"{files.root.name}{text[len(root):]}"
    return text


def _read(path: Path, files: ItemFiles) -> bytes:
    """The bytes of one file of the item, read only if it is inside the watched folder at
    the moment it is read (``syncd.items.confined``); every problem is an ItemError."""
    try:
        return read_inside(path, files.root)
    except OutsideFolder as exc:
        if os.path.islink(path):
            raise ItemError(
                f"{display_name(files, path)}: a symlink leading outside the watched folder is refused: "
                "copy the file in instead"
            ) from None
        raise ItemError(
            f"{display_name(files, path)}: leads outside the watched folder (to {printable(exc.real)}): a "
            "directory on its path was replaced by a symlink; symlinked directories are refused: move the "
            "files in instead"
        ) from None
    except NotRegular:
        raise ItemError(f"{display_name(files, path)}: not a regular file") from None
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


def read_item(files: ItemFiles, *, max_pixels: int, image_check: str = "structure", validate_labels=None,
              validate_mask=None, expect_version: str | None = None) -> ItemContent:
    """Read and validate every file of an item and compute its version.

    ``validate_labels(labels, width, height, name)`` and ``validate_mask(mask, class_map_bytes,
    width, height, name)`` hook the label and mask checks in; each raises ItemError.

    ``image_check``: how the image is checked (``syncd.items.image.check_image``).

    ``expect_version``: the files must still be this (settled, so validated) version: raises
    ``Changed`` when they are not, and does not decode the image again when they are.
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
    expected_format = FORMAT_BY_SUFFIX[files.image.suffix.lower()]
    if expect_version is None:
        fmt, width, height, orientation = check_image(image, name=image_name, expected_format=expected_format,
                                                      max_pixels=max_pixels, sha256=image_sha, check=image_check)
    sidecar = Sidecar()
    if files.sidecar is not None:
        sidecar = parse_sidecar(_read(files.sidecar, files), name=display_name(files, files.sidecar))
    mask = _read(files.mask, files) if files.mask is not None else None
    class_map_bytes = _read(files.class_map, files) if (mask is not None and files.class_map) else None
    # The version covers what the user wrote (raw labels, mask, class map): fixing a bad label
    # or mask changes it, and the item is delivered again with them.
    parts = (hashlib.sha256(canonical(sidecar)).digest(), hashlib.sha256(mask or b"").digest(),
             hashlib.sha256(class_map_bytes or b"").digest())
    version = item_version(image_sha, parts)
    if expect_version is not None:
        if version != expect_version:
            raise Changed(f"{image_name}: changed since it settled")
        fmt, width, height, orientation = image_header(image, name=image_name)
    # Bad labels or a bad mask do not hold the image back: it is delivered without them and the
    # problem is reported (status, once) until the files are fixed. Both are read in the
    # displayed orientation (width and height above), which a turned JPEG's error says.
    label_errors: list[str] = []
    if validate_labels is not None and sidecar.labels:
        try:
            sidecar.labels = validate_labels(sidecar.labels, width, height, display_name(files, files.sidecar))
        except ItemError as exc:
            label_errors.append(_as_displayed(str(exc), width, height, orientation))
            sidecar.labels = []
    class_map = None
    if mask is not None and validate_mask is not None:
        try:
            class_map = validate_mask(mask, class_map_bytes, width, height, display_name(files, files.mask))
        except ItemError as exc:
            label_errors.append(_as_displayed(str(exc), width, height, orientation))
            mask = None
    return ItemContent(
        image=image,
        image_format=fmt,
        width=width,
        height=height,
        sidecar=sidecar,
        mask=mask,
        class_map=class_map,
        version=version,
        image_sha256=image_sha,
        label_errors=label_errors,
        parts=parts,
        orientation=orientation,
    )


def _as_displayed(error: str, width: int, height: int, orientation: int) -> str:
    if orientation == 1:
        return error
    return (f"{error} (the image is {width}x{height} as displayed, turned by its EXIF orientation {orientation}: "
            "labels and masks are in the displayed orientation)")


def to_upload(files: ItemFiles, content: ItemContent, previous: Receipt | None, *,
              outcome_unknown_at_start: bool = False) -> Upload:
    return Upload(
        key=files.key,
        version=content.version,
        image_name=files.image.name,
        image=content.image,
        image_sha256=content.image_sha256,
        image_format=content.image_format,
        width=content.width,
        height=content.height,
        orientation=content.orientation,
        metadata=content.sidecar.metadata,
        labels=list(content.sidecar.labels),
        source_path=files.image,
        mask=content.mask,
        class_map=content.class_map,
        previous=previous,
        outcome_unknown_at_start=outcome_unknown_at_start,
    )
