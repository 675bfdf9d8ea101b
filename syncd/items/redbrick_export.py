"""A RedBrick export folder dropped in, read as items: images with masks from its map.

RedBrick's PNG export (``redbrick export --format png`` / ``redbrick_png()``) writes::

    export/
      class_map.json        class name -> [r, g, b]
      datapoint_map.json    mask file name -> the image's "items" path
      masks/<taskId>.png    (older SDKs: <taskId>.png next to the JSON files)

A folder holding both JSON files is an export (``is_redbrick_export``). Inside such a folder
(and its subfolders) the images named in its ``datapoint_map.json`` get their masks from the
map, the mask files themselves are not items, and the folder's ``class_map.json`` applies
(``load_export``, ``find_export``: what syncd.items.convention groups with). Problems in the
map are logged once per change of the map file.

The image paths in ``datapoint_map.json`` are what was uploaded to RedBrick: a URL, or a
storage path such as ``uuid/images/uuid/frame.png``. syncd reads the folder as items when
the images sit in it: an image path is looked up as given (relative to the folder), then by
its file name in the folder and in ``images/``. Mask keys are looked up in ``masks/`` and
in the folder, with ``.png`` added when the key has no suffix (one SDK version wrote keys
without it). Nothing outside the folder is ever read.

``scan_datapoint_map(dir)`` returns the pairs and a list of per-entry problems (so one bad
entry does not hide the rest); ``read_datapoint_map(dir)`` returns the pairs and raises one
ItemError listing the problems, if any.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from syncd.errors import ItemError
from syncd.labels.classmap import CLASS_MAP_NAME, DATAPOINT_MAP_NAME

log = logging.getLogger("syncd.items.redbrick_export")

# The image suffixes of syncd.items.convention (which imports this module, so not from there).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MAX_MAP_BYTES = 64 * 1024 * 1024
MAX_LISTED = 5


@dataclass(frozen=True)
class DatapointMap:
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def is_redbrick_export(directory: Path) -> bool:
    """True when ``directory`` holds both ``class_map.json`` and ``datapoint_map.json``."""
    # os.path.isfile: False, never an error, for a directory that cannot be read (Path.is_file
    # raises PermissionError there, which stopped whole scans at an unreadable lost+found).
    return os.path.isfile(directory / DATAPOINT_MAP_NAME) and os.path.isfile(directory / CLASS_MAP_NAME)


def _inside(directory: Path, relative: str) -> Path | None:
    """``directory / relative`` when ``relative`` is a plain relative path that stays inside."""
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return directory.joinpath(*pure.parts)


def _first_file(candidates: list[Path | None]) -> Path | None:
    for path in candidates:
        if path is not None and path.is_file():
            return path
    return None


def _mask_path(directory: Path, key: str) -> Path | None:
    names = [key] if PurePosixPath(key).suffix.lower() == ".png" else [key, key + ".png"]
    # masks/ first: in the current layout the folder itself holds the images, whose names may
    # equal mask names.
    return _first_file([_inside(base, name) for name in names for base in (directory / "masks", directory)])


def _image_path(directory: Path, value: str) -> Path | None:
    name = PurePosixPath(value.replace("\\", "/")).name
    absolute = Path(value)
    candidates: list[Path | None] = [_inside(directory, value), _inside(directory, name),
                                     _inside(directory / "images", name)]
    if absolute.is_absolute() and directory.resolve() in absolute.resolve().parents:
        candidates.insert(0, absolute)
    return _first_file(candidates)


def scan_datapoint_map(directory: Path) -> DatapointMap:
    """Read ``directory/datapoint_map.json``: the usable pairs and what is wrong with the rest.

    A missing, unreadable or malformed file (not a JSON object of strings) is an ItemError.
    """
    source = directory / DATAPOINT_MAP_NAME
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ItemError(f"{source}: not found: a RedBrick export folder needs {DATAPOINT_MAP_NAME}") from None
    except PermissionError:
        raise ItemError(f"{source}: permission denied: make it readable by the syncd user") from None
    if len(data) > MAX_MAP_BYTES:
        raise ItemError(f"{source}: larger than {MAX_MAP_BYTES // 2**20} MiB")
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ItemError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ItemError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ItemError(f"{source}: must be a JSON object of mask file name -> image path")
    pairs: list[tuple[Path, Path]] = []
    problems: list[str] = []
    seen: dict[Path, str] = {}
    for key, value in raw.items():
        entry = f"{source.name}[{key!r}]"
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{entry}: the image path must be a non-empty string")
            continue
        if "://" in value:
            problems.append(f"{entry}: the image is a URL ({value}): download it into the folder")
            continue
        if PurePosixPath(value.replace("\\", "/")).suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{entry}: {value!r} is not an image file name ({', '.join(IMAGE_SUFFIXES)})")
            continue
        mask = _mask_path(directory, key)
        if mask is None:
            problems.append(f"{entry}: no mask file {key!r} in the folder or in masks/")
            continue
        image = _image_path(directory, value)
        if image is None:
            problems.append(f"{entry}: image {value!r} not found in the folder or in images/")
            continue
        if image == mask:
            problems.append(f"{entry}: the mask and the image are the same file ({value!r})")
            continue
        if image in seen:
            problems.append(f"{entry}: image {value!r} already has the mask {seen[image]!r}: one mask per image")
            continue
        seen[image] = key
        pairs.append((image, mask))
    return DatapointMap(pairs=pairs, problems=problems)


def read_datapoint_map(directory: Path) -> list[tuple[Path, Path]]:
    """The ``(image_path, mask_path)`` pairs of a RedBrick export folder; any problem is an
    ItemError that lists the first few."""
    result = scan_datapoint_map(Path(directory))
    if result.problems:
        more = len(result.problems) - MAX_LISTED
        raise ItemError("; ".join(result.problems[:MAX_LISTED]) + (f" (and {more} more)" if more > 0 else ""))
    return result.pairs


# -- the folder as items ----------------------------------------------------------------------

_cache: dict[Path, tuple[tuple[int, int], "Export"]] = {}


@dataclass(frozen=True)
class Export:
    directory: Path
    class_map: Path
    mask_of: dict[Path, Path] = field(default_factory=dict)  # image -> mask
    masks: frozenset[Path] = frozenset()


def load_export(directory: Path) -> Export | None:
    """The export in ``directory`` (cached while its map file is unchanged), or None."""
    if not is_redbrick_export(directory):
        return None
    map_path = directory / DATAPOINT_MAP_NAME
    try:
        st = os.stat(map_path)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(directory)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        result = scan_datapoint_map(directory)
    except ItemError as exc:
        log.warning("RedBrick export %s is not usable: %s", directory, exc)
        export = Export(directory, directory / CLASS_MAP_NAME)
    else:
        for problem in result.problems:
            log.warning("RedBrick export %s: %s", directory, problem)
        export = Export(
            directory,
            directory / CLASS_MAP_NAME,
            {image: mask for image, mask in result.pairs},
            frozenset(mask for _, mask in result.pairs),
        )
    _cache[directory] = (stamp, export)
    return export


def find_export(directory: Path, root: Path) -> Export | None:
    """The export that ``directory`` is in (itself or a parent up to ``root``), or None."""
    current = directory
    while True:
        export = load_export(current)
        if export is not None:
            return export
        if current == root or root not in current.parents:
            return None
        current = current.parent
