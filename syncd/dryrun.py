"""``syncd once --dry-run``: scan, settle and validate; say per target what would be sent.

Nothing is sent, no platform is contacted and the journal is left exactly as it was: the
dry run works on a copy of it in a temporary directory (removed afterwards) and never takes
the state directory's lock, so it runs next to a daemon too. The copy is taken

- from the files (``syncd.db`` and its ``-wal``, byte for byte) when no syncd holds the lock;
  if one started meanwhile (the lock is taken, or the files changed) the copy is taken again:
- through SQLite's backup API on a read-only connection while a daemon runs (its WAL and
  shared-memory files exist already: reading adds none).

On a fresh state directory there is no journal to copy: the dry run starts from an empty one
in the temporary directory and the state directory is not even created.

The engine's own scan and settling run on the copy (``Settler``: the same rules, the same
reads and validation), then the copy is read: per target the deliveries due (new items,
updates, outcome unknown), their files' bytes, what the platform cannot represent, labels
that would be left out, items that would fail, and whether the target is paused.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from syncd.config import Config
from syncd.control import running_pid
from syncd.daemon import Daemon
from syncd.journal.schema import DB_NAME
from syncd.journal.store import Store
from syncd.progress import human_bytes

log = logging.getLogger("syncd.dryrun")

LISTED = 10  # failing items listed per target


@dataclass
class TargetPlan:
    """What one target would be sent."""

    target: str
    platform: str
    new: int = 0
    updates: int = 0
    unknown: int = 0  # outcome unknown after a crash: looked up (or re-sent) first
    bytes: int = 0
    delivered: int = 0  # already delivered at the current version
    cannot_represent: Counter = field(default_factory=Counter)  # label type -> items
    without_labels: int = 0  # their labels or mask are broken: sent without them
    failing: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), the first LISTED
    failing_count: int = 0
    paused: str | None = None

    @property
    def items(self) -> int:
        return self.new + self.updates + self.unknown


@dataclass
class DryRun:
    targets: list[TargetPlan]
    settling: list[str]  # keys still being written when the dry run stopped waiting

    @property
    def exit_code(self) -> int:
        return 1 if any(plan.failing_count or plan.paused for plan in self.targets) else 0


def copy_journal(state_dir: Path, into: Path) -> None:
    """Copy the journal of ``state_dir`` (if any) into the directory ``into`` without
    changing a byte of it (see the module docstring)."""
    source = state_dir / DB_NAME
    if not source.exists():
        return
    for _ in range(3):
        if running_pid(state_dir) is not None:
            break
        before = _signature(state_dir)
        for suffix in ("", "-wal"):
            if (state_dir / (DB_NAME + suffix)).exists():
                shutil.copyfile(state_dir / (DB_NAME + suffix), into / (DB_NAME + suffix))
        if running_pid(state_dir) is None and _signature(state_dir) == before:
            return
        for suffix in ("", "-wal", "-shm"):
            (into / (DB_NAME + suffix)).unlink(missing_ok=True)
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    copy = sqlite3.connect(into / DB_NAME)
    try:
        reader.backup(copy)
    finally:
        copy.close()
        reader.close()


def _signature(state_dir: Path) -> list[tuple[int, int] | None]:
    out = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(state_dir / (DB_NAME + suffix))
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return out


def dry_run(config: Config, *, max_wait: float = 600.0) -> DryRun:
    """Scan and settle every folder on a copy of the journal; what each target would get."""
    with tempfile.TemporaryDirectory(prefix="syncd-dry-run-") as scratch:
        copy_journal(config.daemon.state_dir, Path(scratch))
        daemon_table = config.daemon.model_copy(update={"state_dir": Path(scratch)})
        daemon = Daemon(config.model_copy(update={"daemon": daemon_table}), watch=False)
        store = daemon.store = Store.open(Path(scratch))
        for part in (daemon.settler, daemon.dispatcher, daemon.health):
            part.store = store
        try:
            now = time.time()
            daemon.folders.check_presence(daemon.watcher, watching=False)
            daemon.scan(now)
            deadline = time.monotonic() + max_wait
            while daemon.settling and time.monotonic() < deadline:
                with store.transaction():
                    daemon.settler.settle(time.time())
                upcoming = daemon.settler.next_deadline()
                if upcoming is not None and daemon.settling:
                    time.sleep(min(1.0, max(0.0, upcoming - time.time())))
            return DryRun([_plan(store, daemon, name) for name in daemon.targets],
                          sorted(entry.files.key for entry in daemon.settling.values()))
        finally:
            daemon.settler.close()
            for target in daemon.targets.values():
                target.close()
            store.close()


def _plan(store: Store, daemon: Daemon, name: str) -> TargetPlan:
    target = daemon.targets[name]
    plan = TargetPlan(name, target.platform, paused=store.paused_targets().get(name))
    rows = store.deliveries_of_target(name)
    for row in rows:
        if row["state"] == "acked":
            plan.delivered += 1
            continue
        if row["state"] == "failed":
            plan.failing_count += 1
            if len(plan.failing) < LISTED:
                plan.failing.append((row["key"], row["error"] or row["item_error"] or "failed"))
            continue
        if row["item_state"] != "ready" or row["state"] not in ("pending", "in_flight"):
            continue
        if row["acked_version"] or row["receipt"]:
            plan.updates += 1
        elif row["outcome_unknown"] or row["state"] == "in_flight":
            plan.unknown += 1
        else:
            plan.new += 1
        for path in (row["image"], row["sidecar"], row["mask"]):
            if path:
                try:
                    plan.bytes += os.stat(path).st_size
                except OSError:
                    pass
        if row["label_error"]:
            plan.without_labels += 1
        note = row["note"] or ""
        if "cannot represent: " in note:
            lost = note.split("cannot represent: ", 1)[1].split(";", 1)[0]
            plan.cannot_represent.update(part.strip() for part in lost.split(",") if part.strip())
    return plan


def render(result: DryRun) -> str:
    """The dry run's report, one block per target."""
    lines = ["dry run: nothing was sent and the journal is unchanged"]
    for plan in result.targets:
        lines.append(f"target {plan.target} ({plan.platform}):")
        if plan.paused:
            lines.append(f"  PAUSED: {plan.paused}: nothing is sent until it is resumed")
        parts = [f"{plan.new} new", f"{plan.updates} updates"]
        if plan.unknown:
            parts.append(f"{plan.unknown} whose last attempt had an unknown outcome (looked up or sent again)")
        lines.append(f"  would send {plan.items} items, {human_bytes(plan.bytes)}: {', '.join(parts)}")
        lines.append(f"  already delivered: {plan.delivered}")
        if plan.cannot_represent:
            lost = ", ".join(f"{kind} ({n} items)" for kind, n in sorted(plan.cannot_represent.items()))
            lines.append(f"  {plan.platform} cannot represent: {lost}; those labels are left out")
        if plan.without_labels:
            lines.append(f"  {plan.without_labels} items would be sent without their labels/mask (broken; "
                         "syncd status says why after a run)")
        if plan.failing_count:
            lines.append(f"  failed, not sent until their files change or `syncd retry`: {plan.failing_count} items")
            lines += [f"    {key}: {reason}" for key, reason in plan.failing]
            if plan.failing_count > len(plan.failing):
                lines.append(f"    ... and {plan.failing_count - len(plan.failing)} more")
    if result.settling:
        lines.append(f"still being written, not counted: {len(result.settling)} items "
                     f"({', '.join(result.settling[:LISTED])}{', ...' if len(result.settling) > LISTED else ''})")
    return "\n".join(lines)
