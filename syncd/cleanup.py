"""Removing an item's local files once it is delivered: never anything else.

Two callers: ``after_upload = "delete"`` (syncd.dispatch, as soon as every target of the
folder acked the item) and retention (syncd.diskguard, the oldest acknowledged items when the
watched filesystem runs low). Both go through ``delete_acked``, which removes an item's files
only when every target of its folder acked exactly its current version AND its files are
still what was acked (same stat signature): a file that changed since is a new version to
deliver, not something to remove.
"""

from __future__ import annotations

import logging

from syncd.errors import ItemError
from syncd.folders import Folder
from syncd.items.content import stat_signature
from syncd.journal.queries import JournalReader

log = logging.getLogger("syncd.cleanup")


def delete_acked(store: JournalReader, folder: Folder, item_id: int, key: str) -> int | None:
    """Delete the files of item ``key`` of ``folder`` if every target of the folder acked its
    current version and its files did not change since. Returns the bytes freed (the files'
    sizes), or None when nothing was deleted (not acked everywhere, changed, gone, or a file
    could not be removed: that one is logged)."""
    if not store.fully_acked(item_id, folder.targets):
        return None
    acked_sig = store.item_stat_sig(item_id)
    files = folder.probe(key)
    if files is None:
        return None
    try:
        sig, _ = stat_signature(files)
    except (OSError, ItemError):
        return None
    if sig != acked_sig:
        return None  # changed since the acked version: keep it, it will be delivered again
    freed = 0
    for path in files.paths():
        try:
            size = path.lstat().st_size
            path.unlink()
            freed += size
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot delete %s: %s", path, exc.strerror)
            return None
    return freed
