"""The one HTTP client every platform target uses: its API key, sessions, requests,
response classification and redaction.

Each platform's ``client.py`` builds on ``HttpClient`` (how the key is sent, the platform's
own calls); a target owns one client and hands it to its helpers. Every request goes
through ``send``, so that:
- a timeout is always set;
- connection errors and timeouts become ``TransientError`` (outcome unknown);
- 408/425/429/5xx become ``TransientError`` with the ``Retry-After`` hint; a throttle (429,
  or 503 with ``Retry-After``) is marked ``throttled`` (the target slows, not the item: the
  transport's ``rate.RateController`` has already held the whole target);
- 401/403 become ``FatalTargetError`` (the target pauses);
- other 4xx become ``PermanentError`` (the item fails);
- secrets never reach a message: the caller's secrets are masked in the response text.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from syncd import __version__
from syncd.errors import FatalTargetError, PermanentError, TransientError
from syncd.limits import LimitedAdapter
from syncd.rate import is_throttle, parse_retry_after
from syncd.targets.base import read_secret

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
        raise transient_error(message, response)
    if status in (401, 403):
        raise FatalTargetError(f"{message} — check the API key and its permissions")
    raise PermanentError(message)


def transient_error(message: str, response: requests.Response) -> TransientError:
    """The ``TransientError`` for a retryable status, with the server's ``Retry-After``.

    A throttle (429, or 503 with ``Retry-After``) is ``throttled``; a 429 is also known not to
    have been processed (``outcome_unknown`` False: the platform refused it before doing
    anything, so create-only targets need no lookup before sending again).
    """
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    throttled = is_throttle(status, retry_after)
    return TransientError(message, retry_after=retry_after, throttled=throttled, outcome_unknown=status != 429)


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


@dataclass(frozen=True)
class Credentials:
    """How a platform sends its API key: ``headers`` and ``auth`` set on every session, and
    ``secrets``, the strings masked in every message (the key and any encoded form of it)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    secrets: tuple[str, ...] = ()


class HttpClient:
    """The HTTP client of one target; a platform's client subclasses it.

    Contract:

    - The API key is read on first use, never at construction (``syncd check`` and the
      daemon build targets before any key is needed), once, under a lock: from the
      environment variable ``key_env`` or the systemd credential of that name
      (``base.read_secret``). A missing key is a ``FatalTargetError`` naming the variable.
      ``credentials(key)`` (override it) says how the key travels; it may refuse a key
      that cannot be right with a ``FatalTargetError`` that names the variable, never the
      value. Nothing is cached when it raises: the next use reads the key again.
    - ``request`` makes one request with the configured timeout on this thread's session
      (keep-alive; sessions are not thread-safe, so each thread has its own, and every one
      carries the rate and bandwidth limits). ``path`` is joined to ``base_url`` unless it
      is an absolute ``http(s)://`` URL. ``context`` says what the request does; every
      message is prefixed with the target's name. Transport failures raise
      ``TransientError``; a non-2xx reply is returned (``check=False``, the default) or
      raised as by ``raise_for_status`` (``check=True``).
    - ``raise_for_status`` returns on 2xx and otherwise raises ``TransientError``
      (408/425/429/5xx, with ``Retry-After``), ``FatalTargetError`` (401/403) or
      ``PermanentError`` (any other status). ``json`` returns the body; a body that is not
      JSON is a ``TransientError`` (a proxy page, a reply cut short).
    - No message this client raises contains a secret: every quoted reply or transport
      error is redacted with ``secrets``.
    - ``close`` closes every thread's session; the client can be used again afterwards.
    """

    def __init__(self, target: str, *, key_env: str, timeout: float, base_url: str = "",
                 env: Mapping[str, str] | None = None):
        self.name = target  # the target's name, in every message
        self.key_env = key_env
        self.timeout = timeout
        self.base_url = base_url
        self.env = os.environ if env is None else env
        self._lock = threading.Lock()
        self._key: str | None = None
        self._secrets: tuple[str, ...] = ()
        self._pool: SessionPool | None = None

    def credentials(self, key: str) -> Credentials:
        """How ``key`` is sent and what to mask; the default masks the key and sends nothing."""
        return Credentials(secrets=(key,))

    def key(self) -> str:
        """The API key, read on first use (see the class docstring)."""
        with self._lock:
            if self._key is None:
                key = read_secret(self.key_env, target=self.name, env=self.env)
                credentials = self.credentials(key)
                self._pool = SessionPool(headers=dict(credentials.headers), auth=credentials.auth)
                self._secrets = credentials.secrets or (key,)
                self._key = key
            return self._key

    @property
    def secrets(self) -> tuple[str, ...]:
        """What is masked in messages (empty until the key was read)."""
        return self._secrets

    def session(self) -> requests.Session:
        """This thread's session, with the key's headers/auth."""
        self.key()
        assert self._pool is not None
        return self._pool.get()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def context(self, context: str) -> str:
        """``context`` as it appears in messages: prefixed with the target's name."""
        return f"{self.name}: {context}"

    def request(self, method: str, path: str, *, context: str, check: bool = False, **kwargs) -> requests.Response:
        """One request (see the class docstring)."""
        session = self.session()
        return send(session, method, self.url(path), context=self.context(context), timeout=self.timeout,
                    secrets=self._secrets, check=check, **kwargs)

    def raise_for_status(self, response: requests.Response, context: str) -> None:
        raise_for_status(response, context=self.context(context), secrets=self._secrets)

    def json(self, response: requests.Response, context: str) -> Any:
        return json_body(response, context=self.context(context), secrets=self._secrets)

    def describe(self, response: requests.Response) -> str:
        """A short, secret-free description of ``response`` for messages."""
        return describe(response, self._secrets)

    def close(self) -> None:
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.close()
