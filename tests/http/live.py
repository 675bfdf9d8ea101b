"""Helpers for tests of a real ``syncd run`` with ``[http] listen``: a free port, the
configuration, and plain HTTP requests that return every status (urllib raises on 4xx/5xx)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from tests.daemon_harness import write_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_config(tmp_path: Path, targets: dict[str, dict[str, Any]] | None = None, *, port: int,
                sample_seconds: float = 1.0, extra: str = "", **kwargs) -> Path:
    """A configuration (one folder ``inbox``) whose ``[http]`` listens on 127.0.0.1:``port``."""
    targets = targets or {"local": {"platform": "local", "path": "synced"}}
    path = write_config(tmp_path, targets, **kwargs)
    path.write_text(path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\nsample_seconds = {sample_seconds}\n'
                    + extra)
    return path


def request(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers with lower-case names, body)`` of one request to 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, _, body = request(port, path)
    assert status == 200, (status, body)
    return json.loads(body)


def reachable(port: int) -> bool:
    try:
        return request(port, "/healthz", timeout=2)[0] in (200, 503)
    except OSError:
        return False


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def without_time(status: dict) -> dict:
    """``status`` without what changes from one read to the next: the time, and the free
    space of the filesystems (other processes write to them meanwhile)."""
    data = {k: v for k, v in status.items() if k != "generated_at"}
    data["disk"] = {k: v for k, v in data["disk"].items() if k != "state_free_bytes"}
    data["folders"] = [{k: v for k, v in folder.items() if k != "free_bytes"} for folder in data["folders"]]
    return data
