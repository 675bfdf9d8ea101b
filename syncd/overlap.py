"""Configurations whose folders, destinations or keys overlap: found before anything runs.

``overlap_problems(config, source)`` returns one line per problem (empty when there is none);
``syncd.config.load_config`` turns them into a ``ConfigError`` (exit 2), so ``run``, ``once``
and ``check`` refuse the same configurations. What is refused, and why:

- **A folder watched twice, or one inside another** (not ignored by the outer folder's
  globs): a file there would be two items, delivered twice with two keys.
- **A local target's directory and a watched folder inside one another**: deliveries would
  land in the folder and come back as items (equal: a record overwrites the user's sidecar).
  A destination inside a folder is accepted when the folder's globs ignore it (``.synced/``).
- **Two folders feeding one target whose keys can meet**: their ``key_prefix``es (normalised,
  see ``syncd.keyprefix.normalise_key_prefix``) are equal, or one is where the other's keys could
  begin (``""`` and ``"sub"``: ``sub/x`` of the first is ``x`` of the second).

Paths are compared after symlinks are resolved (``os.path.realpath``), so a symlinked alias of
a folder is the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from syncd.items.convention import IgnoreRules

# ``config`` below is a ``syncd.config.Config`` (not imported: config imports this module).
Config = Any


def overlap_problems(config: Config, source: Path) -> list[str]:
    """Every overlap in ``config`` (read from ``source``) as one line naming both sides."""
    return [f"{source}: {line}" for line in (*_folder_overlaps(config), *_destination_overlaps(config),
                                             *_key_overlaps(config))]


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _inside(inner: str, outer: str) -> str | None:
    """``inner`` relative to ``outer`` when it is strictly inside it, else None."""
    if inner.startswith(outer.rstrip("/") + "/"):
        return inner[len(outer.rstrip("/")) + 1:]
    return None


def _ignores(config: Config, index: int, rel: str) -> bool:
    folder = config.folders[index]
    return IgnoreRules([*config.daemon.ignore, *folder.exclude]).ignored_path(rel)


def _folder_overlaps(config: Config) -> list[str]:
    problems = []
    real = [_real(folder.path) for folder in config.folders]
    for i in range(len(real)):
        for j in range(i + 1, len(real)):
            a, b = config.folders[i].path, config.folders[j].path
            if real[i] == real[j]:
                problems.append(f"folders[{j}].path: {b} is the same folder as folders[{i}].path {a}: "
                                "watch it once and list every target in that one [[folders]] table")
                continue
            for outer, inner in ((i, j), (j, i)):
                rel = _inside(real[inner], real[outer])
                if rel is not None and not _ignores(config, outer, rel):
                    problems.append(
                        f"folders[{inner}].path: {config.folders[inner].path} is inside folders[{outer}].path "
                        f"{config.folders[outer].path}, so its files would be items of both: watch only one, or "
                        f'add exclude = ["{rel}"] to folders[{outer}]')
    return problems


def _destination_overlaps(config: Config) -> list[str]:
    problems = []
    used = config.folder_targets()
    for name, settings in config.target_settings.items():
        if settings.platform != "local" or name not in used:
            continue
        dest = _real(settings.path)
        for index, folder in enumerate(config.folders):
            watched = _real(folder.path)
            where = f"targets.{name}.path: {settings.path}"
            if dest == watched:
                problems.append(f"{where} is the watched folder folders[{index}].path {folder.path}: its records "
                                "would overwrite the sidecars; deliver to a directory outside the folder")
            elif (rel := _inside(dest, watched)) is not None and not _ignores(config, index, rel):
                problems.append(f"{where} is inside the watched folder folders[{index}].path {folder.path}, so "
                                "every delivery would come back as an item; deliver to a directory outside it")
            elif _inside(watched, dest) is not None:
                problems.append(f"{where} contains the watched folder folders[{index}].path {folder.path}: "
                                "deliveries could land in the folder; keep the two apart (side by side)")
    return problems


def _key_overlaps(config: Config) -> list[str]:
    problems = []
    feeding: dict[str, list[int]] = {}
    for index, folder in enumerate(config.folders):
        for target in dict.fromkeys(folder.targets):
            feeding.setdefault(target, []).append(index)
    for target, indexes in feeding.items():
        for n, i in enumerate(indexes):
            for j in indexes[n + 1:]:
                a, b = config.folders[i].key_prefix, config.folders[j].key_prefix
                if a == b:
                    why = "with the same key_prefix"
                elif _begins(a, b) or _begins(b, a):
                    short, long = (i, j) if _begins(a, b) else (j, i)
                    rest = _begins(a, b) or _begins(b, a)
                    why = (f"and a subdirectory {rest}/ of folders[{short}] would have the keys of "
                           f"folders[{long}]")
                else:
                    continue
                problems.append(
                    f"folders[{j}].key_prefix: folders[{i}] (key_prefix {a!r}) and folders[{j}] (key_prefix {b!r}) "
                    f"both feed target {target!r} {why}; give them key_prefixes neither of which begins the other, "
                    "e.g. 'a' and 'b'")
    return problems


def _begins(short: str, long: str) -> str | None:
    """The rest of normalised prefix ``long`` when ``short`` is its first component(s)."""
    if short == "" and long:
        return long
    if long.startswith(short + "/"):
        return long[len(short) + 1:]
    return None
