"""Opt-in metrics in the Prometheus text format: an HTTP endpoint and/or a textfile.

The coordinator refreshes the figures every ``interval_seconds`` (a few indexed aggregate
queries) and keeps the rendered text; the HTTP thread only serves that text, so scrapes
never touch the journal. The textfile (for node_exporter's textfile collector) is written
atomically.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from syncd import __version__
from syncd.config import MetricsSettings
from syncd.fsutil import write_atomic
from syncd.journal.queries import JournalReader

log = logging.getLogger("syncd.metrics")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(store: JournalReader, *, targets: list[str], paused: set[str], in_flight: Counter, attempts: Counter,
           now: float, throttles: Counter | None = None, disk_low: bool = False) -> str:
    """The metrics text for the journal ``store`` plus the coordinator's in-memory counters
    (``disk_low``: the disk guard holds new work, syncd.diskguard)."""
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
    return "\n".join(lines) + "\n"


class Metrics:
    """Holds the latest metrics text; serves it and/or writes it as configured."""

    def __init__(self, settings: MetricsSettings):
        self.settings = settings
        self.text = ""
        self.next_refresh = 0.0
        self._server: ThreadingHTTPServer | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.listen or self.settings.textfile)

    def start(self) -> None:
        if not self.settings.listen:
            return
        host, _, port = self.settings.listen.rpartition(":")
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = metrics.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        except OSError as exc:  # in use, an address not on this machine, a port below 1024
            # Metrics never stop deliveries: say why there are none and go on.
            reason = exc.strerror or str(exc)
            hint = " (another syncd or exporter?)" if exc.errno == errno.EADDRINUSE else ""
            log.error("cannot serve metrics on %s: %s%s; deliveries go on without /metrics: free the port or "
                      "change [metrics] listen, then restart", self.settings.listen, reason, hint)
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("serving metrics on http://%s/metrics", self.settings.listen)

    def refresh(self, text: str) -> None:
        self.text = text
        if self.settings.textfile is not None:
            try:
                # 0644 whatever the umask: node_exporter reads it as another user; it holds no secret.
                write_atomic(self.settings.textfile, text.encode(), fsync=False, mode=0o644)
            except Exception as exc:  # metrics must never stop deliveries
                log.warning("cannot write the metrics textfile %s: %s", self.settings.textfile, exc)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
