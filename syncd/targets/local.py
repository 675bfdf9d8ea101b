"""The embedded default target: a dataset that is a plain local directory.

Layout: an item ``cam1/frame_0001`` becomes, under the target's ``path``::

    cam1/frame_0001.png        the image, byte-identical
    cam1/frame_0001.mask.png   the mask, if the item has one
    cam1/frame_0001.json       the record: key, version, hash, metadata, labels, ...

Every file is written atomically (temp file + rename) and the record last, so the record
is the commit point: a record with version V means V's files are complete. ``lookup``
reads the record, which makes a re-send after a crash a no-op. With ``log_deliveries``
every committed delivery is also appended to ``.syncd-deliveries.jsonl`` (for audits and
the exactly-once tests).
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from syncd import limits
from syncd.errors import FatalTargetError, PermanentError
from syncd.fsutil import write_atomic
from syncd.labels.support import FEATURES
from syncd.targets.base import Receipt, Target, TargetSettings, Upload

DELIVERY_LOG = ".syncd-deliveries.jsonl"


class LocalSettings(TargetSettings):
    platform: str = "local"
    path: Path = Field(description="directory of the dataset; created if missing")
    log_deliveries: bool = Field(False, description=f"append each delivery to {DELIVERY_LOG}")
    fsync: bool = Field(True, description="fsync each file before it is renamed into place")


class LocalTarget(Target):
    platform = "local"
    Settings = LocalSettings
    create_only = True  # lookup() is cheap and exact: use it to skip re-sends after a crash
    label_types = frozenset(FEATURES)  # the record keeps the labels and the mask as they are
    single_classification = False

    def __init__(self, name: str, settings: LocalSettings, **kwargs):
        super().__init__(name, settings, **kwargs)
        self.root: Path = settings.path
        self._log_lock = threading.Lock()

    def check(self) -> list[str]:
        """The dataset directory exists (created if missing) and is writable; FatalTargetError
        otherwise. No warnings: a directory holds everything."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalTargetError(f"target {self.name!r}: cannot create {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise FatalTargetError(f"target {self.name!r}: {self.root} is not writable by this user")
        return []

    def _paths(self, key: str, suffix: str) -> tuple[Path, Path, Path]:
        base = (self.root / key).resolve()
        if not base.is_relative_to(self.root.resolve()):
            raise PermanentError(f"item key {key!r} escapes the dataset directory {self.root}")
        return (base.with_name(base.name + suffix), base.with_name(base.name + ".mask.png"),
                base.with_name(base.name + ".json"))

    def _read_record(self, record_path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged record is rewritten by the next delivery

    def deliver(self, upload: Upload) -> Receipt:
        """Write the image, the mask (or remove an old one) and then the record, each
        atomically; the record is the commit point. A re-send overwrites the same files, so
        it can never make a second item. A key escaping the directory is a PermanentError."""
        image_path, mask_path, record_path = self._paths(upload.key, upload.image_suffix)
        for path in (image_path, mask_path, record_path):
            _remove_stale_temps(path)
        fsync = self.settings.fsync
        write_atomic(image_path, upload.image, fsync=fsync)
        limits.count_sent(len(upload.image))
        if upload.mask is not None:
            write_atomic(mask_path, upload.mask, fsync=fsync)
            limits.count_sent(len(upload.mask))
        elif mask_path.exists():
            mask_path.unlink()
        record = {
            "key": upload.key,
            "version": upload.version,
            "image": image_path.name,
            "image_sha256": upload.image_sha256,
            "width": upload.width,
            "height": upload.height,
            "metadata": upload.metadata,
            "labels": upload.labels,
            "mask": mask_path.name if upload.mask is not None else None,
            "class_map": upload.class_map,
            "source_path": str(upload.source_path),
            "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        encoded = json.dumps(record, indent=2, sort_keys=True).encode()
        write_atomic(record_path, encoded, fsync=fsync)
        limits.count_sent(len(encoded))
        if self.settings.log_deliveries:
            self._log(upload)
        return Receipt(remote_id=str(record_path.relative_to(self.root)), extra={"version": upload.version})

    def _log(self, upload: Upload) -> None:
        line = json.dumps({"key": upload.key, "version": upload.version, "at": time.time()}) + "\n"
        with self._log_lock, open(self.root / DELIVERY_LOG, "a", encoding="utf-8") as log:
            log.write(line)

    def lookup(self, upload: Upload) -> Receipt | None:
        """The record of ``upload.key``, or None (none, or damaged); ``extra["version"]`` is
        the version the record says is complete."""
        _, _, record_path = self._paths(upload.key, upload.image_suffix)
        record = self._read_record(record_path)
        if record is None or record.get("key") != upload.key:
            return None
        return Receipt(remote_id=str(record_path.relative_to(self.root)), extra={"version": record.get("version")})


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files a killed earlier delivery of this file left behind (see fsutil)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
