"""Opt-in metrics in the Prometheus text format: served by the HTTP listener and/or a textfile.

The coordinator refreshes the figures every ``interval_seconds`` (a few indexed aggregate
queries, one ``statvfs`` per watched filesystem) and keeps the rendered text; the HTTP
listener (syncd.http, ``GET /metrics``) only serves that text, so scrapes never touch the
journal. The textfile (for node_exporter's textfile collector) is written atomically.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from syncd import __version__
from syncd.config import Config
from syncd.fsutil import write_atomic
from syncd.journal.queries import JournalReader

log = logging.getLogger("syncd.metrics")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(store: JournalReader, *, targets: list[str], paused: set[str], in_flight: Counter, attempts: Counter,
           now: float, throttles: Counter | None = None, disk_low: bool = False, sent: dict[str, int] | None = None,
           filesystems: list[tuple[str, Path]] = ()) -> str:
    """The metrics text for the journal ``store`` plus the coordinator's in-memory counters
    (``disk_low``: the disk guard holds new work, syncd.diskguard), the bytes sent per target
    (``syncd.limits.sent_bytes``) and the free space of ``filesystems`` (``(role, path)``: the
    state directory, the watched folders)."""
    lines = [
        "# HELP syncd_build_info syncd version.",
        "# TYPE syncd_build_info gauge",
        f"syncd_build_info{_labels(version=__version__)} 1",
        "# HELP syncd_deliveries Deliveries by target and state (waiting, pending, in_flight, acked, failed).",
        "# TYPE syncd_deliveries gauge",
    ]
    by_state = store.deliveries_by_target_and_state()
    for target in targets:
        for state in ("pending", "in_flight", "acked", "failed"):
            lines.append(f"syncd_deliveries{_labels(target=target, state=state)} {by_state.get((target, state), 0)}")
    lines += ["# HELP syncd_delivery_attempts_total Delivery attempts since start, by outcome.",
              "# TYPE syncd_delivery_attempts_total counter"]
    for (target, outcome), count in sorted(attempts.items()):
        lines.append(f"syncd_delivery_attempts_total{_labels(target=target, outcome=outcome)} {count}")
    oldest = store.oldest_pending_by_target()
    success = store.last_success_by_target()
    lines += ["# HELP syncd_oldest_pending_seconds Age of the oldest pending delivery.",
              "# TYPE syncd_oldest_pending_seconds gauge"]
    for target in targets:
        since = oldest.get(target)
        age = 0 if since is None else round(now - since, 3)
        lines.append(f"syncd_oldest_pending_seconds{_labels(target=target)} {age}")
    lines += ["# HELP syncd_target_paused 1 when the target is paused (bad credentials, unknown dataset).",
              "# TYPE syncd_target_paused gauge"]
    lines += [f"syncd_target_paused{_labels(target=t)} {int(t in paused)}" for t in targets]
    lines += ["# HELP syncd_target_last_success_timestamp_seconds Time of the last acknowledged delivery.",
              "# TYPE syncd_target_last_success_timestamp_seconds gauge"]
    lines += [f"syncd_target_last_success_timestamp_seconds{_labels(target=t)} {success.get(t) or 0}" for t in targets]
    lines += ["# HELP syncd_in_flight Deliveries currently on the wire.", "# TYPE syncd_in_flight gauge"]
    lines += [f"syncd_in_flight{_labels(target=t)} {in_flight.get(t, 0)}" for t in targets]
    rates = store.target_rates()
    lines += ["# HELP syncd_target_rate Requests per second the target is held to now (+Inf: unlimited); "
              "syncd status says why.",
              "# TYPE syncd_target_rate gauge"]
    for target in targets:
        rate = rates.get(target, (None, None))[0]
        lines.append(f"syncd_target_rate{_labels(target=target)} {'+Inf' if rate is None else rate}")
    lines += ["# HELP syncd_target_throttled_total Requests the platform refused as over its rate limit (429, "
              "503 with Retry-After) since start.",
              "# TYPE syncd_target_throttled_total counter"]
    lines += [f"syncd_target_throttled_total{_labels(target=t)} {(throttles or Counter()).get(t, 0)}"
              for t in targets]
    settling = store.settling_count()
    lines += ["# HELP syncd_items_settling Items waiting for their files to be complete.",
              "# TYPE syncd_items_settling gauge", f"syncd_items_settling {settling}"]
    lines += ["# HELP syncd_disk_low 1 while the state directory's filesystem is below min_free_space "
              "(no new work is taken).", "# TYPE syncd_disk_low gauge", f"syncd_disk_low {int(disk_low)}"]
    removed = sorted(store.retention_totals().items())
    lines += ["# HELP syncd_retention_removed_items_total Items whose local files retention removed "
              "(every target had acknowledged them).", "# TYPE syncd_retention_removed_items_total counter"]
    lines += [f"syncd_retention_removed_items_total{_labels(folder=f)} {n}" for f, (n, _, _, _) in removed]
    lines += ["# HELP syncd_retention_removed_bytes_total Bytes those files held.",
              "# TYPE syncd_retention_removed_bytes_total counter"]
    lines += [f"syncd_retention_removed_bytes_total{_labels(folder=f)} {b}" for f, (_, b, _, _) in removed]
    sent = sent or {}
    lines += ["# HELP syncd_sent_bytes_total Bytes sent to the target since start (request bodies; "
              "the local target: bytes written).", "# TYPE syncd_sent_bytes_total counter"]
    lines += [f"syncd_sent_bytes_total{_labels(target=t)} {sent.get(t, 0)}" for t in targets]
    lines += ["# HELP syncd_filesystem_free_bytes Free space of the filesystem holding the state directory or a "
              "watched folder.", "# TYPE syncd_filesystem_free_bytes gauge"]
    for role, path in filesystems:
        free = free_bytes(path)
        if free is not None:
            lines.append(f"syncd_filesystem_free_bytes{_labels(role=role, path=str(path))} {free}")
    return "\n".join(lines) + "\n"


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on the filesystem of ``path`` (None: cannot tell)."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return None  # a folder that is missing (unmounted) has no figure rather than a wrong one
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


class Metrics:
    """Holds the latest metrics text; writes the textfile as configured. ``serving``: the
    HTTP listener serves the text (``[http] listen``), so it is rendered even without a
    textfile."""

    def __init__(self, config: Config, *, serving: bool = False):
        self.settings = config.metrics
        self.serving = serving
        self.filesystems = [("state", config.daemon.state_dir)] + [("folder", f.path) for f in config.folders]
        self.text = ""
        self.next_refresh = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.serving or self.settings.textfile)

    def refresh(self, text: str) -> None:
        self.text = text
        if self.settings.textfile is not None:
            try:
                # 0644 whatever the umask: node_exporter reads it as another user; it holds no secret.
                write_atomic(self.settings.textfile, text.encode(), fsync=False, mode=0o644)
            except Exception as exc:  # metrics must never stop deliveries
                log.warning("cannot write the metrics textfile %s: %s", self.settings.textfile, exc)
