"""Logging, configured in one place: one line per state change on stderr (journald)."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's structured
    ``fields`` (a delivery line: key, target, outcome, attempt, duration_ms, bytes)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured fields: log.info(..., extra={"fields": {...}})
        if isinstance(fields, dict):
            for name, value in fields.items():
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", *, stream=None) -> None:
    """Log to ``stream`` (default stderr; ``syncd once`` at a terminal passes the progress
    line's ``TerminalLine``, so log lines go above it)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds its own timestamps; a terminal user still wants one.
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries chatter at INFO (urllib3 connection pools, watchdog); keep them to warnings.
    for noisy in ("urllib3", "watchdog", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
