"""Configuration: a TOML file plus ``SYNCD_*`` environment overrides, validated at start-up.

``load_config(path)`` returns a fully validated ``Config`` or raises ``ConfigError`` with one
line per problem, each naming the key as it is spelt in the file (``folders[0].targets``).
Environment variables override file values with ``__`` between levels, for example
``SYNCD_DAEMON__STATE_DIR=/var/lib/syncd``. Relative paths resolve against the directory of
the configuration file. A folder's ``key_prefix`` may hold ``{hostname}`` and ``{machine_id}``,
expanded once at load (``expand_key_prefix``), so one file serves a fleet, and is normalised
(``normalise_key_prefix``). Folders, destinations and key prefixes that overlap are refused
(``syncd.overlap``). Secrets are never
read from the file: targets name the environment variable that holds their key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from syncd.errors import ConfigError
from syncd.keyprefix import expand_key_prefix, normalise_key_prefix
from syncd.overlap import overlap_problems
from syncd.sizes import parse_size
from syncd.targets import target_class
from syncd.targets.base import TargetSettings
from syncd.timetable import Bandwidth, parse_bandwidth

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04, JetPack 6): the same parser, published as tomli
    import tomli as tomllib

CONFIG_ENV = "SYNCD_CONFIG"
ENV_PREFIX = "SYNCD_"


class DaemonSettings(BaseModel):
    """The ``[daemon]`` table."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path(".syncd"), description="directory of the SQLite journal and lock")
    settle_seconds: float = Field(2.0, ge=0, description="quiet time before a file counts as complete")
    max_settle_seconds: float = Field(300.0, gt=0, description="report a file still changing after this long")
    rescan_seconds: float = Field(300.0, gt=0, description="periodic full rescan (jittered ±10 %)")
    retry_base_seconds: float = Field(2.0, gt=0, description="first retry delay after a transient error")
    retry_max_seconds: float = Field(600.0, gt=0, description="longest retry delay")
    target_recheck_seconds: float = Field(60.0, gt=0, description="how often a paused target is re-checked")
    shutdown_seconds: float = Field(20.0, ge=0, description="how long SIGTERM waits for in-flight deliveries")
    ignore: list[str] = Field(default_factory=list, description="extra ignore globs for every folder")
    max_image_pixels: int = Field(200_000_000, gt=0, description="larger images are refused (decompression bombs)")
    image_check: Literal["decode", "structure"] = Field(
        "structure", description='check a JPEG\'s or PNG\'s "structure", or "decode" every image')
    bandwidth_limit: Bandwidth = Field(0.0, description="upload bytes per second over all targets (0 = unlimited), "
                                                       'or rclone\'s form: "1M", "07:00,1M 23:30,off"')
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    min_free_space: int = Field(0, ge=0, description='keep this much free on the state directory\'s filesystem, '
                                                    'e.g. "500MB" (0 = off); also what retention frees')

    @field_validator("min_free_space", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


def split_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9464"`` for IPv6) -> ``(host, port)``; ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('use "HOST:PORT", e.g. "127.0.0.1:9464"')
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): not reachable from
    other machines."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _check_listen(value: str) -> str:
    if value:
        split_listen(value)
    return value


class HttpSettings(BaseModel):
    """The ``[http]`` table: the read-only HTTP listener of ``syncd run`` (syncd.http)."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field("", description='serve /, /healthz, /status.json, /history.json, /metrics on "HOST:PORT" '
                                        '("" = off)')
    sample_seconds: float = Field(15.0, ge=1, le=300,
                                  description="one history sample (backlog, delivered, bytes) every this many seconds")

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)


class MetricsSettings(BaseModel):
    """The ``[metrics]`` table: Prometheus text format, opt-in."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field("", description="deprecated alias of [http] listen")
    textfile: Path | None = Field(None, description="write a node_exporter textfile here (None = off)")
    interval_seconds: float = Field(15.0, gt=0, description="how often the figures are refreshed")

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)


class FolderSettings(BaseModel):
    """One ``[[folders]]`` entry: a watched directory and the targets it feeds."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="directory watched recursively")
    targets: list[str] = Field(min_length=1, description="names of [targets.*] tables this folder feeds")
    include: list[str] = Field(default_factory=list, description="only file names matching one of these globs")
    exclude: list[str] = Field(default_factory=list, description="file names or relative paths to ignore")
    key_prefix: str = Field("", description="prepended to every item key of this folder; "
                                            "{hostname} and {machine_id} expand")
    after_upload: Literal["keep", "delete"] = Field("keep", description="delete local files once every target acked")
    poll: bool = Field(False, description="poll instead of inotify (network filesystems)")
    poll_seconds: float = Field(2.0, gt=0, description="polling interval when polling")
    create: bool = Field(True, description="create the folder at start-up when it is missing")
    retention: Literal["off", "acknowledged"] = Field(
        "off", description="acknowledged: below [daemon] min_free_space, remove the oldest items every target acked")

    @field_validator("key_prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        return normalise_key_prefix(value)


class Config(BaseSettings):
    """The whole configuration; build it with ``load_config``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    folders: list[FolderSettings] = Field(min_length=1)
    targets: dict[str, dict[str, Any]] = Field(min_length=1)

    # Filled by load_config: validated target settings and the file they came from.
    config_path: Path | None = None
    target_settings: dict[str, TargetSettings] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (given as init kwargs).
        return (env_settings, init_settings)

    def folder_targets(self) -> set[str]:
        return {name for folder in self.folders for name in folder.targets}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _explain(error: dict) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against config.example.toml)"
    if kind == "missing":
        return "required key is missing"
    return error.get("msg", "invalid value").removeprefix("Value error, ")


def _format_errors(prefix: str, exc: ValidationError, source: Path) -> list[str]:
    lines = []
    env = {name.upper(): name for name in os.environ} if not prefix else {}
    for error in exc.errors():
        where = _loc(error["loc"])
        key = f"{prefix}.{where}" if prefix else where
        variable = env.get(ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper())
        origin = f"environment variable {variable} ({key})" if variable else f"{source}: {key}"
        lines.append(f"{origin}: {_explain(error)}")
    return lines


def _env_json_problems(environ: Mapping[str, str]) -> list[str]:
    """One line per ``SYNCD_*`` variable for a list or a table whose value is not JSON."""
    problems = []
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        kind = _structured_kind(name[len(ENV_PREFIX):].lower().split("__"))
        if kind is None:
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            example = '["*.raw", "drafts"]' if kind == "list" else '{"key": "value"}'
            problems.append(f"environment variable {name}: not valid JSON ({getattr(exc, 'msg', exc)}): "
                            f"a {kind} is written as JSON, e.g. {name}='{example}'")
    return problems


def _structured_kind(parts: list[str]) -> str | None:
    """"list" or "table" when the configuration key at ``parts`` holds one, else None."""
    annotation: Any = Config
    for part in parts:
        origin = get_origin(annotation)
        if origin is dict:
            annotation = get_args(annotation)[1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return None
    origin = get_origin(annotation)
    if origin is list:
        return "list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "table"
    return None


def _cwd_exists() -> bool:
    try:
        os.getcwd()
        return True
    except OSError:
        return False


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def default_config_path(explicit: str | None) -> Path:
    value = explicit or os.environ.get(CONFIG_ENV)
    if not value:
        raise ConfigError(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
    return Path(value)


def load_config(path: Path) -> Config:
    """Read, validate and resolve the configuration at ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        resolved = path.resolve()
    except FileNotFoundError:
        if not os.path.isabs(path) and not _cwd_exists():
            raise ConfigError(f"{path}: the working directory was removed; give the configuration as an "
                              "absolute path") from None
        raise ConfigError(f"{path}: configuration file not found (copy config.example.toml to start)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file (e.g. {path}/config.toml)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied: make it readable by the user running syncd "
                          "(the service: chgrp syncd FILE; chmod 640 FILE)") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}): "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_format_errors("", exc, path))) from None
    except SettingsError as exc:  # a SYNCD_* variable that should hold JSON (a list, a table) does not
        raise ConfigError("\n".join(_env_json_problems(os.environ) or [f"SYNCD_* environment: {exc}"])) from None

    base = resolved.parent
    problems: list[str] = []
    config.config_path = resolved
    config.daemon.state_dir = _resolve(base, config.daemon.state_dir)
    for index, folder in enumerate(config.folders):
        folder.path = _resolve(base, folder.path)
        try:
            folder.key_prefix = FolderSettings._clean_prefix(expand_key_prefix(folder.key_prefix))
        except ValueError as exc:
            problems.append(f"{path}: folders[{index}].key_prefix: {exc}")
    if config.metrics.textfile is not None:
        config.metrics.textfile = _resolve(base, config.metrics.textfile)

    _http_listen(config, path, problems)

    for name, table in config.targets.items():
        if not isinstance(table, dict) or "platform" not in table:
            problems.append(f"{path}: targets.{name}.platform: required key is missing (e.g. platform = \"local\")")
            continue
        try:
            cls = target_class(str(table["platform"]))
        except ConfigError as exc:
            problems.append(f"{path}: targets.{name}.platform: {exc}")
            continue
        try:
            settings = cls.Settings(**table)
        except ValidationError as exc:
            problems.extend(_format_errors(f"targets.{name}", exc, path))
            continue
        for field_name, value in settings:
            if isinstance(value, Path):
                setattr(settings, field_name, _resolve(base, value))
        config.target_settings[name] = settings

    for index, folder in enumerate(config.folders):
        if folder.retention != "off" and not config.daemon.min_free_space:
            problems.append(f"{path}: folders[{index}].retention: needs [daemon] min_free_space (e.g. \"500MB\"): "
                            "retention removes delivered items only below it")
    for index, folder in enumerate(config.folders):
        for target in folder.targets:
            if target not in config.targets:
                known = ", ".join(sorted(config.targets)) or "none"
                problems.append(f"{path}: folders[{index}].targets: unknown target {target!r} (defined: {known})")
    if not problems:
        problems += overlap_problems(config, path)
    bare = [(key, value) for key, value in [("daemon.bandwidth_limit", config.daemon.bandwidth_limit)]
            + [(f"targets.{n}.bandwidth_limit", getattr(t, "bandwidth_limit", 0))
               for n, t in config.target_settings.items()]
            if isinstance(value, str) and parse_bandwidth(value).bare]
    for key, value in bare:
        config.warnings.append(f"{path}: {key}: {value!r}: a rate without a unit is bytes per second "
                               "(rclone reads it as KiB/s); write the unit, e.g. 512K or 512B")
    for name in sorted(set(config.targets) - config.folder_targets()):
        config.warnings.append(f"{path}: targets.{name}: defined but no folder uses it")
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _http_listen(config: Config, path: Path, problems: list[str]) -> None:
    """``[metrics] listen`` is the deprecated spelling of ``[http] listen`` (the one listener
    serves /metrics with the other routes); a listener other machines can reach is a warning."""
    old, new = config.metrics.listen, config.http.listen
    if old and new and old != new:
        problems.append(f"{path}: metrics.listen: {old!r} differs from http.listen {new!r}: there is one listener; "
                        "remove [metrics] listen (it is the deprecated spelling of [http] listen)")
    elif old:
        config.http.listen = old
        config.warnings.append(f"{path}: metrics.listen is deprecated: write [http] listen = {old!r} instead "
                               "(the listener now serves /, /healthz, /status.json and /metrics)")
    listen = config.http.listen
    if listen and not is_loopback(split_listen(listen)[0]):
        config.warnings.append(
            f"{path}: http.listen: {listen} can be reached from other machines, and the listener has no "
            "authentication: its page and /status.json show folder paths and failure reasons. Prefer "
            "127.0.0.1 and an SSH tunnel (docs/operations.md#the-http-listener)")
