"""key_prefix templates: one configuration for a fleet, each device's keys apart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.keyprefix import expand_key_prefix
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
    with pytest.raises(ConfigError, match=r"folders\[0\] \(key_prefix .*\) and folders\[1\] .* both feed "
                                          r"target 'local' with the same key_prefix"):
        load_config(write(tmp_path, "{hostname}/", f"{socket.gethostname()}/"))



@pytest.mark.parametrize("spelt, normal", [
    ("cam/", "cam"), ("./cam", "cam"), ("cam//x/", "cam/x"), ("a/./b", "a/b"), ("a\\b", "a/b"),
    (".", ""), ("", ""), ("site-a/{hostname}/", f"site-a/{socket.gethostname()}"),
])
def test_key_prefix_is_normalised(tmp_path, spelt, normal):
    """Spellings of one prefix give one prefix, so they give the same keys (issue 10, item 6)."""
    config = load_config(write(tmp_path, spelt.replace("\\", "\\\\")))
    assert config.folders[0].key_prefix == normal


@pytest.mark.parametrize("spelt", ["/abs", "a/../b", "..", "\\\\server\\share", "a\tb"])
def test_key_prefix_outside_the_keys_is_refused(tmp_path, spelt):
    toml_value = spelt.replace("\\", "\\\\").replace("\t", "\\t")
    with pytest.raises(ConfigError, match=r"folders\[0\]\.key_prefix: key_prefix .* (relative path|control)"):
        load_config(write(tmp_path, toml_value))


@pytest.mark.parametrize("first, second, why", [
    ("cam", "cam/", "with the same key_prefix"),
    ("a/./b", "a/b", "with the same key_prefix"),
    ("a\\\\b", "a/b", "with the same key_prefix"),
    ("", "sub", r"and a subdirectory sub/ of folders\[0\] would have the keys of folders\[1\]"),
    ("site/cam", "site", r"and a subdirectory cam/ of folders\[1\] would have the keys of folders\[0\]"),
])
def test_prefixes_whose_keys_can_meet_on_one_target_are_refused(tmp_path, first, second, why):
    path = write(tmp_path, first, second)
    with pytest.raises(ConfigError, match=rf"folders\[1\]\.key_prefix: .*both feed target 'local' {why}"):
        load_config(path)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and "both feed target 'local'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("first, second", [("a", "b"), ("site/cam1", "site/cam2"), ("dev01", "dev010")])
def test_prefixes_apart_are_accepted(tmp_path, first, second):
    config = load_config(write(tmp_path, first, second))
    assert [f.key_prefix for f in config.folders] == [first, second]


def test_the_issue_case_cam_and_cam_slash_no_longer_lose_an_item(tmp_path):
    """Before: `once` reported 2 delivered and one image existed. Now the configuration is refused."""
    from tests.daemon_harness import run_once
    from tests.helpers import write_item

    path = write(tmp_path, "cam", "cam/")
    for folder in ("in0", "in1"):
        write_item(tmp_path / folder, "x", seed=len(folder))
    result = run_once(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "key_prefix 'cam'" in result.stderr and not (tmp_path / "out").exists()
