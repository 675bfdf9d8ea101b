"""The HTTP listener of ``syncd run`` (``[http] listen``): read-only, bounded, one seam.

- ``server.py``: the transport (one I/O thread with selectors, a fixed pool of workers,
  bounded connections and timeouts);
- ``routes.py``: GET/HEAD of ``/``, ``/healthz``, ``/status.json``, ``/history.json``,
  ``/metrics``;
- ``provider.py``: ``Provider``, the only thing the listener reads of the daemon;
- ``page.py``: the self-contained status page.

``serve(config, provider)`` starts it. The listener never stops deliveries: an address it
cannot listen on (the port taken, an address this machine does not have) is one error line,
and the daemon goes on without it.
"""

from __future__ import annotations

import errno
import logging

from syncd.config import Config, is_loopback, split_listen
from syncd.http.provider import Provider
from syncd.http.routes import Routes
from syncd.http.server import Listener

log = logging.getLogger("syncd.http")


def serve(config: Config, provider: Provider) -> Listener | None:
    """Start the listener on ``[http] listen`` (which must be set) and return it (``stop()``
    it); None, after one error line, when it cannot listen there."""
    listen = config.http.listen
    host, port = split_listen(listen)
    listener = Listener(host, port, Routes(provider, loopback=is_loopback(host)))
    try:
        listener.start()
    except OSError as exc:  # taken, not this machine's address, a name that does not resolve, a port < 1024
        reason = exc.strerror or str(exc)
        hint = " (another syncd or exporter?)" if exc.errno == errno.EADDRINUSE else ""
        log.error("cannot serve HTTP on %s: %s%s; deliveries go on without the status page, /healthz and /metrics: "
                  "free the port or change [http] listen, then restart", listen, reason, hint)
        return None
    log.info("serving http://%s/ (status page, /healthz, /status.json, /history.json, /metrics)", listen)
    return listener


__all__ = ["Listener", "Provider", "Routes", "serve"]
