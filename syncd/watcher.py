"""Filesystem watching: watchdog observers that only hint, supervised, with polling fallback.

Events are hints, the scan is the truth. Observer threads only put paths on a bounded queue;
the coordinator drains it. When the queue overflows, the kernel's inotify queue overflows,
or an observer thread dies, ``rescan_needed`` is set and the coordinator rescans.

Polling (watchdog's PollingObserver) is used for folders with ``poll = true``, for network
filesystems (detected from /proc/self/mounts), and as a fallback when inotify cannot be used —
for example when the inotify watch limit is reached (the log names the sysctl to raise).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

log = logging.getLogger("syncd.watcher")

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs", "fuse.rclone", "davfs",
     "fuse.s3fs"}
)
INOTIFY_LIMIT_FIX = (
    "the inotify watch limit is reached: raise it with "
    "`sudo sysctl fs.inotify.max_user_watches=524288` (persist it in /etc/sysctl.d/); "
    "falling back to polling for {path}"
)


def filesystem_type(path: Path) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux /proc/self/mounts), or None."""
    try:
        # /proc/self/..., not the /proc/mounts link: the unit's ProcSubset=pid hides the latter.
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    best, best_type = "", None
    target = str(path.resolve())
    for fields in entries:
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type


def inotify_watch_count() -> int:
    """Inotify watches this process holds (from /proc/self/fdinfo); 0 where unknown."""
    total = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def count_directories(path: Path) -> int:
    """Directories an inotify watch of ``path`` needs: itself and every real subdirectory it
    can read. watchdog skips a directory it may not read (EACCES: a root-owned lost+found),
    and so does this count (os.walk lists what it can and follows no symlink): such a
    directory is the scan's to report, not a sign that the watch limit is reached."""
    return sum(1 for _ in os.walk(path))


class _Overflow(logging.Handler):
    """Notices watchdog's 'Inotify queue overflowed' warning: events were lost."""

    def __init__(self, flag: threading.Event):
        super().__init__(logging.WARNING)
        self.flag = flag

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.flag.set()


class _Enqueue(FileSystemEventHandler):
    def __init__(self, watcher: "FolderWatcher"):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Never raise from the observer thread: a full queue becomes a rescan.
        try:
            if event.event_type in ("opened", "closed_no_write"):
                return
            if event.is_directory and event.event_type == "modified":
                # Sent for the parent of every file created, written or removed: the file's own
                # event is the hint; re-listing the directory each time made bursts quadratic.
                return
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self.watcher.events.put_nowait(os.fsdecode(path))
        except queue.Full:
            self.watcher.rescan_needed.set()
        except Exception:  # pragma: no cover - defensive
            self.watcher.rescan_needed.set()


class FolderWatcher:
    """Watches a set of folders; see the module docstring for the guarantees."""

    def __init__(self, folders: list[tuple[Path, bool, float]], *, queue_size: int = 10000):
        self.folders = folders  # (path, poll, poll_seconds)
        self.events: "queue.Queue[str]" = queue.Queue(maxsize=queue_size)
        self.rescan_needed = threading.Event()
        self.observers: dict[Path, Observer] = {}
        self.polling: dict[Path, bool] = {}
        self._overflow_handler = _Overflow(self.rescan_needed)
        self.warnings: list[str] = []

    def start(self) -> None:
        for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer"):
            logging.getLogger(name).addHandler(self._overflow_handler)
        for path, poll, poll_seconds in self.folders:
            self._start_one(path, poll, poll_seconds)

    def _start_one(self, path: Path, poll: bool, poll_seconds: float) -> None:
        if not os.path.isdir(path):
            return  # the coordinator reports missing folders; started once they appear
        fs_type = filesystem_type(path)
        use_poll = poll or (fs_type in NETWORK_FILESYSTEMS)
        if use_poll and not poll:
            log.info("polling %s: it is on a %s network filesystem where inotify sees no remote changes", path, fs_type)
        observer = PollingObserver(timeout=poll_seconds) if use_poll else Observer()
        try:
            before = inotify_watch_count()
            observer.schedule(_Enqueue(self), str(path), recursive=True)
            observer.start()
            if not use_poll:
                # watchdog silently skips subdirectories it cannot watch (ENOSPC included):
                # count what it really watches.
                missing = count_directories(path) - (inotify_watch_count() - before)
                if missing > 0:
                    raise OSError(errno.ENOSPC, f"{missing} subdirectories could not be watched")
        except OSError as exc:
            observer_failed = exc.errno in (errno.ENOSPC, errno.EMFILE)
            try:
                observer.stop()
            except Exception:
                pass
            if use_poll or not observer_failed:
                log.error("cannot watch %s: %s; relying on periodic rescans", path, exc)
                self.warnings.append(f"cannot watch {path}: {exc}")
                return
            message = INOTIFY_LIMIT_FIX.format(path=path)
            log.warning(message)
            self.warnings.append(message)
            observer = PollingObserver(timeout=poll_seconds)
            observer.schedule(_Enqueue(self), str(path), recursive=True)
            observer.start()
            use_poll = True
        self.observers[path] = observer
        self.polling[path] = use_poll

    def supervise(self) -> list[Path]:
        """Restart dead observers and start watches for folders that appeared; returns restarted ones.

        watchdog threads can die silently (a folder unmounted, an internal error): each restart
        also requests a rescan because events were lost meanwhile.
        """
        restarted = []
        for path, poll, poll_seconds in self.folders:
            observer = self.observers.get(path)
            # The observer thread outlives its emitter (the thread reading inotify), which
            # stops by itself when the watched directory is deleted: both must be alive.
            if observer is not None and observer.is_alive() and all(e.is_alive() for e in list(observer.emitters)):
                continue
            if observer is not None:
                log.warning("the watcher of %s stopped; restarting it and rescanning", path)
                try:
                    observer.stop()
                except Exception:
                    pass
                del self.observers[path]
            elif not os.path.isdir(path):
                continue
            self._start_one(path, poll, poll_seconds)
            if path in self.observers:
                restarted.append(path)
                self.rescan_needed.set()
        return restarted

    def restart(self, path: Path) -> None:
        """Watch ``path`` afresh (it was removed and re-created, or (un)mounted) and rescan."""
        observer = self.observers.pop(path, None)
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:
                pass
        for folder, poll, poll_seconds in self.folders:
            if folder == path:
                self._start_one(folder, poll, poll_seconds)
        self.rescan_needed.set()

    def drain(self, limit: int = 100000) -> list[str]:
        out = []
        try:
            while len(out) < limit:
                out.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return out

    def stop(self) -> None:
        for observer in self.observers.values():
            try:
                observer.stop()
            except Exception:
                pass
        for observer in self.observers.values():
            observer.join(timeout=5)
        self.observers.clear()
        for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer"):
            logging.getLogger(name).removeHandler(self._overflow_handler)
