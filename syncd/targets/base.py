"""The Target interface every platform adapter implements, and the types it exchanges.

A target is a small, synchronous adapter around one platform dataset. The daemon owns
retries, backoff, journaling, logging and concurrency; a target only knows how to speak to
its platform. Contract:

- ``check()`` verifies credentials and that the dataset exists. It returns a list of
  warnings (for example what the platform cannot represent). It raises
  ``FatalTargetError`` when the target cannot work and ``TransientError`` when the
  platform could not be reached.
- ``deliver(upload)`` makes exactly one attempt to make the remote item equal to
  ``upload`` and returns a ``Receipt``. ``upload.previous`` is the receipt of the last
  acknowledged version (``None`` for a first delivery): with it, the target updates the
  existing remote item instead of creating one. The remote key is derived from
  ``upload.key`` only, so sending the same upload twice never creates two remote items on
  upsert platforms. Raises ``TransientError``, ``PermanentError`` or ``FatalTargetError``.
- ``lookup(upload)`` finds the remote item for ``upload.key`` after an unknown outcome
  (crash, lost reply). It returns its receipt or ``None``. Create-only platforms
  (``create_only = True``) are asked before any re-send; upsert platforms may return None.
- ``close()`` releases sessions. Targets are used from several worker threads at once
  and must keep per-thread HTTP sessions (see ``targets.http.SessionPool``).

Secrets are read through ``read_secret`` and must never appear in an exception message.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from syncd.errors import FatalTargetError


class TargetSettings(BaseModel):
    """Options shared by every target table ``[targets.NAME]`` in the configuration."""

    model_config = ConfigDict(extra="forbid")

    platform: str
    timeout: float = Field(30.0, gt=0, description="seconds for each HTTP request")
    workers: int = Field(4, ge=1, le=64, description="concurrent deliveries to this target")
    rate_limit: float = Field(0.0, ge=0, description="requests per second to this target (0 = unlimited)")


@dataclass(frozen=True)
class Receipt:
    """What the platform returned for an acknowledged delivery.

    ``remote_id`` is the platform's handle (Nucleus item id or reference_id, Edge Impulse
    sampleId, Dataloop item id, RedBrick taskId, local record path). ``extra`` keeps any
    other JSON-serialisable handles the target needs for later updates. By convention
    ``extra["version"]`` is the version the remote item holds (for recovery) and
    ``extra["not_sent"]`` lists parts that were delivered without (e.g. a mask the platform
    refused), with the reason; the daemon shows them in ``syncd status``.
    """

    remote_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"remote_id": self.remote_id, "extra": self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "Receipt | None":
        if not data:
            return None
        return cls(remote_id=str(data["remote_id"]), extra=dict(data.get("extra") or {}))


@dataclass(frozen=True)
class Upload:
    """One version of one item, read from disk and verified against ``version``.

    ``key`` is the item key (``cam1/frame_0001``, with the folder's ``key_prefix``); every
    remote idempotency key is derived from it. ``labels`` are the sidecar's labels as
    plain dicts (see syncd.labels.sidecar); ``class_map`` is the class map that applies to the
    mask, if any.
    """

    key: str
    version: str
    image_name: str
    image: bytes
    image_sha256: str
    image_format: str
    width: int
    height: int
    metadata: dict[str, Any]
    labels: list[dict[str, Any]]
    source_path: Path
    mask: bytes | None = None
    class_map: dict[str, Any] | None = None
    previous: Receipt | None = None

    @property
    def image_suffix(self) -> str:
        return Path(self.image_name).suffix.lower()

    @property
    def mime_type(self) -> str:
        return {
            "JPEG": "image/jpeg",
            "PNG": "image/png",
            "TIFF": "image/tiff",
            "BMP": "image/bmp",
            "WEBP": "image/webp",
        }.get(self.image_format, "application/octet-stream")


def read_secret(env_name: str, *, target: str, env: Mapping[str, str] | None = None) -> str:
    """Return the secret held in environment variable ``env_name``.

    Falls back to a systemd credential file ``$CREDENTIALS_DIRECTORY/<env_name>``
    (``LoadCredential=`` in the unit). Raises FatalTargetError naming the variable, never
    the value, when neither exists.
    """
    env = os.environ if env is None else env
    value = env.get(env_name, "").strip()
    if value:
        return value
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / env_name
        if path.is_file():
            value = path.read_text(encoding="utf-8").strip()
            if value:
                return value
    raise FatalTargetError(
        f"target {target!r}: no API key: set the environment variable {env_name} "
        f"(or a systemd credential named {env_name})"
    )


class Target(ABC):
    """A platform adapter; see the module docstring for the contract."""

    platform: ClassVar[str]
    Settings: ClassVar[type[TargetSettings]] = TargetSettings
    create_only: ClassVar[bool] = False

    def __init__(self, name: str, settings: TargetSettings, *, env: Mapping[str, str] | None = None):
        self.name = name
        self.settings = settings
        self.env = os.environ if env is None else env

    def check(self) -> list[str]:
        return []

    @abstractmethod
    def deliver(self, upload: Upload) -> Receipt: ...

    def lookup(self, upload: Upload) -> Receipt | None:
        return None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
