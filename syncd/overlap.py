"""Configurations whose folders, destinations or keys overlap: found before anything runs.

``overlap_problems(config, source)`` returns one line per problem (empty when there is none);
``syncd.config.load_config`` turns them into a ``ConfigError`` (exit 2), so ``run``, ``once``
and ``check`` refuse the same configurations. What is refused, and why:

- **Two folders feeding one target whose keys can meet**: their ``key_prefix``es (normalised,
  see ``syncd.config.normalise_key_prefix``) are equal, or one is where the other's keys could
  begin (``""`` and ``"sub"``: ``sub/x`` of the first is ``x`` of the second).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.config import Config


def overlap_problems(config: Config, source: Path) -> list[str]:
    """Every overlap in ``config`` (read from ``source``) as one line naming both sides."""
    return [f"{source}: {line}" for line in _key_overlaps(config)]


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
