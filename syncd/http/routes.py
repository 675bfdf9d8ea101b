"""What the listener serves, read-only: GET and HEAD, five paths.

| path | answer |
| --- | --- |
| ``/`` | the status page (syncd.http.page): self-contained, it polls the two JSON routes |
| ``/healthz`` | 200 or 503 with a JSON body saying why (``Provider.health``) |
| ``/status.json`` | what ``syncd status --json`` prints; 503 with ``{"error": ...}`` without a journal |
| ``/history.json`` | the last hour of samples (``Provider.history``) |
| ``/metrics`` | the Prometheus text the daemon last rendered |

Any other method is 405, any other path 404. On a loopback address a request whose ``Host``
is neither an IP address nor ``localhost`` is refused (403): a web page the operator visits
could otherwise point its own host name at 127.0.0.1 (DNS rebinding) and read the status.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from syncd.errors import LocalError
from syncd.http.page import HEADERS as PAGE_HEADERS
from syncd.http.page import HTML as PAGE
from syncd.http.provider import Provider
from syncd.http.server import Request, Response

COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
JSON = "application/json"
METRICS = "text/plain; version=0.0.4; charset=utf-8"


def _json(status: int, data: Any) -> Response:
    return Response(status, (json.dumps(data, indent=2) + "\n").encode(), JSON)


def host_allowed(host: str | None) -> bool:
    """True for a missing Host (HTTP/1.0), an IP address, or localhost, with any port."""
    if not host:
        return True
    if host.startswith("["):  # [v6]:port
        name = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:  # name:port
        name = host.split(":")[0]
    else:
        name = host
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Routes:
    """The request handler given to ``Listener`` (called in its worker threads)."""

    def __init__(self, provider: Provider, *, loopback: bool):
        self.provider = provider
        self.loopback = loopback
        self.paths = {
            "/": self.page,
            "/healthz": self.healthz,
            "/status.json": self.status,
            "/history.json": self.history,
            "/metrics": self.metrics,
        }

    def __call__(self, request: Request) -> Response:
        response = self._route(request)
        response.headers = {**COMMON_HEADERS, **response.headers}
        return response

    def _route(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"read-only: GET and HEAD only\n", headers={"Allow": "GET, HEAD"})
        if self.loopback and not host_allowed(request.headers.get("host")):
            return Response(403, b"this listener answers to localhost and IP addresses only (Host header)\n")
        handler = self.paths.get(urlsplit(request.target).path)
        if handler is None:
            return Response(404, b"not found: / /healthz /status.json /history.json /metrics\n")
        return handler()

    def page(self) -> Response:
        return Response(200, PAGE, "text/html; charset=utf-8", headers=dict(PAGE_HEADERS))

    def healthz(self) -> Response:
        healthy, details = self.provider.health()
        return _json(200 if healthy else 503, details)

    def status(self) -> Response:
        try:
            return Response(200, self.provider.status_json(), JSON)
        except LocalError as exc:
            return _json(503, {"error": str(exc)})

    def history(self) -> Response:
        return _json(200, self.provider.history())

    def metrics(self) -> Response:
        text = self.provider.metrics_text()
        if not text:
            return Response(503, b"# the first figures are not rendered yet\n", METRICS)
        return Response(200, text.encode(), METRICS)
