"""The coordinator: wires watcher -> settle -> journal -> upload workers, one tick at a time.

One coordinator thread owns settling and the SQLite journal; each target has a small pool
of upload worker threads that run ``delivery.attempt`` and report ``Outcome``s back on a
queue. ``tick(now)`` is one pass of the loop (time is a parameter), so tests and ``syncd
once`` drive the daemon without sleeping for fixed times; ``run()`` is the service loop.

Exactly-once per (item, target): the journal records the intent before a request and the
receipt after; a row is in flight at most once, and a newer version waits behind it.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from syncd import delivery, limits, metrics
from syncd.config import Config, FolderSettings
from syncd.errors import ItemError, LocalError, SyncdError
from syncd.items.content import read_item, stat_signature
from syncd.items.convention import IgnoreRules, ItemFiles, make_key, printable, probe_item, role_of
from syncd.journal.schema import StateLock
from syncd.journal.store import Store
from syncd.labels.classmap import CLASS_MAP_NAME, DATAPOINT_MAP_NAME
from syncd.labels.validate import read_options
from syncd.metrics import Metrics
from syncd.scan import Scan
from syncd.targets import Target, target_class
from syncd.watcher import FolderWatcher

log = logging.getLogger("syncd.daemon")

LOCAL_RETRY_SECONDS = 5.0  # how often a pass is retried while the journal cannot be written
SETTLE_SLICE = 0.02  # seconds of reading settled items per pass (see Daemon._settle)


@dataclass
class Folder:
    settings: FolderSettings
    root: Path
    rules: IgnoreRules
    targets: list[str]
    missing: bool = False
    mount_point: bool | None = None  # whether the folder itself is a mount point (once seen)

    @property
    def name(self) -> str:
        return str(self.root)


@dataclass
class Settling:
    folder: Folder
    item_id: int
    files: ItemFiles
    sig: str
    since: float
    quiet: float
    first: float
    reported: bool = False


def build_targets(config: Config) -> dict[str, Target]:
    return {name: target_class(s.platform)(name, s) for name, s in config.target_settings.items()}


class Daemon:
    """See the module docstring. ``open`` -> ``tick``... -> ``close``; or ``run`` for the service."""

    def __init__(self, config: Config, *, targets: dict[str, Target] | None = None, watch: bool = True,
                 seed: int | None = None):
        self.config = config
        self.cfg = config.daemon
        self.targets = targets if targets is not None else build_targets(config)
        self.watch = watch
        self.rng = random.Random(seed)
        self.folders = [
            Folder(f, f.path, IgnoreRules([*self.cfg.ignore, *f.exclude], f.include), list(f.targets))
            for f in config.folders
        ]
        self.read_options = read_options(self.cfg.max_image_pixels)
        self.store: Store | None = None
        self.lock = StateLock(self.cfg.state_dir)
        self.watcher = FolderWatcher([(f.root, f.settings.poll, f.settings.poll_seconds) for f in self.folders])
        self.settling: dict[int, Settling] = {}
        self.in_flight: dict[tuple[int, str], str] = {}  # (item, target) -> key
        self.results: "queue.Queue[object]" = queue.Queue()
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.paused: dict[str, float] = {}  # target -> when to re-check it
        self.checking: set[str] = set()
        self.next_rescan = 0.0
        self.next_due_check = 0.0
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.local_error: str | None = None  # why the journal cannot be written (disk full), if so
        self.local_retry_at = 0.0
        self.unrecorded: list[delivery.Outcome] = []  # outcomes waiting for a writable journal
        # The longest delay a retry is ever scheduled for (see Store.due): clock jumps.
        self.horizon = max(self.cfg.retry_max_seconds, delivery.MAX_RETRY_AFTER) + 60.0
        self.metrics = Metrics(config, serving=watch and bool(config.http.listen))
        self.attempts: Counter = Counter()  # (target, outcome kind) -> count, for metrics

    # -- lifecycle ------------------------------------------------------------------------
    def open(self, now: float) -> None:
        """Lock the state dir, open the journal, recover, start workers and watches, scan."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self.store = Store.open(self.cfg.state_dir)
        limits.configure({n: t.settings.rate_limit for n, t in self.targets.items()}, self.cfg.bandwidth_limit)
        recovered = self.store.recover(now)
        if recovered:
            log.info("recovering %d deliveries whose outcome is unknown after a restart", recovered)
        for name, target in self.targets.items():
            self.executors[name] = ThreadPoolExecutor(target.settings.workers, thread_name_prefix=f"upload-{name}")
            self._start_check(name)
        for folder in self.folders:
            if not folder.root.exists() and folder.settings.create:
                try:
                    folder.root.mkdir(parents=True, exist_ok=True)
                    log.info("created missing folder %s", folder.root)
                except OSError as exc:
                    log.error("cannot create folder %s: %s", folder.root, exc.strerror)
        if self.watch:
            self.watcher.start()
        self.scan(now)

    def close(self, *, wait_seconds: float | None = None) -> None:
        """Stop watching, let in-flight deliveries finish (up to ``shutdown_seconds``), release."""
        self.watcher.stop()
        deadline = time.monotonic() + (self.cfg.shutdown_seconds if wait_seconds is None else wait_seconds)
        try:
            while self.in_flight and time.monotonic() < deadline:
                self._collect(time.time(), block=0.1)
        except LocalError as exc:
            log.error("cannot record the last outcomes: %s", exc)
        if self.in_flight:
            log.warning("%d deliveries still in flight at shutdown; they are re-checked at the next start",
                        len(self.in_flight))
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        for target in self.targets.values():
            target.close()
        if self.store:
            self.store.close()
        self.lock.release()

    # -- one pass -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One pass: events, rescans, settling, results, dispatch, paused-target checks.

        When the journal cannot be written (disk full, LocalError) the pass stops there and
        the daemon pauses: passes are retried every LOCAL_RETRY_SECONDS, SQLite keeps the
        journal intact, outcomes not yet recorded are kept in memory, and each retry starts
        with a full rescan, so nothing observed meanwhile is missed.
        """
        if self.local_error is not None and 0 < self.local_retry_at - now <= LOCAL_RETRY_SECONDS:
            return
        try:
            self._pass(now)
        except LocalError as exc:
            if str(exc) != self.local_error:
                log.error("%s; deliveries paused, nothing is lost: retrying every %.0fs", exc, LOCAL_RETRY_SECONDS)
            self.local_error = str(exc)
            self.local_retry_at = now + LOCAL_RETRY_SECONDS
            self.watcher.rescan_needed.set()  # events drained by the failed pass are found again
            return
        if self.local_error is not None:
            log.info("the journal can be written again: resuming")
            self.local_error = None

    def _pass(self, now: float) -> None:
        self._check_folders(now)
        for path in dict.fromkeys(self.watcher.drain()):  # a burst names a path many times
            self._hint(Path(path), now)
        if self.watch:
            self.watcher.supervise()
        # A deadline further ahead than its period was set under a clock since set back.
        if self.watcher.rescan_needed.is_set() or not 0 < self.next_rescan - now <= self.cfg.rescan_seconds * 1.1:
            self.scan(now)
        self._settle(now)
        self._collect(now)
        self._dispatch(now)
        interval = self.config.metrics.interval_seconds
        # A clock set back must not freeze the figures for the length of the jump.
        if self.metrics.enabled and (now >= self.metrics.next_refresh or self.metrics.next_refresh - now > interval):
            self.metrics.next_refresh = now + interval
            self.metrics.refresh(self.metrics_text(now))

    def metrics_text(self, now: float) -> str:
        assert self.store is not None
        in_flight = Counter(target for _, target in self.in_flight)
        return metrics.render(self.store, targets=list(self.targets), paused=set(self.paused),
                              in_flight=in_flight, attempts=self.attempts, now=now, sent=limits.sent_bytes(),
                              filesystems=self.metrics.filesystems)

    def busy(self) -> bool:
        return bool(self.settling or self.in_flight)

    # -- observing ------------------------------------------------------------------------
    def _check_folders(self, now: float) -> None:
        for folder in self.folders:
            present = folder.root.is_dir()
            if present:
                # An unmounted folder usually leaves its mount point behind: an empty directory
                # that must not be read as "every item was deleted".
                mounted = os.path.ismount(folder.root)
                if folder.mount_point is None or (mounted and not folder.mount_point):
                    if folder.mount_point is False and self.watch:
                        log.info("folder %s is now a mount point: watching the mounted filesystem", folder.root)
                        self.watcher.restart(folder.root)
                    folder.mount_point = mounted
                elif folder.mount_point and not mounted:
                    present = False
            if folder.missing and present:
                log.info("folder %s is back; rescanning it", folder.root)
                folder.missing = False
                if self.watch:
                    self.watcher.restart(folder.root)  # the old watch, if any, is on another directory
                self.watcher.rescan_needed.set()
            elif not present and not folder.missing:
                # Unmounted or removed: pause it; never read this as "every item was deleted".
                log.error("folder %s is missing (unmounted or removed?): paused until it comes back", folder.root)
                folder.missing = True

    def _folder_of(self, path: Path) -> Folder | None:
        best = None
        for folder in self.folders:
            if path == folder.root or folder.root in path.parents:
                if best is None or len(folder.name) > len(best.name):
                    best = folder
        return best

    def scan(self, now: float) -> None:
        """Full rescan of every folder: the truth behind the event hints."""
        self.watcher.rescan_needed.clear()
        jitter = self.rng.uniform(0.9, 1.1)
        self.next_rescan = now + self.cfg.rescan_seconds * jitter
        for folder in self.folders:
            if folder.missing or not folder.root.is_dir():
                continue
            self._scan_tree(folder, folder.root, now, full=True)

    def _scan_tree(self, folder: Folder, start: Path, now: float, *, full: bool) -> None:
        """Observe every new or changed item below ``start``; with ``full`` (``start`` is the
        folder) also mark the journal's items that are no longer there. Unchanged items and
        directories cost one stat per file (see syncd.scan)."""
        assert self.store is not None
        settling_keys = {entry.files.key for entry in self.settling.values() if entry.folder is folder}
        scan = Scan(self.store, folder.name, folder.root, folder.rules, folder.settings.key_prefix, settling_keys)
        for files in scan.items(start):
            self._observe(folder, files, now, self.store.observed_item(folder.name, files.key))
        scan.finish()
        if not full:
            return
        for key, item_id in scan.vanished():
            if item_id not in self.settling:
                self._vanished(folder, key, item_id, now)

    def _vanished(self, folder: Folder, key: str, item_id: int, now: float) -> None:
        assert self.store is not None
        image = self.store.item_image(item_id)
        if image is not None and os.path.exists(image):
            return  # unreadable directory or a race: not gone
        log.info("item %s is gone from %s", key, folder.root)
        self.store.gone(item_id, now)

    def _hint(self, path: Path, now: float) -> None:
        folder = self._folder_of(path)
        if folder is None or folder.missing:
            return
        if path.is_dir():
            self._scan_tree(folder, path, now, full=False)
            return
        if path.name in (CLASS_MAP_NAME, DATAPOINT_MAP_NAME):
            self._scan_tree(folder, path.parent, now, full=False)
            return
        if folder.rules.ignored(path.name):
            return
        found = role_of(path.name)
        if found is None:
            return
        stem, _role = found
        files = probe_item(folder.root, path.parent, stem, folder.rules, folder.settings.key_prefix)
        assert self.store is not None
        if files is None:
            key = _key_for(folder, path.parent, stem)
            item_id = self.store.item_id(folder.name, key)
            if item_id is not None:
                self.settling.pop(item_id, None)
                self._vanished(folder, key, item_id, now)
            return
        self._observe(folder, files, now, self.store.observed_item(folder.name, files.key))

    def _observe(self, folder: Folder, files: ItemFiles, now: float, known: tuple[int, str | None, str] | None) -> None:
        try:
            sig, quiet = stat_signature(files)
        except ItemError as exc:
            self._observed_invalid(folder, files, str(exc), now, known)
            return
        except OSError:
            return  # vanished meanwhile; the next event or scan decides
        if known is not None:
            item_id, old_sig, state = known
            current = self.settling.get(item_id)
            if current is not None:
                current.files = files
                return  # already settling: the settle loop follows its changes
            if old_sig == sig and state in ("ready", "invalid"):
                return  # unchanged since it was settled: nothing to re-hash
        assert self.store is not None
        item_id = self.store.observe(
            folder.name, files.key, str(files.image), _opt(files.sidecar), _opt(files.mask), sig, now
        )
        self.settling[item_id] = Settling(folder, item_id, files, sig, now, quiet, now)

    def _observed_invalid(self, folder: Folder, files: ItemFiles, error: str, now: float, known) -> None:
        """A file of the item cannot even be stat'ed (broken symlink, no permission)."""
        assert self.store is not None
        if known is not None and known[2] == "invalid":
            return  # already reported; retried when it changes or on `syncd retry`
        item_id = self.store.observe(folder.name, files.key, _opt(files.image), _opt(files.sidecar), _opt(files.mask),
                                     "", now)
        self.settling.pop(item_id, None)
        log.warning("item %s is invalid: %s", files.key, error)
        self.store.invalid(item_id, error, folder.targets, now)

    # -- settling -------------------------------------------------------------------------
    def _settle(self, now: float) -> None:
        assert self.store is not None
        settle = self.cfg.settle_seconds
        # Reading (decoding, hashing) items is the expensive part: a pass reads for at most
        # SETTLE_SLICE seconds, so a burst of thousands of files is delivered while the rest
        # of it is still being read instead of after all of it.
        deadline = time.monotonic() + SETTLE_SLICE
        for item_id, entry in list(self.settling.items()):
            if entry.folder.missing:
                continue
            try:
                sig, quiet = stat_signature(entry.files)
            except ItemError as exc:
                del self.settling[item_id]
                self._observed_invalid(entry.folder, entry.files, str(exc), now, None)
                continue
            except OSError:
                fresh = probe_item(entry.folder.root, entry.files.image.parent, entry.files.image.stem,
                                   entry.folder.rules, entry.folder.settings.key_prefix)
                if fresh is None:
                    del self.settling[item_id]
                    self.store.gone(item_id, now)
                else:
                    entry.files = fresh
                continue
            if sig != entry.sig:
                entry.sig, entry.since, entry.quiet = sig, now, quiet
                continue
            if entry.since > now:  # the clock was set back: quiet from now on
                entry.since, entry.first = now, min(entry.first, now)
            quiet_enough = now - entry.since >= settle or (quiet <= now and now - quiet >= settle)
            if not quiet_enough:
                if now - entry.first > self.cfg.max_settle_seconds and not entry.reported:
                    message = (f"{entry.files.image}: still being written after {now - entry.first:.0f}s; "
                               "it is delivered once it stops changing")
                    log.warning(message)
                    self.store.settling_error(item_id, message, now)
                    entry.reported = True
                continue
            if time.monotonic() > deadline:
                self.wake.set()  # the next pass goes on right after dispatching
                break
            del self.settling[item_id]
            try:
                content = read_item(entry.files, **self.read_options)
            except ItemError as exc:
                log.warning("item %s is invalid: %s", entry.files.key, exc)
                self.store.invalid(item_id, str(exc), entry.folder.targets, now)
                self.store.record_stat_sig(item_id, sig)
                continue
            label_error = "; ".join(content.label_errors) or None
            if label_error:
                log.warning("item %s is delivered without its labels/mask: %s", entry.files.key, label_error)
            self.store.settled(item_id, content.version, entry.folder.targets, now, label_error=label_error,
                               notes=self._unrepresentable(entry.folder, content), stat_sig=sig)
            log.debug("item %s settled at version %s", entry.files.key, content.version)
            self.wake.set()

    def _unrepresentable(self, folder: Folder, content) -> dict[str, str | None]:
        """Per target: what its platform cannot represent of this item (reported, not hidden)."""
        notes: dict[str, str | None] = {}
        for name in folder.targets:
            target = self.targets[name]
            lost = target.unsupported_labels(content.sidecar.labels, has_mask=content.mask is not None)
            notes[name] = f"{target.platform} cannot represent: {', '.join(lost)}" if lost else None
        return notes

    # -- delivering -----------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        assert self.store is not None
        if self.stop_event.is_set():
            return
        for name, target in self.targets.items():
            if name in self.paused:
                recheck_in = self.paused[name] - now  # beyond the period: the clock was set back
                if not 0 < recheck_in <= self.cfg.target_recheck_seconds and name not in self.checking:
                    self._start_check(name)
                continue
            # Up to twice `workers` deliveries are handed to the pool (intent journaled), so a
            # worker that finishes starts the next one at once instead of waiting for this
            # thread's next pass (which may be reading a burst); `workers` still bounds the
            # requests made at the same time.
            free = 2 * target.settings.workers - sum(1 for (_, t) in self.in_flight if t == name)
            if free <= 0:
                continue
            for due in self.store.due(name, now, free, horizon=self.horizon):
                folder = next((f for f in self.folders if f.name == due.folder), None)
                if folder is None or folder.missing:
                    continue
                files = self._files_for(folder, due.key)
                if files is None:
                    self.store.gone(due.item_id, now)
                    continue
                self.store.intend(due.item_id, name, due.version, now)
                self.in_flight[(due.item_id, name)] = due.key
                self.executors[name].submit(self._work, due, files, target)

    def _files_for(self, folder: Folder, key: str) -> ItemFiles | None:
        rel = key[len(folder.settings.key_prefix.rstrip("/")) + 1:] if folder.settings.key_prefix else key
        directory, _, stem = rel.rpartition("/")
        return probe_item(folder.root, folder.root / directory, stem, folder.rules, folder.settings.key_prefix)

    def _work(self, due, files, target) -> None:
        outcome = delivery.attempt(due, files, target, read_options=self.read_options)
        self.results.put(outcome)
        self.wake.set()

    def _start_check(self, name: str) -> None:
        self.checking.add(name)
        target = self.targets[name]

        def check() -> None:
            try:
                with limits.serving(name):
                    warnings = target.check()
                self.results.put(("check", name, None, warnings))
            except SyncdError as exc:
                self.results.put(("check", name, exc, []))
            except Exception as exc:  # pragma: no cover - adapter bug
                self.results.put(("check", name, exc, []))
            self.wake.set()

        threading.Thread(target=check, name=f"check-{name}", daemon=True).start()

    def _collect(self, now: float, block: float = 0.0) -> None:
        assert self.store is not None
        while self.unrecorded:
            outcome = self.unrecorded[0]
            due = outcome.due
            if self.store.delivery_state(due.item_id, due.target) == "in_flight":
                self._record_or_keep(outcome, now)
            else:  # its outcome was journaled before the write that failed
                self.in_flight.pop((due.item_id, due.target), None)
            self.unrecorded.pop(0)
        while True:
            try:
                result = self.results.get(timeout=block) if block else self.results.get_nowait()
            except queue.Empty:
                return
            block = 0.0
            if isinstance(result, tuple):
                self._checked(*result[1:], now=now)
            else:
                self._record_or_keep(result, now)

    def _record_or_keep(self, outcome: delivery.Outcome, now: float) -> None:
        """Record an outcome; when the journal cannot be written, keep it (and its row busy)."""
        try:
            self._record(outcome, now)
        except LocalError:
            due = outcome.due
            self.in_flight[(due.item_id, due.target)] = due.key
            if not any(kept is outcome for kept in self.unrecorded):
                self.unrecorded.append(outcome)
            raise

    def _checked(self, name: str, error: Exception | None, warnings: list[str], *, now: float) -> None:
        assert self.store is not None
        self.checking.discard(name)
        if error is None:
            for warning in warnings:
                log.warning("target %s: %s", name, warning)
            if name in self.paused:
                log.info("target %s works again; resuming deliveries", name)
            self.paused.pop(name, None)
            self.store.set_paused(name, None, now)
            return
        from syncd.errors import TransientError

        if isinstance(error, TransientError):
            log.warning("target %s is not reachable yet: %s", name, error)
            if name in self.paused:
                self.paused[name] = now + self.cfg.target_recheck_seconds
            return
        self._pause(name, str(error), now)

    def _pause(self, name: str, reason: str, now: float) -> None:
        assert self.store is not None
        log.error("target %s paused: %s (re-checked every %.0fs)", name, reason, self.cfg.target_recheck_seconds)
        self.paused[name] = now + self.cfg.target_recheck_seconds
        self.store.set_paused(name, reason, now)

    def _record(self, outcome: delivery.Outcome, now: float) -> None:
        assert self.store is not None
        due = outcome.due
        self.in_flight.pop((due.item_id, due.target), None)
        kind = outcome.kind
        self.attempts[(due.target, kind)] += 1
        if kind == delivery.ACKED:
            assert outcome.receipt is not None
            self.store.acked(due.item_id, due.target, outcome.receipt.to_json(), now)
            not_sent = outcome.receipt.extra.get("not_sent")
            if not_sent:
                self.store.add_note(due.item_id, due.target, "not sent: " + "; ".join(map(str, not_sent)))
            how = "found already delivered on" if outcome.adopted else "delivered to"
            log.info("%s %s %s as %s", due.key, how, due.target, outcome.receipt.remote_id)
            self._after_upload(due, now)
        elif kind == delivery.TRANSIENT:
            delay = delivery.backoff_delay(
                due.attempts + 1, outcome.retry_after, base=self.cfg.retry_base_seconds, cap=self.cfg.retry_max_seconds,
                rng=self.rng,
            )
            log.warning("retrying %s on %s in %.1fs: %s", due.key, due.target, delay, outcome.message)
            self.store.retry_later(due.item_id, due.target, outcome.message, now + delay, outcome.outcome_unknown, now)
        elif kind in (delivery.PERMANENT, delivery.INVALID):
            log.error("failed %s on %s: %s", due.key, due.target, outcome.message)
            self.store.failed(due.item_id, due.target, outcome.message, now)
        elif kind == delivery.STALE:
            self.store.retry_later(due.item_id, due.target, None, 0, False, now, count=False)
            self.store.resettle(due.item_id, now)
            folder = next(f for f in self.folders if f.name == due.folder)
            files = self._files_for(folder, due.key)
            if files is not None:
                self._observe(folder, files, now, None)
        elif kind == delivery.FATAL:
            self.store.retry_later(due.item_id, due.target, outcome.message, now, True, now, count=False)
            if due.target not in self.paused:
                self._pause(due.target, outcome.message, now)

    def _after_upload(self, due, now: float) -> None:
        folder = next((f for f in self.folders if f.name == due.folder), None)
        if folder is None or folder.settings.after_upload != "delete":
            return
        assert self.store is not None
        if not self.store.fully_acked(due.item_id, folder.targets):
            return
        acked_sig = self.store.item_stat_sig(due.item_id)
        files = self._files_for(folder, due.key)
        if files is None:
            return
        try:
            sig, _ = stat_signature(files)
        except (OSError, ItemError):
            return
        if sig != acked_sig:
            return  # changed since the acked version: keep it, it will be delivered again
        for path in files.paths():
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot delete %s after upload: %s", path, exc.strerror)
                return
        log.info("deleted local files of %s after every target acked it", due.key)
        self.store.gone(due.item_id, now, state="deleted")

    # -- service loop ---------------------------------------------------------------------
    def pending_total(self) -> int:
        """Deliveries pending or in flight plus items settling (the systemd STATUS line)."""
        assert self.store is not None
        return self.store.unfinished_count()


def _opt(path: Path | None) -> str | None:
    # printable: a file name that is not UTF-8 must not break the journal (the item is invalid).
    return None if path is None else printable(str(path))


def _key_for(folder: Folder, directory: Path, stem: str) -> str:
    return make_key(folder.root, directory, stem, folder.settings.key_prefix)


__all__ = ["Daemon", "LocalError"]
