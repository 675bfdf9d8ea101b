"""Sizes in the configuration (``min_free_space``): parsed, and refused with one clear line."""

from __future__ import annotations

import pytest

from syncd.sizes import format_size, parse_size
from tests.daemon_harness import run_cli, write_config


@pytest.mark.parametrize("text, expected", [
    ("500MB", 500 << 20), ("500M", 500 << 20), ("500 MiB", 500 << 20), ("1.5G", 3 << 29), ("512k", 512 << 10),
    ("10B", 10), ("2048", 2048), (2048, 2048), ("0", 0), (".5K", 512), ("1T", 1 << 40),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_a_bare_number_counts_in_the_callers_unit():
    assert parse_size("512", bare_unit=1024) == 512 << 10 and parse_size("512B", bare_unit=1024) == 512


@pytest.mark.parametrize("text", ["10x", "-1", "M", "1e3", "", "5 5M", True, -3, float("nan")])
def test_not_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format():
    assert [format_size(n) for n in (12, 1536, 500 << 20, 3 << 30)] == ["12 B", "1.5 KiB", "500.0 MiB", "3.0 GiB"]


def test_configuration_errors_name_the_key(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"min_free_space": "lots"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "daemon.min_free_space" in result.stderr and "'lots' is not a size" in result.stderr
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          folders=[{"path": "inbox", "targets": ["local"], "retention": "acknowledged"}])
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "folders[0].retention: needs [daemon] min_free_space" in result.stderr
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          folders=[{"path": "inbox", "targets": ["local"], "retention": "forever"}],
                          daemon={"min_free_space": "1G"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2 and "folders[0].retention" in result.stderr
