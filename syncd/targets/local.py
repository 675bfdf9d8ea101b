"""The embedded default target: a dataset that is a plain local directory.

Layout: an item ``cam1/frame_0001`` becomes, under the target's ``path``::

    cam1/frame_0001.png        the image, byte-identical
    cam1/frame_0001.mask.png   the mask, if the item has one
    cam1/frame_0001.json       the record: key, version, hash, metadata, labels, ...

Every file is written atomically (temp file + rename) and the record last, so the record
is the commit point: a record with version V means V's files are complete. ``lookup``
reads the record, which makes a re-send after a crash a no-op. With ``log_deliveries``
every committed delivery is also appended to ``.syncd-deliveries.jsonl`` (for audits and
the exactly-once tests), once: the line follows the record, and a delivery whose process
was killed between the two gets its line when the next process looks the item up.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from syncd import limits
from syncd.errors import FatalTargetError, LocalError, PermanentError
from syncd.fsutil import NAME_MAX, write_atomic, write_error
from syncd.labels.support import FEATURES
from syncd.targets.base import Receipt, Target, TargetSettings, Upload

DELIVERY_LOG = ".syncd-deliveries.jsonl"


class LocalSettings(TargetSettings):
    platform: str = "local"
    path: Path = Field(description="directory of the dataset; created if missing")
    log_deliveries: bool = Field(False, description=f"append each delivery to {DELIVERY_LOG}")
    fsync: bool = Field(True, description="fsync each file before it is renamed into place")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


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
        self._resolved_root: Path | None = None
        self._started = time.time()
        self._parents: dict[str, str] = {}  # key's directory -> its resolved path
        self._ready: set[str] = set()  # directories made and swept of stale temp files
        self._sweep_lock = threading.Lock()
        self._needs_bytes = 0  # what the write that failed for want of space needed (check() waits for it)

    def check(self) -> list[str]:
        """The dataset directory exists (created if missing), is writable, and its filesystem
        is not read-only nor full (has room for the write that last failed for want of it);
        FatalTargetError otherwise. No warnings: a directory holds everything."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            info = os.statvfs(self.root)
        except OSError as exc:
            error = write_error(exc, str(self.root / "x"))
            raise FatalTargetError(f"target {self.name!r}: "
                                   + (str(error) if error else f"cannot create {self.root}: {exc.strerror}")) from exc
        if info.f_flag & os.ST_RDONLY:
            raise FatalTargetError(f"target {self.name!r}: {self.root} is on a read-only filesystem: "
                                   "remount it read-write")
        if not os.access(self.root, os.W_OK):
            raise FatalTargetError(f"target {self.name!r}: {self.root} is not writable by the user syncd runs as: "
                                   "give it write access")
        free = info.f_bavail * info.f_frsize
        if free < max(1, self._needs_bytes) or (info.f_files and not info.f_favail):
            raise FatalTargetError(f"target {self.name!r}: no space left on the device holding {self.root} "
                                   f"({free} bytes free): free some space")
        return []

    def _paths(self, key: str, suffix: str) -> tuple[str, str, str]:
        """The image, mask and record paths of ``key``; PermanentError if it would escape the
        dataset directory (through ``..`` or a symlinked directory). A directory is resolved
        once (its real path is then used: a symlink put in its place later is not followed)."""
        directory, _, name = key.rpartition("/")
        parent = self._parents.get(directory)
        if parent is None or name in ("", ".", ".."):
            if self._resolved_root is None:
                self._resolved_root = self.root.resolve()
            base = (self.root / key).resolve()
            if not base.is_relative_to(self._resolved_root):
                raise PermanentError(f"item key {key!r} escapes the dataset directory {self.root}")
            parent, name = str(base.parent), base.name
            self._parents[directory] = parent
        stem = os.path.join(parent, name)  # strings: Path objects cost more than the rest of this
        return stem + suffix, stem + ".mask.png", stem + ".json"

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
        it can never make a second item. A key escaping the directory, or a name too long for
        its filesystem, is a PermanentError; a destination that is full, read-only or not
        writable is a FatalTargetError naming the fix (the target pauses)."""
        try:
            receipt = self._write(upload)
        except (OSError, LocalError) as exc:
            raise self._write_failed(exc, upload) from None
        self._needs_bytes = 0
        return receipt

    def _write_failed(self, exc: OSError | LocalError, upload: Upload) -> Exception:
        """The error to raise for a write that failed (see ``deliver``)."""
        cause = exc.__cause__ if isinstance(exc, LocalError) else exc
        if isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG:
            name = os.path.basename(cause.filename or "") or upload.key
            if cause.filename and not os.path.basename(cause.filename).endswith(".tmp"):
                size = len(os.fsencode(name))
                return PermanentError(f"the name {name} is too long for {self.root} ({size} bytes; its filesystem "
                                      f"takes {_name_max(self.root)}): rename {upload.image_name} to a shorter name")
            return PermanentError(f"a name of {upload.key} is too long for {self.root}: rename "
                                  f"{upload.image_name} to a shorter name")
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            self._needs_bytes = len(upload.image) + len(upload.mask or b"") + 64 * 1024  # + the record
        if isinstance(exc, OSError):
            exc = write_error(exc, exc.filename or str(self.root)) or exc
        if isinstance(exc, LocalError):
            return FatalTargetError(f"target {self.name!r}: {exc}")
        return exc

    def _write(self, upload: Upload) -> Receipt:
        image_path, mask_path, record_path = self._paths(upload.key, upload.image_suffix)
        directory = os.path.dirname(image_path)
        self._prepare(directory)
        fsync = self.settings.fsync
        try:
            write_atomic(image_path, upload.image, fsync=fsync, make_parents=False)
        except FileNotFoundError:  # the directory was removed since: make it again
            self._ready.discard(directory)
            self._prepare(directory)
            write_atomic(image_path, upload.image, fsync=fsync, make_parents=False)
        limits.count_sent(len(upload.image))
        if upload.mask is not None:
            write_atomic(mask_path, upload.mask, fsync=fsync, make_parents=False)
            limits.count_sent(len(upload.mask))
        else:
            try:
                os.unlink(mask_path)  # of an earlier version
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:  # a name that cannot exist there
                    raise
        record = {
            "key": upload.key,
            "version": upload.version,
            "image": os.path.basename(image_path),
            "image_sha256": upload.image_sha256,
            "width": upload.width,
            "height": upload.height,
            "metadata": upload.metadata,
            "labels": upload.labels,
            "mask": os.path.basename(mask_path) if upload.mask is not None else None,
            "class_map": upload.class_map,
            "source_path": str(upload.source_path),
            "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if upload.orientation != 1:
            record["exif_orientation"] = upload.orientation  # width, height and labels are as displayed
        if self.settings.log_deliveries:
            record["log_offset"] = self._log_size()  # this delivery's line will be at or after it
        # Compact: json's indenting encoder is pure Python (several times the C one's cost).
        encoded = json.dumps(record, sort_keys=True).encode()
        write_atomic(record_path, encoded, fsync=fsync, make_parents=False)
        limits.count_sent(len(encoded))
        if self.settings.log_deliveries:
            with self._log_lock:
                self._log(upload.key, upload.version)
        return Receipt(remote_id=self._remote_id(record_path), extra={"version": upload.version})

    def _remote_id(self, record_path: str) -> str:
        """The record's path relative to the dataset directory."""
        assert self._resolved_root is not None
        return os.path.relpath(record_path, self._resolved_root)

    def _log(self, key: str, version: str) -> None:
        """Append the line of a committed delivery (the caller holds ``_log_lock``)."""
        line = json.dumps({"key": key, "version": version, "at": time.time()}) + "\n"
        with open(self.root / DELIVERY_LOG, "a", encoding="utf-8") as log:
            log.write(line)

    def _log_size(self) -> int:
        try:
            return os.stat(self.root / DELIVERY_LOG).st_size
        except FileNotFoundError:
            return 0

    def _log_if_missing(self, record: dict[str, Any]) -> None:
        """Give a committed delivery its log line if it has none: the record is the commit
        point and the line follows it, so a process killed between the two (or a line that
        could not be written) left the delivery unlogged. The line, if written, is at or after
        the offset the record names; what follows that offset is the few lines appended around
        that delivery, or, when it is missing, what was appended since the process died."""
        key, version, offset = record.get("key"), record.get("version"), record.get("log_offset")
        if not isinstance(offset, int) or not isinstance(version, str):
            return  # written without log_deliveries
        with self._log_lock:
            try:
                with open(self.root / DELIVERY_LOG, "rb") as log:
                    log.seek(offset)
                    for line in log:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue
                        if entry.get("key") == key and entry.get("version") == version:
                            return
            except FileNotFoundError:
                pass
            self._log(key, version)

    def lookup(self, upload: Upload) -> Receipt | None:
        """The record of ``upload.key``, or None (none, or damaged); ``extra["version"]`` is
        the version the record says is complete. With ``log_deliveries``, that version is
        logged now if its process was killed before logging it (lookup runs on recovery)."""
        _, _, record_path = self._paths(upload.key, upload.image_suffix)
        record = self._read_record(Path(record_path))
        if record is None or record.get("key") != upload.key:
            return None
        if self.settings.log_deliveries:
            self._log_if_missing(record)
        return Receipt(remote_id=self._remote_id(record_path), extra={"version": record.get("version")})


    def stored_image(self, key: str, receipt: Receipt | None) -> bytes | None:
        """The delivered image of ``key``, read back from the dataset and checked against the
        record's ``image_sha256`` (None if there is none, or it is not that image any more)."""
        try:
            _, _, record_path = self._paths(key, "")
        except PermanentError:
            return None
        record = self._read_record(Path(record_path))
        if not record or record.get("key") != key or not isinstance(record.get("image"), str):
            return None
        try:
            with open(os.path.join(os.path.dirname(record_path), os.path.basename(record["image"])), "rb") as image:
                data = image.read()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == record.get("image_sha256") else None

    def _prepare(self, directory: str) -> None:
        """Before the first delivery into ``directory`` (once per directory and process):
        make it, and remove the temp files a killed earlier process left there (see fsutil):
        those older than this process; the temp files of this process's writes are younger.
        (Listing the directory for every file made a delivery cost as much as the directory
        is large.)"""
        if directory in self._ready:
            return
        os.makedirs(directory, exist_ok=True)
        with self._sweep_lock:
            if directory in self._ready:
                return
            self._ready.add(directory)
        try:
            with os.scandir(directory) as entries:
                stale = [entry for entry in entries if entry.name.startswith(".") and entry.name.endswith(".tmp")]
        except FileNotFoundError:
            return
        for entry in stale:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < self._started:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass
