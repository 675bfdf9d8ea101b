"""The HTTP/1.1 listener: one I/O thread for every connection, a fixed pool for the answers.

``Listener(host, port, handle)`` accepts connections on one socket and reads requests with
``selectors`` in a single thread; a complete request goes to one of ``WORKERS`` threads,
which call ``handle(request) -> Response``; the I/O thread writes the answer back. So the
threads are ``1 + WORKERS`` whatever the clients do, and an idle connection costs a file
descriptor and a small buffer, never a thread.

Bounds (what a misbehaving or crowded client gets):

- at most ``MAX_CONNECTIONS`` open connections: a new one beyond that closes the connection
  that has been idle longest (waiting for a request), so a page or a scrape still gets in
  when hundreds of idle sockets are held open; when every connection is busy the new one is
  answered 503;
- ``REQUEST_TIMEOUT`` seconds to send a complete request head after connecting or after the
  previous answer (keep-alive), else the connection is closed;
- a request head (request line and headers) of at most ``MAX_HEAD`` bytes (431 otherwise);
  request bodies are never read: a request that announces one is answered and closed;
- ``WRITE_TIMEOUT`` seconds for the client to take an answer.

``handle`` is called in a worker thread and must not raise (an exception is answered 500
and logged). Only the transport lives here; what is served is syncd.http.routes.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable

log = logging.getLogger("syncd.http")

MAX_CONNECTIONS = 64
WORKERS = 2
MAX_HEAD = 8192
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0


@dataclass
class Request:
    method: str
    target: str  # as sent: path and query
    version: str  # "HTTP/1.1"
    headers: dict[str, str]  # lower-case names


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float  # monotonic: when it is closed if it has not moved on
    inbuf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    busy: bool = False  # a worker holds its request, or its answer is being written
    close_after: bool = False


def _parse_head(head: bytes) -> Request | None:
    """The request line and headers, or None when they are not HTTP/1.x."""
    try:
        text = head.decode("latin-1")
        line, *rest = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target:
        return None
    headers: dict[str, str] = {}
    for raw in rest:
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return Request(method, target, version, headers)


def serialize(response: Response, *, head_only: bool, close: bool) -> bytes:
    """The bytes of ``response`` (HEAD: the headers only, with the body's Content-Length)."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}",
             f"Connection: {'close' if close else 'keep-alive'}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class Listener:
    """See the module docstring. ``start()`` binds (``OSError`` when it cannot), ``stop()``."""

    def __init__(self, host: str, port: int, handle: Callable[[Request], Response], *,
                 max_connections: int = MAX_CONNECTIONS, workers: int = WORKERS,
                 request_timeout: float = REQUEST_TIMEOUT):
        self.host, self.port = host, port
        self.handle = handle
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.workers = workers
        self._conns: dict[int, _Conn] = {}  # fileno -> connection (the I/O thread only)
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # (conn, bytes, close) from the workers
        self._stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port chosen by the system when 0 was asked)."""
        assert self._sock is not None
        return self._sock.getsockname()[:2]

    def start(self) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="http-worker")
        self._thread = threading.Thread(target=self._loop, name="http-io", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._thread = None

    # -- the I/O thread ---------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or stopping

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                timeout = max(0.0, min([c.deadline for c in self._conns.values()] or [time.monotonic() + 1.0])
                              - time.monotonic())
                for key, events in self._selector.select(min(timeout, 1.0)):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif events & selectors.EVENT_WRITE:
                        self._write(key.data)
                    else:
                        self._read(key.data)
                self._answers()
                self._expire()
        except Exception:  # pragma: no cover - a bug here must not take the daemon down
            log.exception("the HTTP listener stopped")
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            assert self._sock is not None
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(self.max_connections):  # a bounded batch per round
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: leave the rest in the backlog
                log.warning("cannot accept an HTTP connection: %s", exc)
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._evict_idle():
                try:
                    sock.send(serialize(Response(503, b"too many connections\n"), head_only=False, close=True))
                except OSError:
                    pass
                sock.close()
                continue
            conn = _Conn(sock, time.monotonic() + self.request_timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_idle(self) -> bool:
        """Close the connection waiting longest for a request (its deadline is the oldest)."""
        idle = [c for c in self._conns.values() if not c.busy]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.deadline))
        return True

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        """Hand the buffered request to a worker once its head is complete."""
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > MAX_HEAD:
                self._reply_and_close(conn, Response(431, b"request head too large\n"))
            return
        head, conn.inbuf = bytes(conn.inbuf[:end]), conn.inbuf[end + 4:]
        if end > MAX_HEAD:
            self._reply_and_close(conn, Response(431, b"request head too large\n"))
            return
        request = _parse_head(head)
        if request is None:
            self._reply_and_close(conn, Response(400, b"not an HTTP/1.x request\n"))
            return
        connection = request.headers.get("connection", "").lower()
        has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        # A body is never read, so the connection cannot be reused after one.
        conn.close_after = (has_body or connection == "close"
                            or (request.version == "HTTP/1.0" and connection != "keep-alive"))
        conn.busy = True
        self._selector.unregister(conn.sock)  # nothing is read while the answer is made
        assert self._pool is not None
        self._pool.submit(self._work, conn, request)

    def _reply_and_close(self, conn: _Conn, response: Response) -> None:
        conn.close_after = True
        conn.busy = True
        self._selector.unregister(conn.sock)
        self._send(conn, serialize(response, head_only=False, close=True))

    def _answers(self) -> None:
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            if self._conns.get(conn.sock.fileno()) is conn:  # not closed by stop()
                self._send(conn, data)

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.out = memoryview(data)
        conn.deadline = time.monotonic() + WRITE_TIMEOUT
        self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if len(conn.out):
            return
        conn.out = None
        if conn.close_after:
            self._close(conn)
            return
        conn.busy = False
        conn.deadline = time.monotonic() + self.request_timeout
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        if conn.inbuf:  # a pipelined request arrived with the previous one
            self._next_request(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now and (c.out is not None or not c.busy)]:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fileno = conn.sock.fileno()
        if self._conns.pop(fileno, None) is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass  # a worker holds it: not registered
        conn.sock.close()

    # -- a worker thread ----------------------------------------------------------------------
    def _work(self, conn: _Conn, request: Request) -> None:
        try:
            response = self.handle(request)
        except Exception:
            log.exception("error answering %s %s", request.method, request.target)
            response = Response(500, b"internal error (please report this)\n")
        data = serialize(response, head_only=request.method == "HEAD", close=conn.close_after)
        self._done.put((conn, data))
        self._wake()
