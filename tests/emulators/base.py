"""A small stateful HTTP emulator framework with fault injection and service costs.

Each platform emulator subclasses ``Emulator``, registers routes with ``@route`` and keeps
its state (datasets, items, jobs) in plain dicts guarded by ``self.lock``. The server is a
real ``ThreadingHTTPServer`` on 127.0.0.1 with keep-alive, so clients talk real HTTP.

What a request meets before its handler runs (the knobs, ``tests/emulators/knobs.py``):

- ``faults.outage(True)``: every connection is reset (the network is gone);
- ``rate_limit``: at most ``rate_limit.set(per_second)`` requests served per second across
  all clients; beyond it 429 with ``Retry-After`` (counted in ``rate_limit.refused``);
- ``latency``: seconds each served request waits (a slow network or a busy service);
- ``faults``: one injected fault (500/502/503/429/reset/slow/lost_reply), queued with
  ``faults.next(kind, ...)`` or at random with ``faults.set_rate(rate, kinds)``.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tests.emulators.knobs import Faults, RateLimit


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # the fault injected on this request, if any (journals record it)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def parts(self) -> list[Part]:
        """The parts of a multipart/form-data body (raises ValueError when it is not one)."""
        return parse_multipart(self.header("content-type", ""), self.body)


_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> dict[str, str]:
    """The ``; name=value`` parameters of a header value (quotes and escapes removed; an
    RFC 5987 ``name*=charset\'\'pct-encoded`` value is decoded and stored under ``name``)."""
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        name = name.lower()
        if name.endswith("*"):
            charset, _, encoded = raw.partition("\'")
            raw = unquote(encoded.partition("\'")[2], encoding=charset or "utf-8")
            name = name[:-1]
        elif name in params:
            continue  # an extended (*) value wins
        params[name] = raw
    return params


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data ``body`` (ValueError when it is not a complete one).

    Split on the boundary as bytes: the part bodies are never copied line by line, and
    what a part's own Content-Type says (image/jpeg, or the Edge Impulse SDK's odd
    multipart/form-data) makes no difference to the cost, so an emulator costs the same
    for every client. A body without its closing delimiter (cut short) is refused.
    """
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"expected multipart/form-data, got {content_type!r}")
    boundary = _header_params(content_type).get("boundary")
    if not boundary:
        raise ValueError("multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    first = body.find(delimiter)
    if first < 0 or (first > 0 and body[first - 2:first] != b"\r\n"):
        raise ValueError("multipart body without its first delimiter")
    segments = body[first + len(delimiter):].split(b"\r\n" + delimiter)
    parts: list[Part] = []
    for index, segment in enumerate(segments):
        if segment.startswith(b"--"):
            break  # the closing delimiter
        if index == len(segments) - 1:
            raise ValueError("multipart body without its closing delimiter (cut short?)")
        line_end = segment.find(b"\r\n")
        end = segment.find(b"\r\n\r\n", line_end)
        if line_end < 0 or end < 0 or segment[:line_end].strip(b" \t"):
            raise ValueError("malformed multipart part")
        headers: dict[str, str] = {}
        for line in segment[line_end + 2:end].split(b"\r\n"):
            name, colon, value = line.decode("utf-8", "surrogateescape").partition(":")
            if not colon:
                raise ValueError(f"malformed multipart header {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        params = _header_params(disposition)
        if "name" not in params:
            raise ValueError(f"multipart part without a name: {disposition!r}")
        filename = params.get("filename")
        parts.append(Part(name=params["name"], filename=None if filename is None else unquote(filename),
                          content_type=headers.get("content-type"), data=segment[end + 4:]))
    else:
        raise ValueError("multipart body without its closing delimiter (cut short?)")
    return parts


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        elif body is None:
            body = b""
        return body, headers


def json_response(data, status: int = 200, **headers: str) -> Response:
    return Response(status=status, body=data, headers=headers)


Handler = Callable[[Request], Response]


def route(method: str, pattern: str):
    """Mark an Emulator method as the handler of ``method`` on paths matching ``pattern``.

    ``pattern`` is a regex over the URL path (without query); named groups become
    ``request.params`` (URL-decoded).
    """

    def mark(fn):
        fn._route = (method.upper(), re.compile(f"^{pattern}$"))
        return fn

    return mark


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Emulator:
    """Base class: a real HTTP server on 127.0.0.1 dispatching to ``@route`` methods."""

    name = "emulator"

    def __init__(self, *, seed: int = 1234):
        self.lock = threading.RLock()
        self.faults = Faults(seed)
        self.rate_limit = RateLimit()
        self.latency = 0.0  # seconds each served request waits before it is handled
        self.requests: list[tuple[str, str]] = []
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            spec = getattr(fn, "_route", None)
            if spec:
                self._routes.append((spec[0], spec[1], getattr(self, attr)))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> "Emulator":
        emulator = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms per request on loopback).
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output quiet
                pass

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size_line = self.rfile.readline().split(b";")[0].strip()
                        size = int(size_line or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._read_body()
                emulator._dispatch(self, body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = _Server(("127.0.0.1", port), RequestHandler)
        # A short poll interval: stop() waits for one poll, and tests start many emulators.
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name=f"{self.name}-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- dispatch --------------------------------------------------------------------------
    def not_found(self, request: Request) -> Response:
        return json_response({"error": f"no route for {request.method} {request.path}"}, 404)

    def fault_path(self, request: Request) -> str:
        """The path that fault filters (``faults.next(path=...)``, ``set_rate(path=...)``)
        match and ``faults.injected`` records. Override to expose more than the URL path,
        e.g. a GraphQL operation name; must not raise."""
        return request.path

    def authorize(self, request: Request) -> Response | None:
        """Return an error response when the request is not authorised (override)."""
        return None

    def _dispatch(self, http: BaseHTTPRequestHandler, body: bytes) -> None:
        split = urlsplit(http.path)
        request = Request(
            method=http.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in http.headers.items()},
            body=body,
        )
        with self.lock:
            self.requests.append((request.method, request.path))
        if self.faults.down:  # the network is gone: the service never sees the request
            return self._reset(http)
        path = self.fault_path(request)
        if not self.rate_limit.admit(path):
            return self._write(http, json_response({"error": "rate limit exceeded, retry later"}, 429,
                                                   **{"Retry-After": str(self.rate_limit.retry_after)}))
        if self.latency > 0:
            time.sleep(self.latency)
        fault = self.faults.pick(request.method, path)
        if fault in ("reset",):
            return self._reset(http)
        if fault in ("500", "502", "503"):
            return self._write(http, json_response({"error": f"injected {fault}"}, int(fault)))
        if fault == "429":
            return self._write(
                http,
                json_response({"error": "rate limited"}, 429, **{"Retry-After": str(self.faults.retry_after)}),
            )
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        request.fault = fault
        response = self._route(request)
        if fault == "lost_reply":
            return self._reset(http)
        self._write(http, response)

    def _route(self, request: Request) -> Response:
        for method, pattern, handler in self._routes:
            if method != request.method:
                continue
            match = pattern.match(request.path)
            if match:
                request.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                denied = self.authorize(request)
                if denied is not None:
                    return denied
                try:
                    return handler(request)
                except Exception as exc:  # an emulator bug must be visible, not a hang
                    return json_response({"error": f"emulator error: {type(exc).__name__}: {exc}"}, 500)
        return self.not_found(request)

    @staticmethod
    def _write(http: BaseHTTPRequestHandler, response: Response) -> None:
        body, headers = response.encoded()
        http.send_response(response.status)
        for name, value in headers.items():
            http.send_header(name, value)
        http.send_header("Content-Length", str(len(body)))
        http.end_headers()
        if http.command != "HEAD":
            http.wfile.write(body)
        http.wfile.flush()

    @staticmethod
    def _reset(http: BaseHTTPRequestHandler) -> None:
        """Abort the connection with a TCP RST and no reply."""
        try:
            http.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            http.connection.close()
        except OSError:
            pass
        http.close_connection = True
