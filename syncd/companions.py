"""Late companions: a sidecar or mask that arrives after its image was delivered and deleted.

With ``after_upload = "delete"`` an item's files are removed once every target has it. A
companion (``frame.json``, ``frame.mask.png``) that arrives later belongs to that item, whose
image is gone: it is a change of the item, and is delivered as one. When a target of the
folder can give the delivered image back (``Target.stored_image``: the local target reads it
from its dataset, checked against the hash it recorded), the image is put back at its old path
beside the companion: the item settles again, whole, is delivered to every target as an
update of the same remote item (exactly once, like any change), and is deleted again.
Otherwise the companion is left where it is and ``status`` names it (LATE) with what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from syncd.errors import LocalError
from syncd.folders import Folder
from syncd.fsutil import write_atomic
from syncd.items.convention import MASK_SUFFIX, SIDECAR_SUFFIX
from syncd.journal.store import Store
from syncd.targets import Target
from syncd.targets.base import Receipt

log = logging.getLogger("syncd.settle")


def companion_paths(directory: Path, stem: str) -> list[Path]:
    """The sidecar and mask of ``stem`` present in ``directory``."""
    return [path for path in (directory / (stem + SIDECAR_SUFFIX), directory / (stem + MASK_SUFFIX))
            if path.is_file()]


class LateCompanions:
    """See the module docstring. ``restored``: items whose image was put back (their next
    version is the late companion's, not a file reusing the name)."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self.restored: set[int] = set()

    def arrived(self, store: Store, folder: Folder, key: str, item_id: int, directory: Path, stem: str) -> Path | None:
        """A companion of ``key`` (delivered and deleted after upload) may be in ``directory``:
        put the image back and return its path (for the caller to observe), or note the
        companion for ``status``. With no companion there (any more), the note goes."""
        paths = companion_paths(directory, stem)
        if not paths:
            store.note_late_companion(item_id, None)
            return None
        names = ", ".join(path.name for path in paths)
        image = store.item_image(item_id)
        receipts = store.receipts(item_id)
        for name in folder.targets:
            target = self.targets[name]
            try:
                data = target.stored_image(key, Receipt.from_json(receipts.get(name)))
            except Exception:  # noqa: BLE001 - a target bug: the companion is noted instead
                log.exception("%s: reading back the image of %s", name, key)
                data = None
            if data is None or not image:
                continue
            try:
                write_atomic(image, data)
            except (OSError, LocalError) as exc:
                log.error("cannot put the image of %s back beside %s: %s", key, names, exc)
                break
            log.info("%s arrived after %s was delivered and deleted: its image is put back from %s, to deliver "
                     "them together", names, key, name)
            self.restored.add(item_id)
            return Path(image)
        note = (f"{names} arrived after {key} was delivered and deleted after upload, and is not delivered "
                f"({', '.join(folder.targets)} cannot give its image back): put {Path(image or stem).name} back "
                "beside it to deliver them together, or remove it")
        if store.late_note(item_id) != note:
            log.warning("%s", note)
            store.note_late_companion(item_id, note)
        return None
