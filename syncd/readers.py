"""Complete items read in parallel: decoded, validated and hashed into their version.

Decoding and hashing release the GIL, so a burst of complete items is read by
``READERS`` threads at once: one part per thread, the caller's included (not one task per
item, whose overhead a small frame does not pay back).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from syncd.errors import ItemError
from syncd.items.content import ItemContent, read_item
from syncd.items.convention import ItemFiles

READERS = min(4, os.cpu_count() or 1)  # threads reading complete items in parallel


class Readers:
    """``read(items)``: each item's content, or the ItemError that makes it invalid, in order."""

    def __init__(self, read_options: dict):
        self.read_options = read_options
        self._pool: ThreadPoolExecutor | None = None

    def read(self, items: list[ItemFiles]) -> list[ItemContent | ItemError]:
        if len(items) == 1 or READERS < 2:
            return _load(items, self.read_options)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READERS - 1, thread_name_prefix="read")
        parts = [items[i::READERS] for i in range(READERS)]
        others = [self._pool.submit(_load, part, self.read_options) for part in parts[1:] if part]
        loaded = [_load(parts[0], self.read_options)] + [future.result() for future in others]
        results: list[ItemContent | ItemError] = [None] * len(items)  # type: ignore[list-item]
        for start, part_results in enumerate(loaded):
            results[start::READERS] = part_results
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _load(items: list[ItemFiles], read_options: dict) -> list[ItemContent | ItemError]:
    results: list[ItemContent | ItemError] = []
    for files in items:
        try:
            results.append(read_item(files, **read_options))
        except ItemError as exc:
            results.append(exc)
    return results
