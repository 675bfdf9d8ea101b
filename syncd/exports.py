"""RedBrick export folders read as items: ``class_map.json`` + ``datapoint_map.json``.

A folder holding both files is an export: its ``datapoint_map.json`` names, for each mask
file, the image it belongs to (see syncd.datapoint_map). Inside such a folder (and its
subfolders) those images get their masks from the map, the mask files themselves are not
items, and the folder's ``class_map.json`` applies. Problems in the map are logged once per
change of the map file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from syncd.classmap import CLASS_MAP_NAME
from syncd.datapoint_map import DATAPOINT_MAP_NAME, is_redbrick_export, scan_datapoint_map
from syncd.errors import ItemError

log = logging.getLogger("syncd.exports")

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
