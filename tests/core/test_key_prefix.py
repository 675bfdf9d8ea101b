"""key_prefix templates: one configuration for a fleet, each device's keys apart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from syncd.config import expand_key_prefix, load_config
from syncd.errors import ConfigError
from tests.daemon_harness import run_cli

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def write(tmp_path: Path, *prefixes: str) -> Path:
    folders = "".join(f'[[folders]]\npath = "in{i}"\ntargets = ["local"]\nkey_prefix = "{p}"\n'
                      for i, p in enumerate(prefixes))
    path = tmp_path / "c.toml"
    path.write_text(folders + '[targets.local]\nplatform = "local"\npath = "out"\n')
    return path


def machine_id_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "machine-id"
    path.write_text(text)
    return path


def test_hostname_expands_when_the_configuration_is_loaded(tmp_path):
    config = load_config(write(tmp_path, "fleet/{hostname}/cam"))
    assert config.folders[0].key_prefix == f"fleet/{socket.gethostname()}/cam"


def test_machine_id_and_literal_braces(tmp_path):
    source = machine_id_file(tmp_path, MACHINE_ID + "\n")
    assert expand_key_prefix("{machine_id}/{hostname}/{{x}}", machine_id_file=source) == \
        f"{MACHINE_ID}/{socket.gethostname()}/{{x}}"
    assert expand_key_prefix("plain/", machine_id_file=tmp_path / "absent") == "plain/"  # read only when used


@pytest.mark.parametrize("text, reason", [
    ("", "is empty (an image not booted yet?)"),
    ("uninitialized\n", "is not a machine id ('uninitialized')"),
])
def test_an_unset_machine_id_is_named(tmp_path, text, reason):
    source = machine_id_file(tmp_path, text)
    with pytest.raises(ValueError) as error:
        expand_key_prefix("{machine_id}/", machine_id_file=source)
    assert f"{{machine_id}} needs {source}, which {reason}" in str(error.value)
    assert "systemd-machine-id-setup" in str(error.value)


def test_a_missing_machine_id_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"needs .*absent, which cannot be read \(No such file or directory\)"):
        expand_key_prefix("{machine_id}", machine_id_file=tmp_path / "absent")


@pytest.mark.parametrize("prefix, shown", [
    ("site/{host}/", "unknown placeholder {host}"),
    ("{hostname:>8}", "unknown placeholder {hostname:>8}"),
    ("{hostname!r}", "unknown placeholder {hostname!r}"),
    ("{}", "unknown placeholder {}"),
    ("site/{", "Single '{' encountered"),
])
def test_an_unknown_placeholder_is_a_configuration_error_naming_the_key(tmp_path, prefix, shown):
    path = write(tmp_path, prefix)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}: folders[0].key_prefix: {shown}" in str(error.value)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and shown in result.stderr and "Traceback" not in result.stderr


def test_the_collision_check_sees_the_expanded_prefix(tmp_path):
    with pytest.raises(ConfigError, match=r"folders\[0\] and folders\[1\] both feed target 'local'"):
        load_config(write(tmp_path, "{hostname}/", f"{socket.gethostname()}/"))

