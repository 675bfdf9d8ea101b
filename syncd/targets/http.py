"""Shared HTTP plumbing for platform targets: sessions, timeouts, response classification.

Every request a target makes goes through ``send``, so that:
- a timeout is always set;
- connection errors and timeouts become ``TransientError`` (outcome unknown);
- 408/425/429/5xx become ``TransientError`` with the ``Retry-After`` hint;
- 401/403 become ``FatalTargetError`` (the target pauses);
- other 4xx become ``PermanentError`` (the item fails);
- secrets never reach a message: the caller's secrets are masked in the response text.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterable

import requests

from syncd import __version__
from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.limits import LimitedAdapter

TRANSIENT_STATUS = frozenset({408, 425, 429})
USER_AGENT = f"syncd/{__version__}"
MAX_BODY_IN_MESSAGE = 300


class SessionPool:
    """One ``requests.Session`` per thread (sessions are not thread-safe), for keep-alive.

    Every session carries ``limits.LimitedAdapter``, so the optional per-target request rate
    and the global bandwidth limit apply to every request without code in the targets.
    """

    def __init__(self, headers: dict[str, str] | None = None, auth=None):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._headers = headers or {}
        self._auth = auth

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = LimitedAdapter(pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            session.headers.update(self._headers)
            if self._auth is not None:
                session.auth = self._auth
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its base64-looking uses) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def describe(response: requests.Response, secrets: Iterable[str] = ()) -> str:
    """A short, secret-free description of a response for error messages."""
    body = (response.text or "").strip().replace("\n", " ")
    if len(body) > MAX_BODY_IN_MESSAGE:
        body = body[:MAX_BODY_IN_MESSAGE] + "…"
    request_id = response.headers.get("x-request-id")
    suffix = f" (request id {request_id})" if request_id else ""
    return redact(f"HTTP {response.status_code}: {body}{suffix}", secrets)


def raise_for_status(response: requests.Response, *, context: str, secrets: Iterable[str] = ()) -> None:
    """Raise the syncd error class matching a non-2xx response; return on 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"{context}: {describe(response, secrets)}"
    if status in TRANSIENT_STATUS or status >= 500:
        raise TransientError(message, retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if status in (401, 403):
        raise FatalTargetError(f"{message} — check the API key and its permissions")
    raise PermanentError(message)


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    context: str,
    timeout: float,
    secrets: Iterable[str] = (),
    check: bool = True,
    **kwargs,
) -> requests.Response:
    """One HTTP request with a timeout; transport failures become ``TransientError``.

    With ``check`` (the default) a non-2xx status raises through ``raise_for_status``.
    """
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise TransientError(f"{context}: timed out after {timeout:g}s") from exc
    except requests.ConnectionError as exc:
        raise TransientError(f"{context}: connection failed: {redact(str(exc), secrets)}") from exc
    except requests.RequestException as exc:
        raise TransientError(f"{context}: request failed: {redact(str(exc), secrets)}") from exc
    if check:
        raise_for_status(response, context=context, secrets=secrets)
    return response


def json_body(response: requests.Response, *, context: str, secrets: Iterable[str] = ()):
    """The response's JSON; a body that is not JSON is a transient error (proxy pages, cut replies)."""
    try:
        return response.json()
    except ValueError as exc:
        raise TransientError(f"{context}: the reply is not JSON: {describe(response, secrets)}") from exc
