"""The listener's transport (syncd.http.server) with real sockets on 127.0.0.1 and a trivial
handler: HTTP/1.1 framing, keep-alive and pipelining, HEAD, the bounds (connections,
threads, head size), timeouts, and a handler that raises."""

from __future__ import annotations

import socket
import threading
import time
import weakref

import pytest

from syncd.http.server import MAX_HEAD, Listener, Request, Response


def echo(request: Request) -> Response:
    if request.target == "/boom":
        raise RuntimeError("a bug")
    return Response(200, f"{request.method} {request.target} {request.headers.get('x-n', '')}".encode())


@pytest.fixture
def listener():
    server = Listener("127.0.0.1", 0, echo, max_connections=8, workers=2, request_timeout=1.0)
    server.start()
    yield server
    server.stop()


def connect(server: Listener) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=5)
    return sock


_readers: "weakref.WeakKeyDictionary[socket.socket, object]" = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """The next response on ``sock``: (status, headers, body). One buffered reader per socket
    keeps what arrived of the following (pipelined) responses."""
    reader = _readers.setdefault(sock, sock.makefile("rb"))
    line = reader.readline()
    assert line, "connection closed before a response"
    headers = {}
    while (header := reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    body = reader.read(0 if head_only else int(headers["content-length"]))
    return int(line.split()[1]), headers, body


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(listener):
    sock = connect(listener)
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nX-N: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-N: 2\r\n\r\n")
    assert read_response(sock)[2] == b"GET /a 1"
    assert read_response(sock)[2] == b"GET /b 2"
    sock.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, later
    status, headers, body = read_response(sock)
    assert (status, body, headers["connection"]) == (200, b"GET /c ", "keep-alive")
    sock.sendall(b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert read_response(sock)[1]["connection"] == "close"
    assert closed(sock)


def test_head_sends_the_length_without_the_body(listener):
    sock = connect(listener)
    sock.sendall(b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
    status, headers, _ = read_response(sock, head_only=True)
    assert status == 200 and headers["content-length"] == str(len(b"HEAD /x "))
    assert read_response(sock)[2] == b"GET /y "  # the HEAD answer carried no body bytes


def test_http10_closes_after_the_answer(listener):
    sock = connect(listener)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert read_response(sock)[0] == 200
    assert closed(sock)


@pytest.mark.parametrize(("raw", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET / SPDY/3\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10), 431),  # never finished
])
def test_malformed_or_huge_requests_are_refused_and_closed(listener, raw, status):
    sock = connect(listener)
    sock.sendall(raw)
    assert read_response(sock)[0] == status
    assert closed(sock)


def test_a_request_with_a_body_is_answered_then_closed(listener):
    sock = connect(listener)
    sock.sendall(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    assert read_response(sock)[0] == 200
    assert closed(sock)  # the body was never read, so the connection cannot be reused


def test_a_handler_that_raises_is_a_500_and_the_listener_goes_on(listener):
    sock = connect(listener)
    sock.sendall(b"GET /boom HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n\r\n")
    assert read_response(sock)[0] == 500
    assert read_response(sock)[2] == b"GET /ok "


def test_a_silent_connection_is_closed_after_the_request_timeout(listener):
    sock = connect(listener)
    assert closed(sock, timeout=5)  # request_timeout is 1 s
    sock = connect(listener)
    sock.sendall(b"GET / HTTP/1.1\r\n")  # half a request, never finished
    assert closed(sock, timeout=5)


def test_idle_connections_cost_no_thread_and_never_lock_out_a_new_client(listener):
    threads_before = threading.active_count()
    idle = [connect(listener) for _ in range(40)]  # 5x the bound of 8
    time.sleep(0.2)
    fresh = connect(listener)
    fresh.sendall(b"GET /fresh HTTP/1.1\r\n\r\n")
    assert read_response(fresh)[2] == b"GET /fresh "
    # 1 I/O thread + 2 workers at most, whatever the number of sockets.
    assert threading.active_count() <= threads_before + 2
    still_open = 0
    for sock in idle:
        sock.setblocking(False)
        try:
            still_open += sock.recv(1) != b""
        except BlockingIOError:
            still_open += 1
        except ConnectionResetError:
            pass
    assert still_open <= 8  # the oldest idle ones were closed to make room


def test_a_slow_handler_holds_a_worker_not_the_other_connections():
    gate = threading.Event()

    def handler(request: Request) -> Response:
        if request.target == "/slow":
            gate.wait(10)
        return Response(200, request.target.encode())

    server = Listener("127.0.0.1", 0, handler, workers=2)
    server.start()
    try:
        slow = connect(server)
        slow.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
        quick = connect(server)
        quick.sendall(b"GET /quick HTTP/1.1\r\n\r\n")
        assert read_response(quick)[2] == b"/quick"
        gate.set()
        assert read_response(slow)[2] == b"/slow"
    finally:
        gate.set()
        server.stop()


def test_stop_closes_the_port():
    server = Listener("127.0.0.1", 0, echo)
    server.start()
    address = server.address
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2)
