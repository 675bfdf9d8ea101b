"""Folders and destinations that overlap are refused before anything runs (issue 10, item 5):
exit 2 from `run`, `once` and `check`, one line naming both paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError
from tests.daemon_harness import run_cli, run_once, write_config
from tests.helpers import write_item


def config_with(tmp_path: Path, folders: list[dict], dest: str = "synced", **folder0) -> Path:
    folders = [{**folders[0], **folder0}, *folders[1:]]
    return write_config(tmp_path, {"local": {"platform": "local", "path": dest}}, folders=folders)


def refused(path: Path, *expected: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    for text in expected:
        assert text in message, message
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr
    return message


ONE = [{"path": "inbox", "targets": ["local"]}]


def test_destination_equal_to_the_watched_folder(tmp_path):
    path = config_with(tmp_path, ONE, dest="inbox")
    refused(path, f"targets.local.path: {tmp_path / 'inbox'} is the watched folder folders[0].path")


def test_destination_inside_the_watched_folder(tmp_path):
    path = config_with(tmp_path, ONE, dest="inbox/synced")
    refused(path, f"targets.local.path: {tmp_path / 'inbox/synced'} is inside the watched folder "
                  f"folders[0].path {tmp_path / 'inbox'}")


def test_destination_containing_the_watched_folder(tmp_path):
    path = config_with(tmp_path, [{"path": "data/inbox", "targets": ["local"]}], dest="data")
    refused(path, f"{tmp_path / 'data'} contains the watched folder folders[0].path {tmp_path / 'data/inbox'}")


def test_destination_in_an_ignored_directory_of_the_folder_is_accepted(tmp_path):
    load_config(config_with(tmp_path, ONE, dest="inbox/.synced"))  # hidden: never items
    load_config(config_with(tmp_path, ONE, dest="inbox/out", exclude=["out"]))


def test_same_folder_twice_also_through_a_symlink(tmp_path):
    two = [{"path": "inbox", "targets": ["local"]}, {"path": "inbox/", "targets": ["local"], "key_prefix": "b"}]
    refused(config_with(tmp_path, two), "folders[1].path", "is the same folder as folders[0].path")
    (tmp_path / "alias").symlink_to(tmp_path / "inbox")
    alias = [{"path": "inbox", "targets": ["local"], "key_prefix": "a"},
             {"path": str(tmp_path / "alias"), "targets": ["local"], "key_prefix": "b"}]
    refused(config_with(tmp_path, alias), f"{tmp_path / 'alias'} is the same folder as folders[0].path")


def test_nested_folders(tmp_path):
    nested = [{"path": "inbox", "targets": ["local"], "key_prefix": "a"},
              {"path": "inbox/cam1", "targets": ["local"], "key_prefix": "b"}]
    refused(config_with(tmp_path, nested),
            f"folders[1].path: {tmp_path / 'inbox/cam1'} is inside folders[0].path {tmp_path / 'inbox'}",
            'add exclude = ["cam1"] to folders[0]')
    nested[0]["exclude"] = ["cam1"]
    load_config(config_with(tmp_path, nested))  # the outer folder leaves it alone: accepted


def test_the_issue_case_a_sidecar_is_no_longer_overwritten(tmp_path):
    """Before: `once` delivered into the folder itself and overwrote the user's a.json."""
    path = config_with(tmp_path, ONE, dest="inbox")
    write_item(tmp_path / "inbox", "a", metadata={"mine": True})
    result = run_once(path)
    assert result.returncode == 2 and "is the watched folder" in result.stderr
    assert json.loads((tmp_path / "inbox" / "a.json").read_text()) == {"metadata": {"mine": True}}
