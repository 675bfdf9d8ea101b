"""The HTTP listener of ``syncd run`` (``[http] listen``): read-only, bounded, one seam.

- ``server.py``: the transport (one I/O thread with selectors, a fixed pool of workers,
  bounded connections and timeouts);
- ``routes.py``: GET/HEAD of ``/``, ``/healthz``, ``/status.json``, ``/history.json``,
  ``/metrics``;
- ``provider.py``: ``Provider``, the only thing the listener reads of the daemon;
- ``page.py``: the self-contained status page.

``serve(config, provider)`` starts it; errors binding the address become a ``ConfigError``
(an address this machine does not have) or a ``LocalError`` (the port is taken).
"""

from __future__ import annotations

import errno
import logging
import socket

from syncd.config import Config, is_loopback, split_listen
from syncd.errors import ConfigError, LocalError
from syncd.http.provider import Provider
from syncd.http.routes import Routes
from syncd.http.server import Listener

log = logging.getLogger("syncd.http")


def serve(config: Config, provider: Provider) -> Listener:
    """Start the listener on ``[http] listen`` (which must be set); returns it (``stop()`` it)."""
    listen = config.http.listen
    host, port = split_listen(listen)
    listener = Listener(host, port, Routes(provider, loopback=is_loopback(host)))
    try:
        listener.start()
    except socket.gaierror as exc:
        raise ConfigError(f"http.listen: cannot resolve {host!r}: {exc.strerror}; use an IP address such as "
                          "127.0.0.1") from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"http.listen: {listen}: this machine has no such address") from None
        hint = ("another program, or another syncd, uses that port: choose another one"
                if exc.errno == errno.EADDRINUSE else "choose another address or port")
        raise LocalError(f"cannot listen on {listen} ([http] listen): {exc.strerror}; {hint}") from None
    log.info("serving http://%s/ (status page, /healthz, /status.json, /history.json, /metrics)", listen)
    return listener


__all__ = ["Listener", "Provider", "Routes", "serve"]
