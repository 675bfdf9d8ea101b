"""The Target interface every platform adapter implements, and the types it exchanges.

A target is a small, synchronous adapter around one platform dataset. The daemon owns
retries, backoff, journaling, logging and concurrency; a target only knows how to speak to
its platform. What a platform can do is declared as class attributes (capabilities, read by
the daemon, ``syncd check`` and the tests without an instance); what each method guarantees
is in its docstring. Errors are the classes of ``syncd.errors``:

- ``TransientError``: try again later (``retry_after`` when the platform said when);
  ``outcome_unknown`` says whether the remote side may have changed.
- ``PermanentError``: this item cannot be delivered as it is; retried when its files change.
- ``FatalTargetError``: the target cannot work (credentials, a missing dataset); it pauses.

Secrets are read through ``read_secret`` and must never appear in an exception message.
Targets are used from several worker threads at once: HTTP targets keep per-thread sessions
through ``targets.http.HttpClient``.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from syncd.errors import FatalTargetError, SyncdError
from syncd.labels.support import FEATURES, unsupported_labels, unsupported_types
from syncd.timetable import Bandwidth

#: What ``api_key_env`` may be: a portable environment variable name, so also a plain file name.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TargetSettings(BaseModel):
    """Options shared by every target table ``[targets.NAME]`` in the configuration."""

    model_config = ConfigDict(extra="forbid")

    platform: str
    timeout: float = Field(30.0, gt=0, description="seconds for each HTTP request")
    workers: int = Field(4, ge=1, le=64, description="concurrent deliveries to this target")
    rate_limit: float = Field(0.0, ge=0, description="requests per second to this target (0 = unlimited)")
    bandwidth_limit: Bandwidth = Field(0.0, description="upload bytes per second to this target (0 = unlimited), "
                                                       'or rclone\'s form: "1M", "07:00,1M 23:30,off"')

    @field_validator("api_key_env", check_fields=False)
    @classmethod
    def _check_api_key_env(cls, value: str) -> str:
        # The name is also a file name under $CREDENTIALS_DIRECTORY: a path would read any file.
        if not ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name (letters, digits and _, "
                             "not starting with a digit), e.g. NUCLEUS_API_KEY")
        return value


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
    mask, if any. ``width`` and ``height`` are the image's as displayed, and labels and mask
    are in that orientation: ``orientation`` is a JPEG's EXIF orientation (1-8), which turns
    the stored pixels for display (5-8 swap width and height); the image bytes are unchanged.

    ``outcome_unknown_at_start``: what became of an earlier attempt of this item was already
    unknown when this process started (it stopped between sending and journaling the answer,
    or a previous run left a lost reply or a timeout unresolved), so a request of an earlier
    process may still be at work on the platform (a Nucleus job nobody follows). Set by the
    engine from the journal; attempts whose outcome this process lost are not flagged.
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
    orientation: int = 1
    outcome_unknown_at_start: bool = False

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


@dataclass(frozen=True)
class Submitted:
    """The platform took the item into an asynchronous job and has not written it yet: the
    delivery stays in flight (the journal records ``job_id``) until ``finish_job`` settles it."""

    job_id: str


#: One item's result of ``deliver_batch`` or ``finish_job``: written (Receipt), held by a job
#: (Submitted), or that item's own failure as an error instance (``TransientError``,
#: ``PermanentError``, ``ItemError``, ``FatalTargetError``, ``SendAlone``).
ItemResult = Union[Receipt, Submitted, SyncdError]


@dataclass(frozen=True)
class JobState:
    """One read of an asynchronous job (``Target.job_state``).

    ``status``: ``"running"`` (poll again later), ``"done"`` (it ended, successfully or not:
    ``finish_job`` reads the rest) or ``"lost"`` (the platform no longer knows it: its items
    are sent again). ``reply`` is what the platform answered, for ``finish_job``.
    """

    status: Literal["running", "done", "lost"]
    reply: dict[str, Any] = field(default_factory=dict)


def read_secret(env_name: str, *, target: str, env: Mapping[str, str] | None = None) -> str:
    """Return the secret held in environment variable ``env_name``.

    Falls back to a systemd credential file ``$CREDENTIALS_DIRECTORY/<env_name>``
    (``LoadCredential=`` in the unit). Raises FatalTargetError naming the variable, never
    the value, when neither exists, when the credential file cannot be read, or when
    ``env_name`` is not an environment variable name (it would be a path).
    """
    if not ENV_NAME.fullmatch(env_name):
        raise FatalTargetError(f"target {target!r}: api_key_env {env_name!r} is not an environment variable name")
    env = os.environ if env is None else env
    value = env.get(env_name, "").strip()
    if value:
        return value
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / env_name
        if path.is_file():
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise FatalTargetError(f"target {target!r}: the credential file {path} cannot be read ({reason}): "
                                       "fix its permissions or content") from None
            if value:
                return value
    raise FatalTargetError(
        f"target {target!r}: no API key: set the environment variable {env_name} "
        f"(or a systemd credential named {env_name})"
    )


class Target(ABC):
    """A platform adapter (see the module docstring). Subclasses set ``platform`` and
    ``Settings``, declare their capabilities and implement ``deliver``."""

    platform: ClassVar[str]
    Settings: ClassVar[type[TargetSettings]] = TargetSettings

    # -- capabilities -------------------------------------------------------------------------
    #: What the platform can represent of an item's labels: label types plus "mask" and
    #: "attributes" (``syncd.labels.support.FEATURES``). The rest is never sent: the daemon
    #: reports it per item (``syncd status``) and ``syncd check`` per target. The default,
    #: everything, fits a target that stores labels as they are (local); a platform declares
    #: its own, and its converter (``payload.py``) honours the same declaration.
    label_types: ClassVar[frozenset[str]] = frozenset(FEATURES)
    #: True when the platform keeps one classification per item: the first is sent, more
    #: are reported as "multiple classifications".
    single_classification: ClassVar[bool] = False
    #: True when a re-send could create a second remote item: after an unknown outcome the
    #: daemon calls ``lookup`` before sending again. False for upsert platforms (the remote
    #: key makes a re-send overwrite).
    create_only: ClassVar[bool] = False
    #: How many items one request may carry (``deliver_batch``); 1 means one item per request.
    max_batch: ClassVar[int] = 1
    #: True when ``deliver_batch`` may answer ``Submitted``: the platform writes items in
    #: asynchronous jobs, read with ``job_state`` and settled with ``finish_job``.
    has_jobs: ClassVar[bool] = False

    @classmethod
    def unsupported_types(cls) -> list[str]:
        """What this platform can never represent, in FEATURES order (for ``syncd check``)."""
        return unsupported_types(cls.label_types)

    @classmethod
    def unsupported_labels(cls, labels: Iterable[Mapping[str, Any]], *, has_mask: bool = False) -> list[str]:
        """What one item with ``labels`` (and a mask, with ``has_mask``) would lose on this
        platform (for ``syncd status``)."""
        return unsupported_labels(labels, label_types=cls.label_types, single_classification=cls.single_classification,
                                  has_mask=has_mask)

    @classmethod
    def representation_note(cls, labels: Iterable[Mapping[str, Any]], *, has_mask: bool = False) -> str | None:
        """The note ``syncd status`` shows for an item this platform cannot hold whole; None when it can."""
        lost = cls.unsupported_labels(labels, has_mask=has_mask)
        return f"{cls.platform} cannot represent: {', '.join(lost)}" if lost else None

    def __init__(self, name: str, settings: TargetSettings, *, env: Mapping[str, str] | None = None):
        """Build the target without any I/O: credentials are read and the platform reached
        on first use, so ``syncd check`` and the daemon can build every target up front.
        ``env`` replaces ``os.environ`` (tests, the credentials of one target)."""
        self.name = name
        self.settings = settings
        self.env = os.environ if env is None else env

    def check(self) -> list[str]:
        """Verify credentials and that the dataset exists; return warnings for the user
        (e.g. what the platform will ignore). Raises ``FatalTargetError`` when the target
        cannot work and ``TransientError`` when the platform could not be reached."""
        return []

    @abstractmethod
    def deliver(self, upload: Upload) -> Receipt:
        """Make exactly one attempt to make the remote item equal to ``upload``; return the
        ``Receipt`` of what the platform now holds.

        ``upload.previous`` is the receipt of the last acknowledged version (None for a first
        delivery): with it, the existing remote item is updated, never a second one created.
        The remote key is derived from ``upload.key`` only, so on upsert platforms sending
        the same upload twice never creates two remote items. Raises ``TransientError``,
        ``PermanentError`` or ``FatalTargetError``; a ``TransientError`` with
        ``outcome_unknown`` means the remote item may or may not have changed."""

    def deliver_batch(self, uploads: Sequence[Upload]) -> list[ItemResult]:
        """One attempt for each upload (``1 <= len(uploads) <= max_batch``, distinct keys), in as
        few requests as the platform allows; return one ``ItemResult`` per upload, in order.

        An item's own failure is returned as an error instance for that item alone (the others
        go on). Raised instead, for the request as a whole: ``TransientError`` (every item is
        retried; ``outcome_unknown`` applies to each), ``FatalTargetError`` (the target pauses,
        the items stay due), ``SendAlone`` (the platform refused the request without saying
        which item: each is sent again by itself). The default sends each upload with
        ``deliver``, one request each, and captures each item's error."""
        results: list[ItemResult] = []
        for upload in uploads:
            try:
                results.append(self.deliver(upload))
            except SyncdError as exc:
                results.append(exc)
        return results

    def job_state(self, job_id: str) -> JobState:
        """One cheap read of a job this target answered ``Submitted`` for. Raises
        ``TransientError`` when the job cannot be read now (the daemon reads it again later)
        and ``FatalTargetError`` when the target cannot work. Only for ``has_jobs`` targets."""
        raise NotImplementedError(f"{type(self).__name__} has no jobs")

    def finish_job(self, job_id: str, state: JobState, uploads: Sequence[Upload]) -> list[ItemResult]:
        """The job ended (``state.status == "done"``): read its errors, pin each on its item,
        and do any per-item follow-up (Nucleus: labels and masks). ``uploads`` are the job's
        items at the versions it carried (``image`` may be empty: the job has the bytes).
        Returns one ``Receipt``, error instance or ``SendAlone`` (an error that names no item)
        per upload, in order; ``Submitted`` is not allowed here. Raises as ``job_state``."""
        raise NotImplementedError(f"{type(self).__name__} has no jobs")

    def lookup(self, upload: Upload) -> Receipt | None:
        """After an unknown outcome (a crash, a lost reply): the receipt of the remote item
        for ``upload.key``, or None when there is none. ``extra["version"]`` is set only when
        the remote item is known to equal ``upload`` completely (the daemon then adopts it
        without sending). Create-only targets must implement it; upsert targets may return
        None (the daemon then simply sends again). Raises as ``deliver``."""
        return None

    def stored_image(self, key: str, receipt: Receipt | None) -> bytes | None:
        """The image bytes this target holds for ``key`` (``receipt``: of its last delivery), or
        None when it cannot give them back cheaply. Only for targets that read them locally:
        it is called on the coordinator, when a companion (sidecar, mask) of an item already
        delivered and deleted after upload arrives (syncd.companions puts the image back
        beside it, so the item is delivered again whole). Must return exactly the bytes
        delivered (checked against the hash it stored) or None; never raises."""
        return None

    def close(self) -> None:
        """Release sessions and other resources; the target may be used again afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
