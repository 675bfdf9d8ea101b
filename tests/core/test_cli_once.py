"""`syncd once` and `syncd status` as a user runs them: hundreds of items, bad input, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.daemon_harness import run_cli, run_once, write_config
from tests.helpers import age_files, image_bytes, mask_bytes, write_item


def local_config(tmp_path: Path, **daemon):
    return write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                        daemon=daemon)


def test_once_delivers_hundreds_byte_identical_and_reports_bad_input(tmp_path):
    config = local_config(tmp_path)
    inbox = tmp_path / "inbox"
    for i in range(300):
        write_item(inbox / f"cam{i % 3}", f"frame_{i:04d}", metadata={"i": i}, seed=i, fmt="JPEG" if i % 2 else "PNG")
    bad = {
        "random.jpg": os.urandom(3000),
        "truncated.png": image_bytes(64, 64)[:200],
        "zero.png": b"",
    }
    for name, data in bad.items():
        (inbox / "bad" / name).parent.mkdir(exist_ok=True)
        (inbox / "bad" / name).write_bytes(data)
    write_item(inbox / "bad", "brokenjson")
    (inbox / "bad" / "brokenjson.json").write_text('{"metadata": ')
    write_item(inbox / "bad", "wrongtype")
    (inbox / "bad" / "wrongtype.json").write_text('{"metadata": "not an object"}')
    write_item(inbox / "bad", "unreadable")
    unreadable_env = {}
    if os.geteuid() != 0:
        (inbox / "bad" / "unreadable.png").chmod(0)
    else:
        # root reads mode-000 files anyway: a sidecar that cannot be opened at all instead.
        (inbox / "bad" / "unreadable.json").symlink_to(inbox / "bad" / "does-not-exist.json")
    age_files(*[p for p in (inbox / "bad").iterdir() if p.is_file()])

    result = run_once(config, env=unreadable_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "300 delivered" in result.stdout
    for i in range(300):
        ext = "jpg" if i % 2 else "png"
        source = inbox / f"cam{i % 3}" / f"frame_{i:04d}.{ext}"
        copy = tmp_path / "synced" / f"cam{i % 3}" / f"frame_{i:04d}.{ext}"
        assert copy.read_bytes() == source.read_bytes()
        record = json.loads(copy.with_suffix(".json").read_text())
        assert record["metadata"] == {"i": i} and record["key"] == f"cam{i % 3}/frame_{i:04d}"
    assert not list((tmp_path / "synced").rglob("*.tmp"))

    status = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    target = status["folders"][0]["targets"][0]
    assert target["delivered"] == 300 and target["pending"] == 0
    reasons = {f["key"]: f["reason"] for f in target["failed_items"]}
    assert "not an image pillow can read" in reasons["bad/random"]
    assert "truncated or corrupt" in reasons["bad/truncated"]
    assert "empty (0 bytes)" in reasons["bad/zero"]
    assert "brokenjson.json: not valid JSON" in reasons["bad/brokenjson"]
    assert "wrongtype.json: metadata: Input should be a valid dictionary" in reasons["bad/wrongtype"]
    assert ("permission denied" if os.geteuid() else "broken symlink") in reasons["bad/unreadable"]
    for key in ("bad/random", "bad/truncated", "bad/zero", "bad/brokenjson", "bad/wrongtype", "bad/unreadable"):
        assert f"FAILED {key} -> local" in result.stdout

    # A second run has nothing to do and sends nothing again.
    again = run_once(config)
    assert again.returncode == 1
    log_lines = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()
    assert len(log_lines) == 300


def test_once_exit_0_when_everything_delivered_and_update_in_place(tmp_path):
    config = local_config(tmp_path)
    inbox = tmp_path / "inbox"
    (inbox / "class_map.json").write_text(json.dumps({"car": [255, 0, 0]}))
    write_item(inbox, "a", metadata={"v": 1}, mask=mask_bytes(32, 24))
    assert run_once(config).returncode == 0
    (inbox / "a.json").write_text(json.dumps({"metadata": {"v": 2}}))
    age_files(inbox / "a.json")
    result = run_once(config)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "synced" / "a.json").read_text())
    assert record["metadata"] == {"v": 2}
    assert record["mask"] == "a.mask.png" and "car" in json.dumps(record["class_map"])
    assert (tmp_path / "synced" / "a.mask.png").read_bytes() == (inbox / "a.mask.png").read_bytes()
    log_lines = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in log_lines] == ["a", "a"]  # one item, updated once


def test_status_text_and_retry(tmp_path):
    config = local_config(tmp_path)
    inbox = tmp_path / "inbox"
    (inbox / "bad.png").write_bytes(b"nope")
    age_files(inbox / "bad.png")
    assert run_once(config).returncode == 1
    text = run_cli("status", "--config", str(config)).stdout
    assert "FAILED bad: inbox/bad.png: not an image pillow can read" in text
    (inbox / "bad.png").write_bytes(image_bytes())
    age_files(inbox / "bad.png")
    assert run_cli("retry", "--failed", "--config", str(config)).returncode == 0
    assert run_once(config).returncode == 0
