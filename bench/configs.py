"""The syncd configurations the benchmarks run with.

Benchmarks measure what users meet, so every ``[daemon]`` table starts from the shipped
defaults (``syncd.config.DaemonSettings``), not from the test harness's (which retries after
0.2 s and re-checks a paused target every second): ``daemon_table``. On top of that only
what a benchmark is about (``settle_seconds``, a quiet log, its own state directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What tests.daemon_harness.write_config sets unless told otherwise: reset to the shipped values.
_HARNESS_KEYS = ("settle_seconds", "retry_base_seconds", "retry_max_seconds", "target_recheck_seconds",
                 "shutdown_seconds")


def daemon_table(state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A ``[daemon]`` table with syncd's shipped defaults, ``state_dir`` and ``overrides``;
    the log says warnings only (a benchmark's output is its figures)."""
    from syncd.config import DaemonSettings

    table: dict[str, Any] = {key: DaemonSettings.model_fields[key].default for key in _HARNESS_KEYS}
    table.update(state_dir=str(state_dir), log_level="WARNING")
    table.update(overrides)
    return table


def platform_table(platform: str, creds: dict[str, Any], workers: int = 4) -> dict[str, Any]:
    """A ``[targets.<platform>]`` table for the emulator whose credentials are ``creds``
    (from bench.emulator_server's ``new``)."""
    if platform == "nucleus":
        return {"platform": "nucleus", "dataset_id": creds["dataset_id"], "base_url": creds["endpoint"],
                "workers": workers}
    if platform == "edgeimpulse":
        return {"platform": "edgeimpulse", "project_id": creds["project_id"], "ingestion_url": creds["url"],
                "api_url": creds["url"] + "/v1", "category": "training", "label_source": "none", "workers": workers}
    raise ValueError(f"no benchmark configuration for platform {platform!r}")


API_KEY_ENV = {"nucleus": "NUCLEUS_API_KEY", "edgeimpulse": "EI_API_KEY"}


def write_platform_config(run_dir: Path, platform: str, creds: dict[str, Any], folder: Path, *, workers: int = 4,
                          key_prefix: str = "", daemon: dict[str, Any] | None = None) -> Path:
    """A configuration in ``run_dir``: ``folder`` (items keyed under ``key_prefix``) feeding
    one platform target; the journal in ``run_dir/state``. The API key goes in the
    environment (``API_KEY_ENV``)."""
    from tests.daemon_harness import write_config

    run_dir.mkdir(parents=True, exist_ok=True)
    folder_table: dict[str, Any] = {"path": str(folder), "targets": [platform]}
    if key_prefix:
        folder_table["key_prefix"] = key_prefix
    return write_config(run_dir, {platform: platform_table(platform, creds, workers)}, folders=[folder_table],
                        daemon=daemon_table(run_dir / "state", **(daemon or {})))


def write_local_config(workdir: Path, folder: Path, *, state_dir: Path | None = None, daemon: dict | None = None,
                       workers: int | None = None) -> Path:
    """A configuration: ``folder`` feeding one local target in ``workdir/dataset`` (with
    ``workers`` concurrent deliveries when given)."""
    from tests.daemon_harness import write_config

    workdir.mkdir(parents=True, exist_ok=True)
    table = daemon_table(state_dir or workdir / "state", rescan_seconds=300.0, **(daemon or {}))
    target: dict[str, Any] = {"platform": "local", "path": str(workdir / "dataset")}
    if workers is not None:
        target["workers"] = workers
    return write_config(workdir, {"local": target},
                        folders=[{"path": str(folder), "targets": ["local"]}], daemon=table)
