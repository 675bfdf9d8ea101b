"""The Edge Impulse client both Edge Impulse targets use: the shared HttpClient with the
``x-api-key`` header, and the classification of Edge Impulse's replies (docs/platforms/edgeimpulse.md).

Studio answers with ``{"success": bool, "error"?: str, ...}``. An error can arrive inside an
HTTP 200, so every reply goes through ``result()``, which turns it into the syncd error class:

- ``success: true`` (2xx)                       -> the body
- 401/403, or an error naming the key/access    -> FatalTargetError (the target pauses)
- 408/425/429/5xx, or "too many requests"       -> TransientError (with Retry-After)
- 404, or "not found"/"does not exist"          -> RemoteNotFound (a PermanentError the
                                                   callers may treat as "gone")
- anything else                                 -> PermanentError with the platform's words
"""

from __future__ import annotations

from typing import Any

import requests
from pydantic import Field, field_validator

from syncd.errors import FatalTargetError, PermanentError, SyncdError, TransientError
from syncd.rate import is_throttle
from syncd.targets.base import TargetSettings
from syncd.targets.http import TRANSIENT_STATUS, Credentials, HttpClient, parse_retry_after, redact

AUTH_WORDS = ("api key", "apikey", "unauthori", "not authori", "forbidden", "permission", "no access",
              "access denied", "authenticat", "not logged in", "jwt")
RATE_WORDS = ("too many requests", "rate limit", "try again later")
NOT_FOUND_WORDS = ("not found", "no sample found", "does not exist", "could not find", "cannot find")
MAX_ERROR_TEXT = 300


class RemoteNotFound(PermanentError):
    """The platform says the sample / data item / dataset does not exist."""


def _snippet(text: Any) -> str:
    text = str(text).strip().replace("\n", " ")
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…"


def failure(message: str, *, status: int, retry_after: float | None = None) -> SyncdError:
    """The syncd error for a failed Edge Impulse reply (see the module docstring)."""
    lowered = message.lower()
    if status in (401, 403) or any(w in lowered for w in AUTH_WORDS):
        return FatalTargetError(f"{message} — check the API key in the environment and its permissions")
    if status in TRANSIENT_STATUS or status >= 500 or any(w in lowered for w in RATE_WORDS):
        # A 429 was refused before anything was done; a throttle slows the target (syncd.rate).
        return TransientError(message, retry_after=retry_after, throttled=is_throttle(status, retry_after),
                              outcome_unknown=status != 429)
    if status == 404 or any(w in lowered for w in NOT_FOUND_WORDS):
        return RemoteNotFound(message)
    return PermanentError(message)


def result(response: requests.Response, *, context: str, secrets: tuple[str, ...]) -> dict[str, Any]:
    """The JSON body of a successful reply; raise the matching syncd error otherwise."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not 200 <= status < 300:
        detail = error if error else (response.text or "").strip() or "(empty body)"
        message = redact(f"{context}: HTTP {status}: {_snippet(detail)}", secrets)
        raise failure(message, status=status, retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if not isinstance(body, dict):
        # A proxy page or a reply cut short: the request may have been committed.
        raise TransientError(redact(f"{context}: the reply is not a JSON object: {_snippet(response.text)}", secrets))
    if body.get("success") is not True:
        message = redact(f"{context}: Edge Impulse said: {_snippet(error or 'success is false, no error given')}",
                         secrets)
        raise failure(message, status=status)
    return body


class EdgeImpulseClient(HttpClient):
    """Requests to Edge Impulse (Studio and ingestion alike; ``path`` is a full URL), the
    key sent as ``x-api-key``."""

    def credentials(self, key: str) -> Credentials:
        return Credentials(headers={"x-api-key": key})

    def call(self, method: str, url: str, *, context: str, **kwargs) -> dict[str, Any]:
        """One request; the reply checked by ``result``. Transport failures are transient."""
        response = self.request(method, url, context=context, **kwargs)
        return result(response, context=self.context(context), secrets=self.secrets)


class EdgeImpulseSettingsBase(TargetSettings):
    api_url: str = Field("https://studio.edgeimpulse.com/v1", description="Edge Impulse Studio API base URL")

    @field_validator("api_url", check_fields=False)
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
