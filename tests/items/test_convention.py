"""The drop-folder convention: roles, grouping, ignore rules, keys, probing and walking."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.items.convention import IgnoreRules, probe_item, role_of, walk
from tests.helpers import image_bytes, mask_bytes, write_item


def items_of(root: Path, prefix: str = "", rules: IgnoreRules | None = None):
    return {i.key: i for i in walk(root, rules or IgnoreRules(), prefix)}


def test_roles():
    assert role_of("a.jpg") == ("a", "image")
    assert role_of("a.JPEG") == ("a", "image")
    assert role_of("a.mask.png") == ("a", "mask")
    assert role_of("a.json") == ("a", "sidecar")
    assert role_of("class_map.json") is None
    assert role_of("notes.txt") is None


def test_grouping_keys_and_companions(tmp_path):
    write_item(tmp_path / "cam1", "frame_0001", metadata={"a": 1}, mask=mask_bytes())
    write_item(tmp_path, "top")
    (tmp_path / "cam1" / "orphan.json").write_text("{}")  # a sidecar without an image is no item
    found = items_of(tmp_path)
    assert set(found) == {"cam1/frame_0001", "top"}
    item = found["cam1/frame_0001"]
    assert item.sidecar.name == "frame_0001.json" and item.mask.name == "frame_0001.mask.png"
    assert set(items_of(tmp_path, "site-a/")) == {"site-a/cam1/frame_0001", "site-a/top"}


@pytest.mark.parametrize(
    "name",
    [".hidden.jpg", "a.jpg~", ".a.jpg.swp", "a.jpg.tmp", "a.jpg.part", "a.jpg.crdownload", ".goutputstream-XYZ", "4913",
     ".a.jpg.Xy12Ab"],
)
def test_temporary_and_hidden_files_are_never_items(tmp_path, name):
    (tmp_path / name).write_bytes(image_bytes())
    assert items_of(tmp_path) == {}


def test_user_ignore_and_include_globs(tmp_path):
    write_item(tmp_path, "keep")
    write_item(tmp_path, "skip_me")
    assert set(items_of(tmp_path, rules=IgnoreRules(["skip_*"]))) == {"keep"}
    assert set(items_of(tmp_path, rules=IgnoreRules([], include=["keep*"]))) == {"keep"}


def test_probe_finds_the_item_without_listing(tmp_path):
    write_item(tmp_path / "d", "x", metadata={})
    item = probe_item(tmp_path, tmp_path / "d", "x", IgnoreRules(), "")
    assert item.key == "d/x" and item.sidecar is not None
    assert probe_item(tmp_path, tmp_path / "d", "missing", IgnoreRules(), "") is None


def test_mixed_case_image_suffix_is_found_by_probe_and_walk(tmp_path):
    (tmp_path / "photo.Png").write_bytes(image_bytes())
    (tmp_path / "photo.json").write_text('{"metadata": {}}')
    (tmp_path / "other.JSON").write_text("{}")  # companions' suffixes are exact: not a sidecar
    probed = probe_item(tmp_path, tmp_path, "photo", IgnoreRules(), "")
    assert probed is not None and probed.image.name == "photo.Png" and probed.sidecar.name == "photo.json"
    assert set(items_of(tmp_path)) == {"photo"}
    assert role_of("other.JSON") is None
