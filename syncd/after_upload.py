"""After upload: what happens to an item's local files once every target has it.

With ``after_upload = "delete"`` the files of an item every target of its folder acked at
its current version are removed, once the pass that recorded the ack committed and only if
they did not change since (``committed``). The removal is journaled (state ``deleted``) by
the next pass (``record``); until then the settler knows that these files' absence is not
the item gone (``deleting``), so a file event or a scan in between neither logs "is gone"
nor overwrites the count of what was delivered and deleted.
"""

from __future__ import annotations

import logging
import threading

from syncd.errors import ItemError
from syncd.folders import Folders
from syncd.items.content import ContentCache, stat_signature
from syncd.journal.store import Store

log = logging.getLogger("syncd.dispatch")


class AfterUpload:
    """See the module docstring. ``deleting`` is shared with the settler."""

    def __init__(self, folders: Folders, cache: ContentCache, wake: threading.Event, deleting: set[int]):
        self.folders = folders
        self.cache = cache
        self.wake = wake
        self.deleting = deleting
        self.store: Store | None = None  # set once the journal is open
        self.acked: list[tuple[int, str, str]] = []  # (item id, folder, key) of this pass, handled once committed
        self.deleted: list[int] = []  # files removed: journaled by the next pass

    def delivered(self, item_id: int, folder: str, key: str) -> None:
        """The item was acked (or settled at a version every target has) in this pass."""
        self.acked.append((item_id, folder, key))

    def committed(self) -> None:
        """The pass that recorded the acks committed: apply after_upload to each."""
        acked, self.acked = self.acked, []
        for item_id, folder, key in acked:
            self._apply(item_id, folder, key)

    def record(self, now: float) -> None:
        """Journal the items whose files were removed (in the pass transaction)."""
        assert self.store is not None
        deleted, self.deleted = self.deleted, []
        for item_id in deleted:
            self.store.gone(item_id, now, state="deleted")
            self.deleting.discard(item_id)

    def _apply(self, item_id: int, folder_name: str, key: str) -> None:
        folder = self.folders.named(folder_name)
        if folder is None:
            return
        if len(folder.targets) == 1:
            self.cache.drop(item_id)
        if folder.settings.after_upload != "delete":
            return
        assert self.store is not None
        if not self.store.fully_acked(item_id, folder.targets):
            return
        acked_sig = self.store.item_stat_sig(item_id)
        files = folder.probe(key)
        if files is None:
            return
        try:
            sig, _ = stat_signature(files)
        except (OSError, ItemError):
            return
        if sig != acked_sig:
            return  # changed since the acked version: keep it, it will be delivered again
        self.deleting.add(item_id)
        for path in files.paths():
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot delete %s after upload: %s", path, exc.strerror)
                self.deleting.discard(item_id)
                return
        log.info("deleted local files of %s after every target acked it", key)
        self.deleted.append(item_id)
        self.wake.set()  # the next pass journals it
