"""The local target's destination gets in the way (issue 10, items 8 and 9): names too long for
it, a read-only filesystem, a full disk. Each is one clear reason (what, where, what to do),
never "internal error (please report this)", and nothing flaps.

Real filesystems: a read-only bind mount and a small tmpfs (mounted here; the tests run as
root, as CI does, see tests/faults/test_disk.py).
"""

from __future__ import annotations

import json
import os

from tests.daemon_harness import run_cli, run_once, write_config
from tests.helpers import age_files, image_bytes, write_item


def local_config(tmp_path, **daemon):
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        daemon=daemon or None)


def deliveries(tmp_path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def put_image(path, seed: int = 0) -> None:
    """An image written directly (the helpers' temporary name would not fit beside a long one)."""
    path.write_bytes(image_bytes(seed=seed))
    age_files(path)


# -- item 8: long names --------------------------------------------------------------------------
def test_long_names_are_delivered(tmp_path):
    """Names up to what the destination holds (its record, ``<stem>.json``, is one byte longer
    than a ``.png``): the temporary names must fit too."""
    config = local_config(tmp_path)
    stems = ["x" * 236, "z" * 250, "é" * 124]  # 240, 254 and 252 bytes with ".png" (2 bytes per é)
    for seed, stem in enumerate(stems):
        put_image(tmp_path / "inbox" / f"{stem}.png", seed)
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(deliveries(tmp_path)) == sorted(stems)
    for stem in stems:
        assert json.loads((tmp_path / "synced" / f"{stem}.json").read_text())["key"] == stem
    assert not [p for p in os.listdir(tmp_path / "synced") if p.endswith(".tmp")]


def test_a_name_that_cannot_fit_at_the_destination_fails_once_and_clearly(tmp_path):
    config = local_config(tmp_path, retry_base_seconds=0.05, retry_max_seconds=0.1)
    stem = "y" * 251  # the image's name is 255 bytes, the limit; its record's would be 256
    put_image(tmp_path / "inbox" / f"{stem}.png", 2)
    write_item(tmp_path / "inbox", "short", seed=1)
    write_item(tmp_path / "inbox", "short", seed=1)
    result = run_once(config, args=("--max-wait", "5"))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "internal error" not in output and "Traceback" not in output, output
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAILED"))
    assert line.startswith(f"FAILED {stem} -> local: ") and "too long" in line and "rename" in line, line
    assert "retrying" not in output  # permanent: not retried until the file changes
    assert deliveries(tmp_path) == ["short"]
    status = run_cli("status", "--config", str(config)).stdout
    assert "1 failed" in status and "too long" in status

