"""Confinement at read time (issue 10, item 1): a file is read only if it is inside the watched
folder when it is opened, whatever was swapped for a symlink on its path since it was listed."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from syncd.errors import ItemError
from syncd.items import confined
from syncd.items.confined import NotRegular, OutsideFolder, read_inside
from syncd.items.content import read_item
from syncd.items.convention import IgnoreRules, walk
from tests.daemon_harness import DaemonProcess, wait_for, write_config
from tests.helpers import image_bytes, write_item

MAX = 200_000_000


def swap_for_symlink(directory: Path, target: Path) -> None:
    """The issue's `mv inbox/cam inbox/.old; ln -s /elsewhere inbox/cam`."""
    directory.rename(directory.with_name(".old"))
    directory.symlink_to(target, target_is_directory=True)


@pytest.fixture
def swapped(tmp_path):
    """An item listed in inbox/cam, whose directory is then swapped for a symlink to elsewhere/."""
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    write_item(inbox / "cam", "x", metadata={"mine": True}, seed=1)
    write_item(elsewhere, "x", metadata={"stolen": True}, seed=2)
    item = next(walk(inbox, IgnoreRules(), ""))
    swap_for_symlink(inbox / "cam", elsewhere)
    return inbox, elsewhere, item


def test_a_directory_swapped_for_a_symlink_after_listing_is_refused(swapped):
    inbox, elsewhere, item = swapped
    with pytest.raises(ItemError, match=rf"inbox/cam/x.png: leads outside the watched folder \(to {elsewhere}/x.png\)"):
        read_item(item, max_pixels=MAX)


def test_read_inside_names_where_the_file_really_is(swapped):
    inbox, elsewhere, _ = swapped
    with pytest.raises(OutsideFolder) as caught:
        read_inside(inbox / "cam" / "x.json", inbox)
    assert caught.value.real == str(elsewhere / "x.json")
    assert read_inside(inbox / ".old" / "x.json", inbox) == b'{"metadata": {"mine": true}}'


def test_symlinks_inside_the_folder_are_still_followed(tmp_path):
    write_item(tmp_path / "inbox" / "cam", "x")
    (tmp_path / "inbox" / "link.png").symlink_to("cam/x.png")
    assert read_inside(tmp_path / "inbox" / "link.png", tmp_path / "inbox") == image_bytes()


def test_a_folder_that_is_itself_a_symlink_is_its_target(tmp_path):
    write_item(tmp_path / "disk" / "inbox", "x")
    (tmp_path / "inbox").symlink_to(tmp_path / "disk" / "inbox")
    assert read_inside(tmp_path / "inbox" / "x.png", tmp_path / "inbox") == image_bytes()


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(NotRegular, read_inside,
                                                                         tmp_path / "x.png", tmp_path).value))
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and isinstance(result[0], NotRegular)


def test_without_proc_the_resolved_name_must_still_be_the_open_file(swapped, monkeypatch):
    """A bare chroot has no /proc: the fallback resolves the name and compares the inode."""
    inbox, elsewhere, item = swapped
    real_readlink = os.readlink

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(confined.os, "readlink", no_proc)
    with pytest.raises(OutsideFolder):
        read_inside(inbox / "cam" / "x.png", inbox)
    assert read_inside(inbox / ".old" / "x.png", inbox) == image_bytes(seed=1)


def delivered(tmp_path: Path) -> list[str]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []


def test_the_issue_case_while_running(tmp_path):
    """`syncd run` delivered inbox/cam/x; then `mv inbox/cam inbox/.old; ln -s elsewhere inbox/cam`
    with elsewhere/x.png and x.json present: elsewhere's files must not be delivered as cam/x."""
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                          daemon={"settle_seconds": 0.2, "rescan_seconds": 3600})
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    write_item(inbox / "cam", "x", metadata={"mine": True}, seed=1)
    write_item(elsewhere, "x", metadata={"stolen": True}, seed=2)
    write_item(elsewhere, "y", metadata={"stolen": True}, seed=3)
    with DaemonProcess(config) as daemon:
        wait_for(lambda: delivered(tmp_path) == ["cam/x"], timeout=30, message="cam/x delivered")
        swap_for_symlink(inbox / "cam", elsewhere)
        write_item(inbox, "after", seed=4, old=False)
        wait_for(lambda: "after" in delivered(tmp_path), timeout=30, message="a later item delivered")
        assert daemon.stop() == 0
    assert sorted(delivered(tmp_path)) == ["after", "cam/x"], daemon.logs()
    record = json.loads((tmp_path / "synced" / "cam" / "x.json").read_text())
    assert record["metadata"] == {"mine": True}
    assert not (tmp_path / "synced" / "cam" / "y.png").exists()
    assert "Traceback" not in daemon.logs()
