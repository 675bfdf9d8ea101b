"""One set of ignore rules for every path, scans and events alike (issue 10, item 2).

Name globs match every component of the path below the watched folder; path globs (with a
``/``) match from the folder's root, ``*`` within a component, ``**`` across components.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from syncd.items.convention import IgnoreRules, probe_item, walk
from tests.daemon_harness import DaemonProcess, wait_for, write_config
from tests.helpers import write_item


@pytest.mark.parametrize(
    "extra, path, ignored",
    [
        ([], "c.jpg", False),
        ([], ".Trash-1000/files/c.jpg", True),
        ([], "cam/.git/objects/c.jpg", True),
        ([], "home/.cache/thumbnails/c.jpg", True),
        ([], "cam/.c.jpg", True),
        (["drafts"], "drafts/a.jpg", True),
        (["drafts"], "cam1/drafts/deep/a.jpg", True),  # a name glob: any depth
        (["drafts/"], "cam1/drafts/a.jpg", True),  # a trailing / only says "a directory"
        (["drafts"], "drafts.jpg", False),
        (["drafts/*"], "drafts/a.jpg", True),
        (["drafts/*"], "drafts/old/a.jpg", True),  # the directory drafts/old matches
        (["drafts/*"], "cam1/drafts/a.jpg", False),  # path globs start at the folder's root
        (["/drafts/*"], "drafts/a.jpg", True),  # a leading / is optional
        (["cam*/raw"], "cam1/raw/a.jpg", True),
        (["cam*/raw"], "cam1/x/raw/a.jpg", False),  # * stays within one component
        (["**/raw"], "cam1/x/raw/a.jpg", True),
        (["**/raw"], "raw/a.jpg", True),  # ** may be no component at all
        (["cam1/**/*.jpg"], "cam1/a/b/c.jpg", True),
        (["cam1/**/*.jpg"], "cam2/a/b/c.jpg", False),
        (["*.raw.png"], "cam1/a.raw.png", True),
    ],
)
def test_rules_apply_to_every_component(extra, path, ignored):
    assert IgnoreRules(extra).ignored_path(path) is ignored


@pytest.mark.parametrize("extra, ignored_dir", [([], ".Trash-1000/files"), (["drafts"], "a/drafts"),
                                                (["drafts/*"], "drafts/old"), (["**/raw"], "cam/raw")])
def test_scans_and_probes_agree(tmp_path, extra, ignored_dir):
    rules = IgnoreRules(extra)
    write_item(tmp_path / ignored_dir, "c")
    write_item(tmp_path / "kept", "k")
    assert {item.key for item in walk(tmp_path, rules, "")} == {"kept/k"}
    # A hint for the file (what an event gives) and a scan started in the ignored directory.
    assert probe_item(tmp_path, tmp_path / ignored_dir, "c", rules, "") is None
    assert list(walk(tmp_path, rules, "", start=tmp_path / ignored_dir)) == []
    assert probe_item(tmp_path, tmp_path / "kept", "k", rules, "").key == "kept/k"


def delivered(tmp_path: Path) -> Counter:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return Counter(json.loads(line)["key"] for line in log.read_text().splitlines()) if log.exists() else Counter()


def test_files_saved_in_hidden_or_ignored_directories_while_running_are_not_delivered(tmp_path):
    """The issue's case: `syncd run` watches, an image goes to the trash (.Trash-1000/files/),
    into .git/ or .cache/, or into an excluded directory: events must not deliver it."""
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                          folders=[{"path": "inbox", "targets": ["local"], "exclude": ["drafts/*"]}],
                          daemon={"settle_seconds": 0.2, "rescan_seconds": 3600})  # only events find files
    inbox = tmp_path / "inbox"
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        for i, directory in enumerate([".Trash-1000/files", "cam/.git/objects", ".cache/thumbs", "drafts/old",
                                       "drafts"]):
            write_item(inbox / directory, f"c{i}", metadata={"i": i}, seed=i)
        write_item(inbox / "cam", "visible", seed=9)
        wait_for(lambda: delivered(tmp_path), timeout=30, message="the visible item delivered")
        # Everything was written before the visible item; give the hidden ones a further moment.
        write_item(inbox / "cam", "last", seed=10)
        wait_for(lambda: "cam/last" in delivered(tmp_path), timeout=30, message="a later item delivered")
        assert daemon.stop() == 0
    assert delivered(tmp_path) == Counter({"cam/visible": 1, "cam/last": 1})


def test_an_item_a_new_path_glob_ignores_leaves_the_folder(tmp_path):
    """Delivered drafts/a, then `exclude = ["drafts/*"]`: the next scan no longer counts it
    (it is not read again, nor deleted remotely), like an item whose directory became ignored."""
    from tests.daemon_harness import run_cli, run_once

    def config(exclude: list[str]) -> Path:
        return write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                            folders=[{"path": "inbox", "targets": ["local"], "exclude": exclude}],
                            daemon={"settle_seconds": 0})

    write_item(tmp_path / "inbox" / "drafts", "a")
    write_item(tmp_path / "inbox" / "cam", "b", seed=1)
    assert run_once(config([])).returncode == 0
    assert run_once(config(["drafts/*"])).returncode == 0
    status = json.loads(run_cli("status", "--json", "--config", str(config(["drafts/*"]))).stdout)
    assert status["folders"][0]["items"] == 1
    assert (tmp_path / "synced" / "drafts" / "a.png").exists()  # nothing is deleted remotely
